"""Named model shapes. `tiny*` exist for tests; the others match well-known models so that parameter
counts and FLOPs can be checked against published numbers."""

from __future__ import annotations

from typing import Any

from genloop.config import ModelConfig, validate
from genloop.errors import UserError

# The choices that make a config one family or another; shared with the Hugging Face mapping.
LLAMA_STYLE: dict[str, Any] = {"pos_emb": "rope", "norm": "rmsnorm", "mlp": "swiglu", "tie_embeddings": True}
GPT2_STYLE: dict[str, Any] = {
    "pos_emb": "learned",
    "norm": "layernorm",
    "mlp": "gelu_tanh",
    "qkv_bias": True,
    "out_bias": True,
    "mlp_bias": True,
    "tie_embeddings": True,
}
_BERT: dict[str, Any] = {
    "arch": "encoder",
    "pos_emb": "learned",
    "norm": "layernorm",
    "mlp": "gelu",
    "qkv_bias": True,
    "out_bias": True,
    "mlp_bias": True,
    "tie_embeddings": False,
}

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        **LLAMA_STYLE,
        "vocab_size": 512,
        "d_model": 64,
        "n_layers": 2,
        "n_heads": 4,
        "n_kv_heads": 2,
        "d_ff": 176,
        "max_seq_len": 256,
    },
    "tiny-gpt2": {
        **GPT2_STYLE,
        "vocab_size": 512,
        "d_model": 64,
        "n_layers": 2,
        "n_heads": 4,
        "d_ff": 256,
        "max_seq_len": 256,
    },
    "tiny-seq2seq": {
        **LLAMA_STYLE,
        "arch": "encoder-decoder",
        "vocab_size": 512,
        "d_model": 64,
        "n_layers": 2,
        "n_heads": 4,
        "d_ff": 176,
        "max_seq_len": 256,
    },
    "tiny-encoder": {
        **_BERT,
        "vocab_size": 512,
        "d_model": 64,
        "n_layers": 2,
        "n_heads": 4,
        "d_ff": 256,
        "max_seq_len": 256,
    },
    "small": {
        **LLAMA_STYLE,
        "vocab_size": 8000,
        "d_model": 320,
        "n_layers": 6,
        "n_heads": 5,
        "d_ff": 864,
        "max_seq_len": 1024,
    },
    "gpt2-124m": {
        **GPT2_STYLE,
        "vocab_size": 50257,
        "d_model": 768,
        "n_layers": 12,
        "n_heads": 12,
        "d_ff": 3072,
        "max_seq_len": 1024,
        "norm_eps": 1e-5,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
    },
    "smollm2-135m": {
        **LLAMA_STYLE,
        "vocab_size": 49152,
        "d_model": 576,
        "n_layers": 30,
        "n_heads": 9,
        "n_kv_heads": 3,
        "d_ff": 1536,
        "max_seq_len": 8192,
        "rope_theta": 100000.0,
        "norm_eps": 1e-5,
        "init_std": 0.041666666666666664,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
    },
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """The preset's ModelConfig, with field overrides; an unknown name lists the known ones."""
    if name not in PRESETS:
        raise UserError(f"unknown model preset '{name}'; known presets: {', '.join(PRESETS)}")
    return validate(ModelConfig, {**PRESETS[name], **overrides}, f"preset {name}")
