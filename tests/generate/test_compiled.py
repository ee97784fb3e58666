"""The compiled decode step (Engine(compile=True)) against the eager engine on a tiny model: the same
greedy tokens and log-probs, batched equal to alone; one step over rows at different context lengths
writes the cache as the eager step does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genloop.generate import Engine, SamplingParams
from genloop.generate.compiled import CompiledDecode
from genloop.generate.kv_cache import SlotCache
from genloop.generate.loading import load_for_inference
from tests.generate.test_engine import PROMPTS, tiny_dir  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow  # each engine compiles its step: ~10-20 s here

GREEDY = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True, logprobs=2)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int4"])
def test_compiled_decode_matches_the_eager_engine(tiny_dir: Path, dtype: str) -> None:  # noqa: F811
    eager = Engine(tiny_dir, dtype=dtype, max_batch=8, max_seq_len=128)
    try:
        reference = eager.generate(PROMPTS, GREEDY)
    finally:
        eager.close()
    compiled = Engine(tiny_dir, dtype=dtype, max_batch=8, max_seq_len=128, compile=True)
    try:
        batched = compiled.generate(PROMPTS, GREEDY)
        alone = [compiled.generate(p, GREEDY)[0] for p in PROMPTS]
    finally:
        compiled.close()
    tolerance = 0.05 if dtype == "bfloat16" else 1e-4  # inductor's loops round bf16 differently
    for ref, out, one in zip(reference, batched, alone, strict=True):
        assert out.outputs[0].token_ids == ref.outputs[0].token_ids
        assert one.outputs[0].token_ids == out.outputs[0].token_ids
        diffs = [abs(a - b) for a, b in zip(ref.outputs[0].logprobs, out.outputs[0].logprobs, strict=True)]
        assert max(diffs) < tolerance


def test_one_compiled_step_writes_the_cache_as_the_eager_step(tiny_dir: Path) -> None:  # noqa: F811
    model = load_for_inference(tiny_dir, "float32")
    eager, compiled = (SlotCache(model.config, 4, 64, torch.float32) for _ in range(2))
    torch.manual_seed(0)
    eager.k[:, :, :, :20].normal_()
    eager.v[:, :, :, :20].normal_()
    compiled.k.copy_(eager.k)
    compiled.v.copy_(eager.v)
    for cache in (eager, compiled):
        cache.clean = 20  # the random history counts as written
        cache.lengths[:3] = [5, 9, 12]
    before = compiled.k.clone()
    ids = torch.tensor([[3], [7], [11]])
    with torch.inference_mode():
        view = eager.view(0, 3, 1)
        reference = model(ids, cache=view, logits_to_keep=1)[:, -1]
        view.commit()
        view = compiled.view(0, 3, 1)
        logits = CompiledDecode(model, compiled)(ids, view)
        view.commit()
    assert torch.allclose(logits, reference, atol=1e-5)
    assert compiled.lengths == eager.lengths == [6, 10, 13, 0]
    assert torch.allclose(compiled.k[:, :, :, :20], eager.k[:, :, :, :20], atol=1e-5)
    assert torch.allclose(compiled.v[:, :, :, :20], eager.v[:, :, :, :20], atol=1e-5)
    for row, position in enumerate([5, 9, 12]):  # each row's new key went to its own position
        assert not torch.equal(compiled.k[:, row, :, position], before[:, row, :, position])


def test_warm_up_compiles_every_graph_a_full_batch_needs(tiny_dir: Path) -> None:  # noqa: F811
    """Without native bf16, int8 layers take a dense path from DENSE_ROWS_INT8 rows, and a compiled
    step recompiled there: the first full batch waited on inductor. Warm-up now builds that graph."""
    from torch._dynamo.utils import counters

    from genloop.model.quantize import DENSE_ROWS_INT8

    rows = DENSE_ROWS_INT8
    engine = Engine(tiny_dir, dtype="int8", max_batch=rows, max_seq_len=64, compile=True)
    try:
        engine.generate(PROMPTS[0], SamplingParams(temperature=0.0, max_tokens=2))  # started and warm
        graphs = counters["stats"]["unique_graphs"]
        assert graphs >= 2  # the counter is live (a renamed one would read 0 before and after)
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(rows)]
        outs = engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True))
    finally:
        engine.close()
    assert all(len(o.outputs[0].token_ids) == 4 for o in outs)
    assert counters["stats"]["unique_graphs"] == graphs  # no graph was compiled for the full batch
