"""The compiled decode step (Engine(compile=True)) against the eager engine on a tiny model: the same
greedy tokens and log-probs, batched equal to alone, rows at different context lengths, the cache
written as the eager step writes it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genloop.generate import Engine, SamplingParams
from tests.generate.test_engine import PROMPTS, tiny_dir  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow  # each engine compiles its step: ~10-20 s here

GREEDY = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True, logprobs=2)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int4"])
def test_compiled_decode_matches_the_eager_engine(tiny_dir: Path, dtype: str) -> None:  # noqa: F811
    eager = Engine(tiny_dir, dtype=dtype, max_batch=8, max_seq_len=128)
    try:
        reference = eager.generate(PROMPTS, GREEDY)
        eager_cache = eager.cache.k[:, : len(PROMPTS), :, : eager.cache.clean].clone()
    finally:
        eager.close()
    compiled = Engine(tiny_dir, dtype=dtype, max_batch=8, max_seq_len=128, compile=True)
    try:
        batched = compiled.generate(PROMPTS, GREEDY)
        compiled_cache = compiled.cache.k[:, : len(PROMPTS), :, : compiled.cache.clean].clone()
        alone = [compiled.generate(p, GREEDY)[0] for p in PROMPTS]
    finally:
        compiled.close()
    tolerance = 0.05 if dtype == "bfloat16" else 1e-4  # inductor's loops round bf16 differently
    for ref, out, one in zip(reference, batched, alone, strict=True):
        assert out.outputs[0].token_ids == ref.outputs[0].token_ids
        assert one.outputs[0].token_ids == out.outputs[0].token_ids
        diffs = [abs(a - b) for a, b in zip(ref.outputs[0].logprobs, out.outputs[0].logprobs, strict=True)]
        assert max(diffs) < tolerance
    # the keys the steps wrote, prompt and generated positions alike, slot by slot (sorted: the two
    # engines need not free slots in the same order)
    assert compiled_cache.shape == eager_cache.shape
    ref_rows = sorted(eager_cache.transpose(0, 1).flatten(1).tolist())
    out_rows = sorted(compiled_cache.transpose(0, 1).flatten(1).tolist())
    assert torch.allclose(torch.tensor(out_rows), torch.tensor(ref_rows), atol=tolerance)
