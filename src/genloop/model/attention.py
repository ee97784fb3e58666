"""Attention: causal or bidirectional self-attention and cross-attention, multi-head, grouped-query
and multi-query (`n_kv_heads`), computed by `scaled_dot_product_attention`.

A KV cache is anything with `update(layer, k, v) -> (k_all, v_all)`; the generation engine brings its
own preallocated one, tests use `DynamicCache`. A cache with `attend(layer, q, k, v)` computes the
attention itself (generate/compiled.py). Masks are built once per forward by the model, here
they are only applied.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genloop.config import ModelConfig
from genloop.model.layers import apply_rotary


class KVCache(Protocol):
    """What attention needs from a cache: append this step's keys/values, get the whole history."""

    def past_length(self) -> int: ...

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]: ...

    def cross(self, layer: int) -> tuple[Tensor, Tensor] | None: ...

    def set_cross(self, layer: int, k: Tensor, v: Tensor) -> None: ...


class DynamicCache:
    """A growing cache made by concatenation: simple and exact, for tests and one-off decoding."""

    def __init__(self) -> None:
        self.keys: dict[int, Tensor] = {}
        self.values: dict[int, Tensor] = {}
        self.cross_kv: dict[int, tuple[Tensor, Tensor]] = {}

    def past_length(self) -> int:
        return next(iter(self.keys.values())).shape[2] if self.keys else 0

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if layer in self.keys:
            k = torch.cat((self.keys[layer], k), dim=2)
            v = torch.cat((self.values[layer], v), dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v

    def cross(self, layer: int) -> tuple[Tensor, Tensor] | None:
        return self.cross_kv.get(layer)

    def reorder(self, rows: Tensor) -> None:
        """Keep batch rows `rows` (with repeats) in that order: beam search follows its beams this way."""
        for layer in self.keys:
            self.keys[layer] = self.keys[layer].index_select(0, rows)
            self.values[layer] = self.values[layer].index_select(0, rows)
        for layer, (k, v) in self.cross_kv.items():
            self.cross_kv[layer] = (k.index_select(0, rows), v.index_select(0, rows))

    def set_cross(self, layer: int, k: Tensor, v: Tensor) -> None:
        self.cross_kv[layer] = (k, v)


class Attention(nn.Module):
    """Multi-head attention with `n_kv_heads` key/value heads shared by groups of query heads."""

    def __init__(self, cfg: ModelConfig, layer: int, cross: bool = False) -> None:
        super().__init__()
        self.layer, self.is_cross = layer, cross
        self.n_heads, self.n_kv, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.dim_per_head
        d = cfg.d_model
        self.q = nn.Linear(d, self.n_heads * self.head_dim, bias=cfg.qkv_bias)
        self.k = nn.Linear(d, self.n_kv * self.head_dim, bias=cfg.qkv_bias)
        self.v = nn.Linear(d, self.n_kv * self.head_dim, bias=cfg.qkv_bias)
        self.o = nn.Linear(self.n_heads * self.head_dim, d, bias=cfg.out_bias)
        self.dropout = cfg.dropout
        # q, k and v as one layer (genloop.model.fuse, quantized inference); then q/k/v are gone
        self.qkv: nn.Module | None = None
        self.qkv_sizes: list[int] = []
        self.native = False  # rotary and one-query attention through genloop's AVX2 ops (avx2.py)

    def _heads(self, x: Tensor, n: int) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, n, self.head_dim).transpose(1, 2)

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        is_causal: bool = False,
        rotary: tuple[Tensor, Tensor] | None = None,
        context: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> Tensor:
        """x [B, T, d]; mask bool [B, 1, T, S] (True = may attend); context: encoder states for cross."""
        if self.qkv is not None:
            q, k, v = self.qkv(x).split(self.qkv_sizes, dim=-1)
            q, k, v = self._heads(q, self.n_heads), self._heads(k, self.n_kv), self._heads(v, self.n_kv)
            kv = None
        else:
            q = self._heads(self.q(x), self.n_heads)
            kv = self._cross_kv(context, cache) if self.is_cross else None
        if kv is None:
            if self.qkv is None:
                k, v = self._heads(self.k(x), self.n_kv), self._heads(self.v(x), self.n_kv)
            if rotary is not None:
                q, k = apply_rotary(q, *rotary, self.native), apply_rotary(k, *rotary, self.native)
            attend = getattr(cache, "attend", None)
            if attend is not None:  # a cache that attends itself (the compiled decode step)
                return self._project(attend(self.layer, q, k, v))
            if cache is not None:
                k, v = cache.update(self.layer, k, v)
        else:
            k, v = kv  # encoder states carry no positions of the decoder: no rotation across
        t = q.shape[2]
        if (
            self.native
            and q.dtype == torch.float32
            and q.is_cpu
            and not self.training
            and (t == 1 or mask is not None)
        ):
            # every query exactly as it would be alone (see decode_attention): no padding or batch
            # changes a bit, and int8 activations downstream would turn a bit into a token
            b, s = k.shape[0], k.shape[2]
            rows = None if mask is None else mask.expand(b, 1, t, s).reshape(b, t, s)
            out = torch.ops.genloop.decode_attention(q.contiguous(), k, v, rows, self.head_dim**-0.5)
        elif q.dtype == torch.bfloat16 and q.shape[2] == 1 and not self.training:
            out = _one_query_attention(q, k, v, mask)
        else:
            k, v = k.to(q.dtype), v.to(q.dtype)  # an fp16 cache (the int4 engine's) read by PyTorch
            out = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                is_causal=is_causal and mask is None,
                dropout_p=self.dropout if self.training else 0.0,
                enable_gqa=self.n_kv != self.n_heads,
            )
        return self._project(out)

    def _project(self, out: Tensor) -> Tensor:
        """[B, H, T, d] heads -> [B, T, d_model] through the output projection."""
        b, _, t, _ = out.shape
        return self.o(out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))

    def _cross_kv(self, context: Tensor | None, cache: KVCache | None) -> tuple[Tensor, Tensor]:
        """Encoder keys/values: computed once per encoder output and kept in the cache if there is one."""
        cached = cache.cross(self.layer) if cache is not None else None
        if cached is not None:
            return cached
        if context is None:
            raise ValueError("cross-attention needs the encoder output (context)")
        k, v = self._heads(self.k(context), self.n_kv), self._heads(self.v(context), self.n_kv)
        if cache is not None:
            cache.set_cross(self.layer, k, v)
        return k, v


def _one_query_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """Decoding attention (one new query per row) in bf16, as two batched matmuls with the query
    heads grouped by their key/value head: 3x faster here than SDPA's bf16 math path, which expands
    the shared K/V heads first. Softmax runs in fp32."""
    b, h, _, d = q.shape
    n_kv = k.shape[1]
    scores = torch.matmul(q.view(b, n_kv, h // n_kv, d), k.transpose(-1, -2)).float() * d**-0.5
    if mask is not None:
        scores = scores.masked_fill(~mask.reshape(b, 1, 1, -1), float("-inf"))
    weights = scores.softmax(-1).to(v.dtype)
    return torch.matmul(weights, v).view(b, h, 1, d)
