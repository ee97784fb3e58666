"""The engine on the real SmolLM2: batched greedy output equals transformers' greedy `generate`."""

from __future__ import annotations

import pytest

from genloop.generate import Engine, SamplingParams

pytestmark = pytest.mark.slow


def test_engine_greedy_equals_transformers_batched_and_alone(smollm2, smollm2_greedy_reference) -> None:
    engine = Engine(smollm2, dtype="float32", max_batch=16, max_seq_len=512)
    params = SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True)
    try:
        together = engine.generate([prompt for prompt, _ in smollm2_greedy_reference], params)
        for out, (_, ref) in zip(together, smollm2_greedy_reference, strict=True):
            assert out.outputs[0].token_ids == ref
        prompt, ref = smollm2_greedy_reference[0]
        assert engine.generate(prompt, params)[0].outputs[0].token_ids == ref
    finally:
        engine.close()


def test_int4_chat_burst_shares_the_system_prompt_and_matches_alone(
    smollm2, smollm2_greedy_reference
) -> None:
    """The CPU default dtype, chat prompts arriving together: their common beginning (the template's
    system prompt) is prefilled once, and each answer is token for token what it is alone."""
    engine = Engine(smollm2, dtype="int4", max_batch=16, max_seq_len=512, prefix_cache_tokens=0)
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    prompts = [prompt for prompt, _ in smollm2_greedy_reference]
    try:
        alone = [engine.generate(p, params)[0].outputs[0].token_ids for p in prompts]
        with engine._cond:  # all waiting before the engine thread admits any
            requests = [engine.submit(p, params) for p in prompts]
        together = [r.output().outputs[0].token_ids for r in requests if r.done.wait() or True]
        assert engine.stats["shared_prefix_tokens"] >= (len(prompts) - 1) * 20
        assert together == alone
    finally:
        engine.close()
