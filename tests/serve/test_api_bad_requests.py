"""Malformed and hostile requests get the right 4xx with OpenAI's error body, and the server goes on."""
# ruff: noqa: E501 (the table of cases reads best one case per line)

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serve.live import live_server

pytestmark = pytest.mark.slow
MODEL = "smollm2"
KEY = "sk-test-123"
OK_CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
OK_TEXT = {"model": MODEL, "prompt": "hi", "max_tokens": 2}


def chat(**changes: Any) -> dict[str, Any]:
    body = {**OK_CHAT, **changes}
    return {k: v for k, v in body.items() if v is not DROP}


DROP = object()
CHAT_URL, TEXT_URL = "/v1/chat/completions", "/v1/completions"
AUTH = {"Authorization": f"Bearer {KEY}"}

# (name, method, path, json body or raw bytes, headers, expected status, expected param or None)
CASES: list[tuple[str, str, str, Any, dict[str, str] | None, int, str | None]] = [
    ("truncated json", "POST", CHAT_URL, b'{"model": "smollm2", "messages": [', None, 400, None),
    ("not json", "POST", CHAT_URL, b"hello there", None, 400, None),
    ("empty body", "POST", CHAT_URL, b"", None, 400, None),
    ("json array body", "POST", CHAT_URL, b"[1, 2]", None, 400, None),
    ("invalid utf-8", "POST", CHAT_URL, b'{"model": "smollm2", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
     None, 400, None),
    ("missing model", "POST", CHAT_URL, chat(model=DROP), None, 400, "model"),
    ("missing messages", "POST", CHAT_URL, chat(messages=DROP), None, 400, "messages"),
    ("empty messages", "POST", CHAT_URL, chat(messages=[]), None, 400, "messages"),
    ("messages not a list", "POST", CHAT_URL, chat(messages="hi"), None, 400, "messages"),
    ("message without content", "POST", CHAT_URL, chat(messages=[{"role": "user"}]), None, 400, "messages.0"),
    ("message content null", "POST", CHAT_URL, chat(messages=[{"role": "user", "content": None}]), None, 400,
     "messages.0"),
    ("unknown role", "POST", CHAT_URL, chat(messages=[{"role": "wizard", "content": "x"}]), None, 400,
     "messages.0.role"),
    ("content wrong type", "POST", CHAT_URL, chat(messages=[{"role": "user", "content": 5}]), None, 400,
     "messages.0.content"),
    ("temperature string", "POST", CHAT_URL, chat(temperature="hot"), None, 400, "temperature"),
    ("temperature negative", "POST", CHAT_URL, chat(temperature=-0.5), None, 400, "temperature"),
    ("temperature above 2", "POST", CHAT_URL, chat(temperature=2.5), None, 400, "temperature"),
    ("top_p zero", "POST", CHAT_URL, chat(top_p=0), None, 400, "top_p"),
    ("top_p above 1", "POST", CHAT_URL, chat(top_p=1.5), None, 400, "top_p"),
    ("top_k below -1", "POST", CHAT_URL, chat(top_k=-5), None, 400, "top_k"),
    ("min_p above 1", "POST", CHAT_URL, chat(min_p=3), None, 400, "min_p"),
    ("max_tokens negative", "POST", CHAT_URL, chat(max_tokens=-1), None, 400, "max_tokens"),
    ("max_tokens zero", "POST", CHAT_URL, chat(max_tokens=0), None, 400, "max_tokens"),
    ("max_tokens huge", "POST", CHAT_URL, chat(max_tokens=10**30), None, 400, "max_tokens"),
    ("max_tokens float", "POST", CHAT_URL, chat(max_tokens=1.5), None, 400, "max_tokens"),
    ("max_completion_tokens zero", "POST", CHAT_URL, chat(max_completion_tokens=0), None, 400,
     "max_completion_tokens"),
    ("n zero", "POST", CHAT_URL, chat(n=0), None, 400, "n"),
    ("n too large", "POST", CHAT_URL, chat(n=1000), None, 400, "n"),
    ("five stop strings", "POST", CHAT_URL, chat(stop=["a", "b", "c", "d", "e"]), None, 400, "stop"),
    ("stop wrong type", "POST", CHAT_URL, chat(stop=5), None, 400, "stop"),
    ("presence penalty out of range", "POST", CHAT_URL, chat(presence_penalty=3), None, 400, "presence_penalty"),
    ("frequency penalty string", "POST", CHAT_URL, chat(frequency_penalty="x"), None, 400, "frequency_penalty"),
    ("logit_bias bad key", "POST", CHAT_URL, chat(logit_bias={"abc": 1}), None, 400, "logit_bias"),
    ("logit_bias out of range", "POST", CHAT_URL, chat(logit_bias={"5": 500}), None, 400, "logit_bias.5"),
    ("logit_bias token outside vocab", "POST", CHAT_URL, chat(logit_bias={"99999999": 1}), None, 400, None),
    ("top_logprobs without logprobs", "POST", CHAT_URL, chat(top_logprobs=3), None, 400, None),
    ("top_logprobs too many", "POST", CHAT_URL, chat(logprobs=True, top_logprobs=50), None, 400, "top_logprobs"),
    ("seed string", "POST", CHAT_URL, chat(seed="abc"), None, 400, "seed"),
    ("stream not bool", "POST", CHAT_URL, chat(stream="yes"), None, 400, "stream"),
    ("bad response_format type", "POST", CHAT_URL, chat(response_format={"type": "xml"}), None, 400,
     "response_format.type"),
    ("json_schema without schema", "POST", CHAT_URL, chat(response_format={"type": "json_schema"}), None, 400,
     "response_format"),
    ("invalid json schema", "POST", CHAT_URL,
     chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "wat"}}}),
     None, 400, None),
    ("unknown model", "POST", CHAT_URL, chat(model="gpt-9"), None, 404, "model"),
    ("context overflow", "POST", CHAT_URL, chat(messages=[{"role": "user", "content": "word " * 1500}]), None, 400,
     "messages"),
    ("completion prompt empty", "POST", TEXT_URL, {**OK_TEXT, "prompt": ""}, None, 400, "prompt"),
    ("completion prompt wrong type", "POST", TEXT_URL, {**OK_TEXT, "prompt": {"a": 1}}, None, 400, "prompt"),
    ("completion token ids out of vocab", "POST", TEXT_URL, {**OK_TEXT, "prompt": [1, 2, 99999999]}, None, 400,
     "prompt"),
    ("completion logprobs too many", "POST", TEXT_URL, {**OK_TEXT, "logprobs": 50}, None, 400, "logprobs"),
    ("embeddings missing input", "POST", "/v1/embeddings", {"model": MODEL}, None, 400, "input"),
    ("embeddings too many dimensions", "POST", "/v1/embeddings", {"model": MODEL, "input": "x", "dimensions": 99999},
     None, 400, "dimensions"),
    ("detokenize bad id", "POST", "/detokenize", {"tokens": [99999999]}, None, 400, "tokens"),
    ("tokenize both", "POST", "/tokenize", {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, None,
     400, None),
    ("feedback unknown message", "POST", "/v1/feedback", {"message_id": "nope", "rating": 1}, None, 404, None),
    ("feedback bad rating", "POST", "/v1/feedback", {"message_id": "nope", "rating": 5}, None, 400, "rating"),
    ("feedback empty", "POST", "/v1/feedback", {"message_id": "nope"}, None, 400, None),
    ("unknown conversation", "GET", "/v1/conversations/nope", None, None, 404, None),
    ("continue unknown conversation", "POST", CHAT_URL, chat(conversation_id="nope"), None, 404, None),
    ("unknown route", "GET", "/v1/nothing", None, None, 404, None),
    ("wrong method", "GET", CHAT_URL, None, None, 405, None),
    ("ten megabyte body", "POST", CHAT_URL, b'{"model": "smollm2", "x": "' + b"a" * (10 * 1024 * 1024) + b'"}',
     None, 413, None),
    ("missing key", "POST", CHAT_URL, OK_CHAT, {"Authorization": ""}, 401, None),
    ("wrong key", "POST", CHAT_URL, OK_CHAT, {"Authorization": "Bearer sk-wrong"}, 401, None),
    ("wrong x-api-key", "POST", CHAT_URL, OK_CHAT, {"Authorization": "", "X-Api-Key": "nope"}, 401, None),
]  # fmt: skip


