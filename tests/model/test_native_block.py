"""The fused decode block (avx2_block.cpp): a decode step through it equals the Python block bit for
bit (logits and the slot cache), rows at different positions included, and bad input is refused."""

from __future__ import annotations

import pytest
import torch

from genloop.generate.kv_cache import SlotCache
from genloop.model import avx2, build_model, native_block, preset
from genloop.model.fuse import fuse_projections
from genloop.model.quantize import quantize_model

pytestmark = pytest.mark.skipif(avx2.ops() is None, reason="needs an x86 CPU with AVX2 and a C++ compiler")


def _native_model() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = preset("tiny", d_ff=192)  # every K a multiple of 32: all layers native
    model = quantize_model(build_model(cfg).eval(), "int4")
    fuse_projections(model)
    return model


def _steps(
    model: torch.nn.Module, dtype: torch.dtype = torch.float32
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Three rows prefilled to different lengths, then three batched steps and one single-row step."""
    cache = SlotCache(model.config, 4, 64, dtype)
    gen = torch.Generator().manual_seed(1)
    for slot, n in enumerate((3, 9, 17)):
        view = cache.view(slot, slot + 1, n)
        model(torch.randint(0, 512, (1, n), generator=gen), cache=view)
        view.commit()
    logits = []
    for rows in (3, 3, 3, 1):
        view = cache.view(0, rows, 1)
        logits.append(model(torch.randint(0, 512, (rows, 1), generator=gen), cache=view, logits_to_keep=1))
        view.commit()
    return logits, cache.k[:, :3, :, : cache.clean], cache.v[:, :3, :, : cache.clean]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_a_fused_step_is_bit_identical_to_the_python_blocks(
    monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype
) -> None:
    """With the fp32 cache and with the engine's fp16 one for such models (both round K/V to nearest
    even), logits and cache bit for bit; the fp16 cache's logits stay within rounding of fp32's."""
    model = _native_model()
    assert native_block.native_blocks(model)
    calls = []
    fused_call = native_block.decode_block
    monkeypatch.setattr(native_block, "decode_block", lambda *a: calls.append(1) or fused_call(*a))
    with torch.no_grad():
        fused = _steps(model, dtype)
        assert len(calls) == 4 * model.config.n_layers  # every decode step, every block
        monkeypatch.setattr(native_block, "usable", lambda *a: False)
        python = _steps(model, dtype)
        full = _steps(model, torch.float32)
    assert len(calls) == 4 * model.config.n_layers
    assert all(torch.equal(a, b) for a, b in zip(fused[0], python[0], strict=True))
    assert torch.equal(fused[1], python[1]) and torch.equal(fused[2], python[2])
    assert fused[1].dtype == dtype
    for a, b in zip(fused[0], full[0], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0.05 if dtype == torch.float16 else 0)


def test_blocks_that_do_not_qualify_keep_the_python_path() -> None:
    torch.manual_seed(0)
    model = quantize_model(build_model(preset("tiny")).eval(), "int4")  # d_ff 176: down is not native
    fuse_projections(model)
    assert all(native_block.block_weights(block) is None for block in model.decoder.blocks)
    assert not native_block.native_blocks(model)  # the engine keeps an fp32 cache for it
    unfused = quantize_model(build_model(preset("tiny", d_ff=192)).eval(), "int4")
    assert native_block.block_weights(unfused.decoder.blocks[0]) is None  # q/k/v not fused yet
    fuse_projections(unfused)
    assert native_block.block_weights(unfused.decoder.blocks[0]) is not None


def test_refused_input() -> None:
    model = _native_model()
    block = model.decoder.blocks[0]
    weights = native_block.block_weights(block)
    cache = SlotCache(model.config, 2, 8, torch.float32)
    x, rot = torch.zeros(1, 1, 64), (torch.ones(1, 1, 1, 16), torch.zeros(1, 1, 1, 16))
    k, v = cache.k[0], cache.v[0]
    cases = [
        ((x, weights[:3], 1e-5, 4, k, v, 0, torch.tensor([0]), *rot), "14 weight tensors"),
        ((x, weights, 1e-5, 4, k, v, 0, torch.tensor([8]), *rot), "outside the cache"),
        ((x, weights, 1e-5, 4, k, v, 2, torch.tensor([0]), *rot), "cache slots"),
        ((x.double(), weights, 1e-5, 4, k, v, 0, torch.tensor([0]), *rot), "float32"),
        ((x, weights, 1e-5, 3, k, v, 0, torch.tensor([0]), *rot), "multiple of the cache's kv heads"),
        ((x, weights, 1e-5, 4, k.bfloat16(), v.bfloat16(), 0, torch.tensor([0]), *rot), "float32 or float16"),
    ]
    for args, message in cases:
        with pytest.raises(RuntimeError, match=message):
            torch.ops.genloop.decode_block(*args)
