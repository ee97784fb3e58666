"""The official `openai` client against a live `genloop serve` of SmolLM2 on 127.0.0.1."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest

from tests.serve.live import live_server

pytestmark = pytest.mark.slow
MODEL = "smollm2"
CHAT = [{"role": "user", "content": "Name three colors."}]


@pytest.fixture(scope="module")
def base(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("serve-home")
    with live_server(smollm2, home, "--name", MODEL, "--max-seq-len", "1024") as url:
        yield url


@pytest.fixture(scope="module")
def client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_chat_completion_greedy_is_reproducible_and_counts_usage(client: openai.OpenAI) -> None:
    a = client.chat.completions.create(model=MODEL, messages=CHAT, temperature=0, max_tokens=12)
    b = client.chat.completions.create(model=MODEL, messages=CHAT, temperature=0, max_tokens=12)
    assert a.object == "chat.completion" and a.choices[0].message.role == "assistant"
    assert a.choices[0].message.content and a.choices[0].message.content == b.choices[0].message.content
    assert a.choices[0].finish_reason in ("stop", "length")
    assert a.usage is not None and a.usage.completion_tokens <= 12 and a.usage.prompt_tokens > 5
    assert a.usage.total_tokens == a.usage.prompt_tokens + a.usage.completion_tokens


def test_streamed_chat_matches_the_non_streamed_answer(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model=MODEL, messages=CHAT, temperature=0, max_tokens=16)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=CHAT,
        temperature=0,
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    roles = [c.choices[0].delta.role for c in chunks if c.choices and c.choices[0].delta.role]
    assert roles == ["assistant"] and chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]


def test_seeded_sampling_repeats_and_n_gives_two_choices(client: openai.OpenAI) -> None:
    kw = {"model": MODEL, "messages": CHAT, "temperature": 1.0, "max_tokens": 10, "seed": 7, "n": 2}
    a = client.chat.completions.create(**kw)  # type: ignore[call-overload]
    b = client.chat.completions.create(**kw)  # type: ignore[call-overload]
    assert [c.index for c in a.choices] == [0, 1]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]


def test_logprobs_and_top_logprobs(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL, messages=CHAT, temperature=0, max_tokens=5, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == r.usage.completion_tokens  # type: ignore[union-attr]
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        best = entry.top_logprobs[0].logprob  # greedy picks a most likely token (ties are possible)
        assert math.isclose(best, entry.logprob, abs_tol=1e-4)
        tied = [t.token for t in entry.top_logprobs if math.isclose(t.logprob, best, abs_tol=1e-4)]
        assert entry.token in tied
    assert "".join(e.token for e in content) == r.choices[0].message.content


def test_stop_string_is_not_emitted(client: openai.OpenAI) -> None:
    free = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", temperature=0, max_tokens=12)
    text = free.choices[0].text
    assert " 6" in text, text  # the model counts on; cut it before the 6
    stopped = client.completions.create(
        model=MODEL, prompt="1, 2, 3, 4,", temperature=0, max_tokens=12, stop=[" 6"]
    )
    assert stopped.choices[0].text == text[: text.index(" 6")]
    assert stopped.choices[0].finish_reason == "stop"


def test_text_completion_streamed_and_echo(client: openai.OpenAI) -> None:
    whole = client.completions.create(model=MODEL, prompt="The sky is", temperature=0, max_tokens=8)
    parts = list(
        client.completions.create(model=MODEL, prompt="The sky is", temperature=0, max_tokens=8, stream=True)
    )
    assert "".join(p.choices[0].text for p in parts if p.choices) == whole.choices[0].text
    echoed = client.completions.create(
        model=MODEL, prompt="The sky is", temperature=0, max_tokens=8, echo=True
    )
    assert echoed.choices[0].text == "The sky is" + whole.choices[0].text


SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "colors": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 3},
    },
    "required": ["name", "age", "colors"],
    "additionalProperties": False,
}


def test_json_schema_output_parses_and_validates(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe a person as JSON."}],
        temperature=0,
        max_tokens=80,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}},
    )
    value = json.loads(r.choices[0].message.content or "")
    jsonschema.validate(value, SCHEMA)


def test_embeddings_are_normalized_and_meaningful(client: openai.OpenAI) -> None:
    out = client.embeddings.create(
        model=MODEL, input=["a cat sat on the mat", "a cat sat on a mat", "tax law"]
    )
    vecs = [d.embedding for d in out.data]
    assert [d.index for d in out.data] == [0, 1, 2] and len(vecs[0]) == 576
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-4) for v in vecs)

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cos(vecs[0], vecs[1]) > cos(vecs[0], vecs[2])
    plain = httpx.post(
        str(client.base_url) + "embeddings",
        json={"model": MODEL, "input": "a cat", "encoding_format": "float"},
    ).json()
    assert len(plain["data"][0]["embedding"]) == 576


def test_chat_is_stored_and_feedback_recorded(base: str, client: openai.OpenAI) -> None:
    raw = httpx.post(
        f"{base}/v1/chat/completions",
        json={"model": MODEL, "messages": CHAT, "temperature": 0, "max_tokens": 6},
        timeout=120,
    ).json()
    conv, message = raw["conversation_id"], raw["message_id"]
    stored = httpx.get(f"{base}/v1/conversations/{conv}").json()
    roles = [m["role"] for m in stored["messages"]]
    assert roles == ["user", "assistant"]
    answer = stored["messages"][-1]
    assert answer["id"] == message and answer["content"] == raw["choices"][0]["message"]["content"]
    assert answer["status"] == "complete" and answer["completion_tokens"] == raw["usage"]["completion_tokens"]
    fb = httpx.post(f"{base}/v1/feedback", json={"message_id": message, "rating": -1, "comment": "too short"})
    assert fb.status_code == 200 and fb.json()["object"] == "feedback"
    again = httpx.get(f"{base}/v1/conversations/{conv}").json()
    assert again["messages"][-1]["feedback"][0]["rating"] == -1
    listed = httpx.get(f"{base}/v1/conversations").json()["data"]
    assert conv in [c["id"] for c in listed]


def test_metrics_count_requests_and_tokens(base: str, client: openai.OpenAI) -> None:
    client.chat.completions.create(model=MODEL, messages=CHAT, temperature=0, max_tokens=3)
    text = httpx.get(f"{base}/metrics").text
    for name in (
        "genloop_requests_total",
        "genloop_prompt_tokens_total",
        "genloop_generation_tokens_total",
        "genloop_time_to_first_token_seconds_bucket",
        "genloop_inter_token_latency_seconds_bucket",
        "genloop_num_requests_waiting",
        "genloop_num_requests_running",
    ):
        assert name in text, name
    tokenized = httpx.post(f"{base}/tokenize", json={"prompt": "hello world"}).json()
    assert tokenized["count"] == len(tokenized["tokens"]) > 0
    back = httpx.post(f"{base}/detokenize", json={"tokens": tokenized["tokens"]}).json()
    assert back["prompt"].endswith("hello world")
