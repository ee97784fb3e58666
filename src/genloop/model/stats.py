"""Size and cost of a model from its config alone, so `genloop model info` needs no weights."""

from __future__ import annotations

from dataclasses import dataclass

from genloop.config import ModelConfig


def _linear(n_in: int, n_out: int, bias: bool) -> int:
    return n_in * n_out + (n_out if bias else 0)


def _norm(cfg: ModelConfig) -> int:
    return cfg.d_model * (2 if cfg.norm == "layernorm" else 1)


def _attention(cfg: ModelConfig) -> int:
    d, q, kv = cfg.d_model, cfg.n_heads * cfg.dim_per_head, cfg.kv_heads * cfg.dim_per_head
    return _linear(d, q, cfg.qkv_bias) + 2 * _linear(d, kv, cfg.qkv_bias) + _linear(q, d, cfg.out_bias)


def _mlp(cfg: ModelConfig) -> int:
    n = 3 if cfg.mlp == "swiglu" else 2
    return (n - 1) * _linear(cfg.d_model, cfg.d_ff, cfg.mlp_bias) + _linear(
        cfg.d_ff, cfg.d_model, cfg.mlp_bias
    )


@dataclass(frozen=True)
class ModelStats:
    params: int
    embedding_params: int
    flops_per_token: int
    train_flops_per_token: int
    context: int

    @property
    def non_embedding_params(self) -> int:
        return self.params - self.embedding_params

    def bytes_at(self, bytes_per_param: int) -> int:
        return self.params * bytes_per_param


def model_stats(cfg: ModelConfig, context: int | None = None) -> ModelStats:
    """Parameters (unique tensors, as transformers counts them) and FLOPs per token.

    Forward FLOPs per token = 2 x (weights used in matmuls, the output head included) + attention
    scores and weighted sums, 2 x 2 x layers x (context/2 on average when causal) x attention width.
    Training costs about 3 x forward (backward is twice the forward).
    """
    ctx = context or cfg.max_seq_len
    d, v = cfg.d_model, cfg.vocab_size
    tokens = v * d
    positions = cfg.max_seq_len * d if cfg.pos_emb == "learned" else 0
    block = 2 * _norm(cfg) + _attention(cfg) + _mlp(cfg)
    cross_block = block + _norm(cfg) + _attention(cfg)
    attn_width = cfg.n_heads * cfg.dim_per_head
    head = 0 if cfg.tie_embeddings else v * d
    if cfg.arch == "decoder":
        layers = cfg.n_layers * block + _norm(cfg)
        params = tokens + positions + layers + head
        matmul = layers + v * d
        attn = 2 * 2 * cfg.n_layers * (ctx // 2) * attn_width
    elif cfg.arch == "encoder-decoder":
        layers = cfg.n_layers * block + cfg.decoder_layers * cross_block + 2 * _norm(cfg)
        params = tokens + positions + layers + head
        matmul = layers + v * d
        attn = 2 * 2 * (cfg.n_layers * ctx + cfg.decoder_layers * (ctx // 2 + ctx)) * attn_width
    else:
        layers = cfg.n_layers * block + _norm(cfg)
        params = tokens + positions + layers + _linear(d, cfg.num_labels, True)
        matmul = layers
        attn = 2 * 2 * cfg.n_layers * ctx * attn_width
    flops = 2 * matmul + attn
    return ModelStats(params, tokens + positions, flops, 3 * flops, ctx)


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M' (binary units for bytes)."""
    base, names = (
        (1024.0, ["", "Ki", "Mi", "Gi", "Ti"]) if unit == "B" else (1000.0, ["", "K", "M", "G", "T"])
    )
    for name in names:
        if abs(n) < base or name == names[-1]:
            return f"{n:.3g}{name}{unit}" if name else f"{n:.0f}{unit}"
        n /= base
    return f"{n}{unit}"  # pragma: no cover
