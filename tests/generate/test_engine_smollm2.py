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