@pytest.fixture(scope="module")
def http(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    home = tmp_path_factory.mktemp("serve-bad")
    with (
        live_server(smollm2, home, "--name", MODEL, "--max-seq-len", "1024", "--api-key", KEY) as url,
        httpx.Client(base_url=url, headers=AUTH, timeout=120) as client,
    ):
        yield client


def test_there_are_at_least_40_cases() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize(("name", "method", "path", "body", "headers", "status", "param"), CASES,
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_bad_request(
    http: httpx.Client, name: str, method: str, path: str, body: Any, headers: Any, status: int, param: Any
) -> None:
    kwargs: dict[str, Any] = {"headers": headers} if headers else {}
    if isinstance(body, bytes):
        kwargs["content"] = body
        kwargs["headers"] = {**kwargs.get("headers", {}), "Content-Type": "application/json"}
    elif body is not None:
        kwargs["json"] = body
    r = http.request(method, path, **kwargs)
    assert r.status_code == status, (name, r.status_code, r.text[:300])
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and len(error["message"]) > 10
    if param is not None:
        assert error["param"] == param, (name, error)
    if name == "context overflow":
        assert error["code"] == "context_length_exceeded"
        assert "1024" in error["message"] and any(ch.isdigit() for ch in error["message"].split("1024")[1])


def test_server_still_serves_after_the_bad_requests(http: httpx.Client) -> None:
    for _, method, path, body, headers, _, _ in CASES[:10]:
        kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
        http.request(method, path, headers=headers or AUTH, **kwargs)  # type: ignore[arg-type]
    assert http.get("/health").status_code == 200
    ok = http.post(CHAT_URL, json=OK_CHAT)
    assert ok.status_code == 200, ok.text
    assert ok.json()["choices"][0]["message"]["role"] == "assistant"
    streamed = http.post(CHAT_URL, json={**OK_CHAT, "stream": True})
    assert streamed.text.rstrip().endswith("data: [DONE]")
    assert (
        json.loads(streamed.text.split("\n\n")[0].removeprefix("data: "))["object"] == "chat.completion.chunk"
    )


def test_health_stays_open_without_a_key(http: httpx.Client) -> None:
    base = str(http.base_url).rstrip("/")
    assert httpx.get(f"{base}/health").status_code == 200
    assert httpx.get(f"{base}/v1/models").status_code == 401
    assert http.get("/v1/models", headers={"X-Api-Key": KEY, "Authorization": ""}).status_code == 200
