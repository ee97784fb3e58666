"""The small parts every transformer block is built from: norms, rotary positions, MLPs, embeddings.

Written in plain PyTorch so the arithmetic is ours to read and to match against transformers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genloop.config import ModelConfig


class RMSNorm(nn.Module):
    """Root-mean-square norm (Llama): statistics in float32 so bf16 weights do not lose the scale."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.native = False  # one call to genloop's AVX2 op (quantized inference; see avx2.py)

    def forward(self, x: Tensor) -> Tensor:
        if self.native and x.dtype == self.weight.dtype == torch.float32 and x.is_cpu:
            return torch.ops.genloop.rms_norm(x.contiguous(), self.weight, self.eps)
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.d_model, cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)


class Rotary(nn.Module):
    """Rotary position embedding (RoPE) in the half-split layout that Llama checkpoints use.

    cos/sin are computed from explicit positions on every call: cheap next to attention, and it lets
    each sequence of a batch (and each cached decode step) sit at its own offset.
    """

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        self.register_buffer("inv_freq", self._inv_freq(), persistent=False)

    def _inv_freq(self, device: torch.device | None = None) -> Tensor:
        exponents = (
            torch.arange(0, self.head_dim, 2, dtype=torch.int64, device=device).float() / self.head_dim
        )
        return 1.0 / (self.theta**exponents)

    def reset_buffers(self, device: torch.device) -> None:
        """Recompute inv_freq on `device` (it is not saved, so a model built on 'meta' needs this)."""
        self.inv_freq = self._inv_freq(device)

    def forward(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """positions [B, T] -> (cos, sin) each [B, 1, T, head_dim], broadcast over heads."""
        freqs = positions.float()[..., None] * self.inv_freq
        angles = torch.cat((freqs, freqs), dim=-1)[:, None]
        return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor, native: bool = False) -> Tensor:
    """Rotate pairs (i, i + d/2) of x [B, H, T, d] by the position angles; `native`: in one call to
    genloop's AVX2 op, which rounds as this expression does."""
    if native and x.dtype == cos.dtype == torch.float32 and x.is_cpu:
        b, _, t, d = x.shape
        return torch.ops.genloop.rotary(x, cos.expand(b, 1, t, d), sin.expand(b, 1, t, d))
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class MLP(nn.Module):
    """Position-wise feed-forward: SwiGLU (gate * up, Llama) or a GELU MLP (GPT-2, BERT)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, f, bias = cfg.d_model, cfg.d_ff, cfg.mlp_bias
        self.kind = cfg.mlp
        if cfg.mlp == "swiglu":
            self.gate = nn.Linear(d, f, bias=bias)
            self.up = nn.Linear(d, f, bias=bias)
            self.down = nn.Linear(f, d, bias=bias)
        else:
            self.up = nn.Linear(d, f, bias=bias)
            self.down = nn.Linear(f, d, bias=bias)
        self.approximate = "tanh" if cfg.mlp == "gelu_tanh" else "none"
        self.gate_up: nn.Module | None = None  # gate and up as one layer (genloop.model.fuse)
        self.native = False  # the gate through genloop's AVX2 op (quantized inference; see avx2.py)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind != "swiglu":
            return self.down(F.gelu(self.up(x), approximate=self.approximate))
        h = self.gate_up(x) if self.gate_up is not None else None
        if self.native and x.dtype == torch.float32 and x.is_cpu:  # the same op fused or not
            h = torch.cat((self.gate(x), self.up(x)), -1) if h is None else h.contiguous()
            return self.down(torch.ops.genloop.silu_mul(h))
        gate, up = h.chunk(2, dim=-1) if h is not None else (self.gate(x), self.up(x))
        return self.down(F.silu(gate) * up)


class Embeddings(nn.Module):
    """Token embeddings plus, when configured, learned absolute positions (GPT-2, BERT)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.positions = nn.Embedding(cfg.max_seq_len, cfg.d_model) if cfg.pos_emb == "learned" else None
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, input_ids: Tensor, positions: Tensor) -> Tensor:
        h = self.tokens(input_ids)
        if self.positions is not None:
            h = h + self.positions(positions)
        return self.dropout(h)
