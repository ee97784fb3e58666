"""Fused projections for quantized inference: q, k and v as one matmul, gate and up as one.

A decode step of a small model is mostly per-call cost: every quantized linear converts its input to
bf16 and its output back and launches its own kernel, 7 times per block. Projections that read the
same input can share all of that: 4 calls per block instead of 7. The fused layer holds the parts'
codes and scales side by side, and each output column's dot product is computed exactly as before,
so outputs are bit-identical to the separate layers (tested); only the call count changes.
"""

from __future__ import annotations

import torch
from torch import nn

from genloop.model.attention import Attention
from genloop.model.int4_packing import int4_layout
from genloop.model.layers import MLP
from genloop.model.quantize import Int4Linear, Int8Linear

Fused = nn.Linear | Int8Linear | Int4Linear


def _fusable(parts: list[nn.Module]) -> bool:
    first = parts[0]
    if not all(type(p) is type(first) and p.in_features == first.in_features for p in parts):
        return False
    if any(p.bias is not None for p in parts):
        return False
    if type(first) is nn.Linear:
        return all(p.weight.dtype == first.weight.dtype for p in parts)
    if isinstance(first, Int4Linear):
        readable = not first.use_kernel or int4_layout() is not None  # codes() must read the packing back
        return readable and all(
            p.group_size == first.group_size and (p.use_kernel, p.native) == (first.use_kernel, first.native)
            for p in parts
        )
    return isinstance(first, Int8Linear) and all(p.use_kernel == first.use_kernel for p in parts)


def fuse(parts: list[nn.Module]) -> Fused | None:
    """One quantized layer computing torch.cat([p(x) for p in parts], -1); None if they differ."""
    if not _fusable(parts):
        return None
    k, n = parts[0].in_features, sum(p.out_features for p in parts)
    if type(parts[0]) is nn.Linear:
        dense = nn.Linear(k, n, bias=False, device="meta")
        dense.weight = nn.Parameter(torch.cat([p.weight.detach() for p in parts]), requires_grad=False)
        return dense
    if isinstance(parts[0], Int8Linear):
        fused8 = Int8Linear(k, n)
        fused8.weight = torch.cat([p.weight for p in parts])
        fused8.scales = torch.cat([p.scales for p in parts])
        return fused8
    first: Int4Linear = parts[0]  # type: ignore[assignment]
    fused4 = Int4Linear(k, n, first.group_size)
    codes = torch.cat([p.codes() for p in parts])  # type: ignore[operator]
    qparams = torch.cat([p.scales_and_zeros for p in parts], dim=1)  # type: ignore[misc]
    fused4.set_codes(codes, qparams, native=first.native, kernel=first.use_kernel)
    return fused4


def fuse_projections(model: nn.Module) -> int:
    """Fuse every self-attention's q/k/v and every SwiGLU MLP's gate/up of a quantized model, in place;
    returns how many fused layers were made. Cross-attention keeps its own (k/v read other states)."""
    made = 0
    for mod in model.modules():
        if isinstance(mod, Attention) and not mod.is_cross and mod.qkv is None:
            fused = fuse([mod.q, mod.k, mod.v])
            if fused is not None:
                mod.qkv, mod.qkv_sizes = fused, [mod.q.out_features, mod.k.out_features, mod.v.out_features]
                del mod.q, mod.k, mod.v
                made += 1
        elif isinstance(mod, MLP) and mod.kind == "swiglu" and mod.gate_up is None:
            fused = fuse([mod.gate, mod.up])
            if fused is not None:
                mod.gate_up = fused
                del mod.gate, mod.up
                made += 1
    return made
