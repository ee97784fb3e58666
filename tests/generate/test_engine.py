"""The engine on tiny models: batching equals one at a time, seeds repeat, stop strings across token
boundaries, continuous batching, prefix reuse, streaming and cancellation, bad input."""

from __future__ import annotations

import asyncio
import random
import threading
from pathlib import Path

import pytest
import torch

from genloop.checkpoint import save_model
from genloop.config import TokenizerConfig
from genloop.generate import Engine, SamplingParams, greedy_decode
from genloop.model import build_model, preset
from genloop.preprocess import Tokenizer

WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "watched", "birds", "outside", "while", "it", "rained"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = random.Random(0)
    texts = [" ".join(rng.choices(WORDS, k=40)) for _ in range(400)]
    tok = Tokenizer.train(texts, TokenizerConfig(vocab_size=300), progress=False)
    torch.manual_seed(0)
    cfg = preset(
        "tiny",
        vocab_size=tok.vocab_size,
        max_seq_len=256,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    model = build_model(cfg)
    with torch.no_grad():  # sharper distributions than a fresh init, so greedy text varies by prompt
        model.embed.tokens.weight.mul_(2)
    out = tmp_path_factory.mktemp("engine") / "tiny"
    save_model(model, out, tokenizer=tok)
    return out


@pytest.fixture(scope="module")
def engine(tiny_dir: Path):
    eng = Engine(tiny_dir, max_batch=8, max_seq_len=128, prefill_chunk=16)
    yield eng
    eng.close()


PROMPTS = [
    "the cat sat",
    "a mat and the birds",
    "it rained while",
    "outside",
    "watched the cat on a mat and it",
]
GREEDY = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)


def test_greedy_equals_reference_loop(engine: Engine) -> None:
    for prompt in PROMPTS:
        ids = engine.encode_prompt(prompt)
        ref = greedy_decode(engine.model, torch.tensor([ids]), 20)[0, len(ids) :].tolist()
        assert engine.generate(prompt, GREEDY)[0].outputs[0].token_ids == ref


def test_batched_greedy_equals_one_at_a_time(engine: Engine) -> None:
    alone = [engine.generate(p, GREEDY)[0].outputs[0].token_ids for p in PROMPTS]
    together = [r.outputs[0].token_ids for r in engine.generate(PROMPTS, GREEDY)]
    assert together == alone
    assert len({tuple(t) for t in alone}) > 1  # the prompts really lead to different texts


def test_seeded_sampling_repeats_alone_or_batched(engine: Engine) -> None:
    params = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=20, seed=1234, ignore_eos=True)
    first = engine.generate("the cat sat", params)[0].outputs[0].token_ids
    again = engine.generate("the cat sat", params)[0].outputs[0].token_ids
    others = SamplingParams(temperature=0.7, max_tokens=25, seed=99, ignore_eos=True)
    reqs = [engine.submit(p, others) for p in PROMPTS[1:]]
    batched = engine.submit("the cat sat", params)
    batched.done.wait()
    for r in reqs:
        r.done.wait()
    assert first == again == batched.output().outputs[0].token_ids
    different = (
        engine.generate(
            "the cat sat", SamplingParams(temperature=1.0, max_tokens=20, seed=5, ignore_eos=True)
        )[0]
        .outputs[0]
        .token_ids
    )
    assert different != first


def test_n_completions_use_distinct_seeds(engine: Engine) -> None:
    out = engine.generate(
        "the cat", SamplingParams(temperature=1.0, n=3, seed=7, max_tokens=15, ignore_eos=True)
    )[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1


def test_stop_string_split_over_two_tokens(engine: Engine) -> None:
    full = engine.generate("the cat sat", GREEDY)[0].outputs[0]
    tok = engine.tokenizer
    pieces = [tok.decode([t]) for t in full.token_ids]
    i = next(i for i in range(2, len(pieces) - 1) if len(pieces[i]) >= 2 and len(pieces[i + 1]) >= 2)
    stop = pieces[i][-2:] + pieces[i + 1][:2]  # spans the boundary between token i and i + 1
    text = "".join(pieces)
    expected = text[: text.index(stop)]
    got = engine.generate(
        "the cat sat", SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True, stop=[stop])
    )[0].outputs[0]
    assert got.finish_reason == "stop"
    assert got.text == expected
    assert stop not in got.text


