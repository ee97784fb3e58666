"""Fused q/k/v and gate/up projections of quantized models: the same numbers as the separate layers,
bit for bit, in fewer calls."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from genloop.model import build_model, preset
from genloop.model.fuse import fuse, fuse_projections
from genloop.model.quantize import Int4Linear, Int8Linear, quantize_model
from tests.model.test_quantize import cached_steps


def _parts(mode: str, widths: tuple[int, ...], k: int = 576) -> list[nn.Module]:
    torch.manual_seed(0)
    linears = [nn.Linear(k, n, bias=False) for n in widths]
    if mode == "int8":
        return [Int8Linear.from_linear(lin) for lin in linears]
    return [Int4Linear.from_linear(lin, 64) for lin in linears]


@pytest.mark.parametrize("mode", ["int8", "int4"])
@pytest.mark.parametrize("tokens", [1, 7, 300])  # the kernel (decode, short prompts), the dense copy
@pytest.mark.parametrize("widths", [(576, 192, 192), (1536, 1536), (176, 176)])
def test_a_fused_layer_equals_its_parts_bit_for_bit(mode: str, tokens: int, widths: tuple[int, ...]) -> None:
    parts = _parts(mode, widths)
    fused = fuse(parts)
    assert fused is not None and fused.out_features == sum(widths)
    x = torch.randn(3, tokens, 576)
    with torch.no_grad():
        assert torch.equal(fused(x), torch.cat([p(x) for p in parts], dim=-1))


def test_parts_that_differ_are_left_alone() -> None:
    int8, int4 = _parts("int8", (64,)), _parts("int4", (64,))
    assert fuse(int8 + int4) is None
    assert fuse(_parts("int8", (64,)) + _parts("int8", (64,), k=128)) is None


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_a_fused_model_computes_exactly_what_it_did(mode: str) -> None:
    torch.manual_seed(0)
    model = quantize_model(build_model(preset("tiny")).eval(), mode)
    ids = torch.randint(0, 512, (3, 16))
    with torch.no_grad():
        before, steps_before = model(ids), cached_steps(model, ids)
        assert fuse_projections(model) == 2 * model.config.n_layers
        after, steps_after = model(ids), cached_steps(model, ids)
    block = model.decoder.blocks[0]
    assert block.attn.qkv is not None and block.mlp.gate_up is not None
    assert not hasattr(block.attn, "q") and not hasattr(block.mlp, "gate")
    assert torch.equal(before, after)
    assert all(torch.equal(a, b) for a, b in zip(steps_before, steps_after, strict=True))
    assert fuse_projections(model) == 0  # already fused


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens", [1, 32, 300])
def test_float_layers_fuse_bit_for_bit_too(dtype: torch.dtype, tokens: int) -> None:
    torch.manual_seed(0)
    parts = [nn.Linear(576, n, bias=False).to(dtype) for n in (576, 192, 192)]
    fused = fuse(parts)
    assert isinstance(fused, nn.Linear) and fused.weight.shape == (960, 576)
    x = torch.randn(32, tokens, 576, dtype=dtype)
    with torch.no_grad():
        assert torch.equal(fused(x), torch.cat([p(x) for p in parts], dim=-1))