def test_max_tokens_and_finish_reason(engine: Engine) -> None:
    out = engine.generate("the cat", SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True))[
        0
    ].outputs[0]
    assert len(out.token_ids) == 5 and out.finish_reason == "length"


def test_continuous_batching_requests_join_and_leave(engine: Engine) -> None:
    """Requests arriving while others decode get the same tokens as when run alone."""
    alone = {p: engine.generate(p, GREEDY)[0].outputs[0].token_ids for p in PROMPTS}
    results: dict[str, list[int]] = {}
    seen_running: list[int] = []

    def submit_later(prompt: str, delay: float) -> None:
        threading.Event().wait(delay)
        r = engine.submit(
            prompt, SamplingParams(temperature=0.0, max_tokens=20 + len(prompt) % 7, ignore_eos=True)
        )
        seen_running.append(engine.running)
        r.done.wait()
        results[prompt] = r.output().outputs[0].token_ids

    threads = [threading.Thread(target=submit_later, args=(p, 0.01 * i)) for i, p in enumerate(PROMPTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in PROMPTS:
        n = len(results[p])
        assert results[p] == alone[p][:n] if n <= 20 else results[p][:20] == alone[p]
    assert engine.running == 0


def test_prefix_reuse_gives_the_same_text(engine: Engine) -> None:
    system = " ".join(WORDS * 4)
    before = engine.stats["prefix_hit_tokens"]
    first = engine.generate(system + " the cat", GREEDY)[0].outputs[0].token_ids
    second = engine.generate(system + " a mat", GREEDY)[0].outputs[0].token_ids
    assert engine.stats["prefix_hit_tokens"] - before >= 32
    ids = engine.encode_prompt(system + " a mat")
    assert second == greedy_decode(engine.model, torch.tensor([ids]), 20)[0, len(ids) :].tolist()
    assert first


def _count_prefill_forwards(engine: Engine) -> list[int]:
    """Rows of every multi-token forward (a prefill) the engine runs from now on."""
    rows: list[int] = []
    inner = engine.model.hidden_states

    def spy(input_ids: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        if input_ids.shape[1] > 1:
            rows.append(input_ids.shape[0])
        return inner(input_ids, *args, **kwargs)

    engine.model.hidden_states = spy  # type: ignore[method-assign]
    return rows


def _submit_at_once(engine: Engine, prompts: list[str]) -> list[list[int]]:
    """All prompts are waiting before the engine thread looks (it takes the same lock to admit)."""
    with engine._cond:
        requests = [engine.submit(p, GREEDY) for p in prompts]
    for r in requests:
        r.done.wait()
    return [r.output().outputs[0].token_ids for r in requests]


def test_a_burst_of_prompts_is_prefilled_in_one_forward(tiny_dir: Path) -> None:
    """Short prompts that arrive together share one padded prefill (one pass, not one per request);
    each still gets exactly the tokens it gets alone."""
    eng = Engine(tiny_dir, max_batch=8, max_seq_len=128, prefill_chunk=256)
    try:
        alone = [eng.generate(p, GREEDY)[0].outputs[0].token_ids for p in PROMPTS]
        rows = _count_prefill_forwards(eng)
        together = _submit_at_once(eng, PROMPTS)
        assert rows == [len(PROMPTS)]
        assert together == alone
    finally:
        eng.close()


def test_a_groups_common_beginning_is_prefilled_once(tiny_dir: Path) -> None:
    """Prompts that start alike (a system prompt) have the common part prefilled once, in one row, and
    only their differing ends in the group's forward; each text equals the reference greedy loop and
    what it is alone. Switched off, the group prefills whole prompts."""
    system = " ".join(WORDS * 2)
    prompts = [system + " " + p for p in PROMPTS]
    for share in (True, False):
        eng = Engine(
            tiny_dir,
            max_batch=8,
            max_seq_len=256,
            prefill_chunk=512,
            prefix_cache_tokens=0,
            share_prefixes=share,
        )
        try:
            alone = [eng.generate(p, GREEDY)[0].outputs[0].token_ids for p in prompts]
            rows = _count_prefill_forwards(eng)
            outs = _submit_at_once(eng, prompts)
            common = len(eng.encode_prompt(system))  # at least these tokens are shared (BOS included)
            if share:
                assert rows == [1, len(prompts)]
                assert eng.stats["shared_prefix_tokens"] >= (len(prompts) - 1) * (common - 1)
            else:
                assert rows == [len(prompts)] and eng.stats["shared_prefix_tokens"] == 0
            assert outs == alone
            for prompt, out in zip(prompts, outs, strict=True):
                ids = eng.encode_prompt(prompt)
                assert out == greedy_decode(eng.model, torch.tensor([ids]), 20)[0, len(ids) :].tolist()
        finally:
            eng.close()


def test_the_prefill_budget_counts_only_the_tokens_a_group_computes(tiny_dir: Path) -> None:
    """With a budget that holds the first prompt whole and only the others' differing ends, the whole
    burst is one group (its common beginning once, then one forward); counted whole it would not fit,
    and without sharing it is split."""
    system = " ".join(WORDS * 2)
    prompts = [system + " " + p for p in PROMPTS]
    for share in (True, False):
        eng = Engine(tiny_dir, max_batch=8, max_seq_len=256, prefix_cache_tokens=0, share_prefixes=share)
        try:
            ids = [eng.encode_prompt(p) for p in prompts]
            ends = [
                len(x) - next(i for i, (a, b) in enumerate(zip(ids[0], x, strict=False)) if a != b)
                for x in ids[1:]
            ]
            eng.prefill_chunk = len(ids[0]) + sum(ends)  # the first whole, the others' differing ends
            assert eng.prefill_chunk < sum(map(len, ids)) - len(ids[0])
            rows = _count_prefill_forwards(eng)
            outs = _submit_at_once(eng, prompts)
            assert rows == [1, len(prompts)] if share else len(rows) > 1
            assert outs == [eng.generate(p, GREEDY)[0].outputs[0].token_ids for p in prompts]
        finally:
            eng.close()


def test_a_prompt_that_is_the_others_beginning_still_runs_a_token_of_its_own(tiny_dir: Path) -> None:
    """The group's first prompt is the whole common part of the others: the shared pass stops a
    token short of it, so its row still runs one and gets its first logits."""
    system = " ".join(WORDS * 2)
    prompts = [system, system + " the cat sat", system + " a mat"]
    eng = Engine(tiny_dir, max_batch=8, max_seq_len=256, prefix_cache_tokens=0)
    try:
        alone = [eng.generate(p, GREEDY)[0].outputs[0].token_ids for p in prompts]
        rows = _count_prefill_forwards(eng)
        assert _submit_at_once(eng, prompts) == alone
        assert rows == [1, len(prompts)]
    finally:
        eng.close()


def test_long_prompts_are_chunked_alone_and_groups_mix_cached_prefixes(tiny_dir: Path) -> None:
    """A prompt over the budget is prefilled alone in chunks; prompts with a cached prefix join a group
    with different pasts per row. Every text equals the reference greedy loop."""
    eng = Engine(tiny_dir, max_batch=8, max_seq_len=256, prefill_chunk=48)
    try:
        system = " ".join(WORDS * 3)
        eng.generate(system + " the cat", GREEDY)  # caches the shared prefix
        prompts = [system + " a mat", "the cat sat", system + " " + system + " outside", "it rained"]
        rows = _count_prefill_forwards(eng)
        outs = _submit_at_once(eng, prompts)
        assert eng.stats["prefix_hit_tokens"] >= 32
        assert max(rows) > 1 and len(rows) < len(prompts) + 4  # grouped, the long one in chunks
        for prompt, out in zip(prompts, outs, strict=True):
            ids = eng.encode_prompt(prompt)
            assert out == greedy_decode(eng.model, torch.tensor([ids]), 20)[0, len(ids) :].tolist()
    finally:
        eng.close()


def test_stream_deltas_and_cancel(engine: Engine) -> None:
    async def collect() -> tuple[str, str | None]:
        text, reason = "", None
        async for delta in engine.stream("the cat sat", GREEDY):
            text += delta.text
            reason = delta.finish_reason or reason
        return text, reason

    text, reason = asyncio.run(collect())
    assert text == engine.generate("the cat sat", GREEDY)[0].text and reason == "length"

    async def leave_early() -> None:
        params = SamplingParams(temperature=0.0, max_tokens=100, ignore_eos=True)
        async for _ in engine.stream("the cat sat", params):
            break

    asyncio.run(leave_early())
    for _ in range(100):
        if engine.running == 0:
            break
        threading.Event().wait(0.01)
    assert engine.running == 0 and engine.queued == 0


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": -0.5}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"logprobs": 100000}, "logprobs"),
    ],
)
def test_bad_parameters_are_value_errors(engine: Engine, kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        engine.submit("the cat", SamplingParams(**kwargs))


def test_prompt_longer_than_context(engine: Engine) -> None:
    with pytest.raises(ValueError, match=r"the prompt has \d+ tokens but the context holds 128"):
        engine.submit(" ".join(WORDS * 30))


def test_logprobs_are_returned(engine: Engine) -> None:
    out = engine.generate(
        "the cat", SamplingParams(temperature=0.0, max_tokens=4, logprobs=3, ignore_eos=True)
    )
    c = out[0].outputs[0]
    assert c.logprobs is not None and len(c.logprobs) == 4 and all(lp <= 0 for lp in c.logprobs)
    assert c.top_logprobs is not None and all(len(t) == 3 for t in c.top_logprobs)
    assert all(t[0][0] == tok for t, tok in zip(c.top_logprobs, c.token_ids, strict=True))  # greedy = top-1


def test_garbage_in_unused_cache_memory_cannot_leak(engine: Engine) -> None:
    """Masked keys still multiply their values by 0: NaN left in never-written memory must not reach
    any output (rows of different lengths share a decode step)."""
    alone = [engine.generate(p, GREEDY)[0].outputs[0].token_ids for p in PROMPTS]
    assert engine.cache is not None
    engine.cache.k.fill_(float("nan"))
    engine.cache.v.fill_(float("nan"))
    engine.cache.clean = 0
    engine.prefix.blocks.clear()
    together = [r.outputs[0].token_ids for r in engine.generate(PROMPTS, GREEDY)]
    assert together == alone


def test_a_failing_beam_search_fails_its_request_not_the_caller(tiny_dir: Path) -> None:
    """Beam search runs outside the batch; an error there must reach its caller, not leave it waiting."""
    eng = Engine(tiny_dir, max_batch=4, max_seq_len=128)
    try:

        def broken(request: object) -> None:
            raise RuntimeError("beam search broke")

        eng._beam_search = broken  # type: ignore[method-assign]
        request = eng.submit("the cat", SamplingParams(temperature=0.0, num_beams=2, max_tokens=4))
        assert request.done.wait(timeout=30)
        assert isinstance(request.error, RuntimeError)
        assert eng.generate("the cat", GREEDY)[0].outputs[0].token_ids  # the engine goes on
    finally:
        eng.close()


def test_beam_search_through_the_engine(engine: Engine) -> None:
    from genloop.generate import beam_search

    params = SamplingParams(temperature=0.0, num_beams=3, n=2, max_tokens=10, ignore_eos=True)
    out = engine.generate("the cat sat", params)[0]
    ids = engine.encode_prompt("the cat sat")
    ref = beam_search(engine.model, ids, 3, 10, None, num_return_sequences=2)
    assert [c.token_ids for c in out.outputs] == [tokens for tokens, _ in ref]
