"""Hugging Face naming: config.json keys and tensor names for the Llama (Mistral, Qwen2) and GPT-2
families, both directions, so transformers loads what genloop writes and genloop loads what
transformers writes. Other shapes are stored with `model_type: "genloop"` and genloop's own names.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from genloop.config import ModelConfig, validate
from genloop.errors import CheckpointError
from genloop.model.presets import GPT2_STYLE, LLAMA_STYLE

LLAMA_LIKE = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
GENLOOP_ARCHS = {
    "decoder": "GenloopDecoderLM",
    "encoder-decoder": "GenloopEncoderDecoderLM",
    "encoder": "GenloopEncoderModel",
}


def family(cfg: ModelConfig) -> str:
    """Which HF family this config is exactly expressible in: llama, qwen2, gpt2, or genloop."""
    if cfg.arch != "decoder":
        return "genloop"
    if cfg.pos_emb == "rope" and cfg.norm == "rmsnorm" and cfg.mlp == "swiglu":
        if cfg.qkv_bias == cfg.out_bias:
            return "llama"
        if cfg.qkv_bias and not cfg.out_bias and not cfg.mlp_bias:
            return "qwen2"
    if (
        cfg.pos_emb == "learned"
        and cfg.norm == "layernorm"
        and cfg.mlp == "gelu_tanh"
        and cfg.qkv_bias
        and cfg.out_bias
        and cfg.mlp_bias
        and cfg.kv_heads == cfg.n_heads
        and cfg.dim_per_head * cfg.n_heads == cfg.d_model
    ):
        return "gpt2"
    return "genloop"


# ---------------------------------------------------------------- config.json


def config_to_hf(cfg: ModelConfig, dtype: torch.dtype) -> dict[str, Any]:
    """config.json contents for `cfg`, in its family's Hugging Face keys."""
    fam = family(cfg)
    ids = {
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
    }
    dtype_name = str(dtype).removeprefix("torch.")
    if fam in ("llama", "qwen2"):
        out: dict[str, Any] = {
            "architectures": [LLAMA_LIKE[fam]],
            "model_type": fam,
            "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.d_model,
            "intermediate_size": cfg.d_ff,
            "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads,
            "num_key_value_heads": cfg.kv_heads,
            "head_dim": cfg.dim_per_head,
            "max_position_embeddings": cfg.max_seq_len,
            "rms_norm_eps": cfg.norm_eps,
            "hidden_act": "silu",
            "rope_theta": cfg.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
            "tie_word_embeddings": cfg.tie_embeddings,
            "initializer_range": cfg.init_std,
            "attention_dropout": cfg.dropout,
            **ids,
        }
        if fam == "llama":
            out |= {"attention_bias": cfg.qkv_bias, "mlp_bias": cfg.mlp_bias}
        else:
            out |= {"use_sliding_window": False, "sliding_window": None}
    elif fam == "gpt2":
        out = {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": cfg.vocab_size,
            "n_embd": cfg.d_model,
            "n_layer": cfg.n_layers,
            "n_head": cfg.n_heads,
            "n_inner": cfg.d_ff,
            "n_positions": cfg.max_seq_len,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": cfg.norm_eps,
            "tie_word_embeddings": cfg.tie_embeddings,
            "initializer_range": cfg.init_std,
            "resid_pdrop": cfg.dropout,
            "embd_pdrop": cfg.dropout,
            "attn_pdrop": cfg.dropout,
            "scale_attn_weights": True,
            **ids,
        }
    else:
        out = {
            "architectures": [GENLOOP_ARCHS[cfg.arch]],
            "model_type": "genloop",
            "genloop": cfg.model_dump(mode="json"),
        }
    return out | {"dtype": dtype_name, "torch_dtype": dtype_name}


def _get(d: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    for k in keys:
        if d.get(k) is not None:
            return d[k]
    return default


def config_from_hf(raw: Mapping[str, Any], source: str = "config.json") -> ModelConfig:
    """A ModelConfig from a Hugging Face (or genloop) config.json; unsupported shapes are named."""
    mtype = raw.get("model_type")
    ids = {
        k: raw.get(k) if isinstance(raw.get(k), int) else None
        for k in ("bos_token_id", "eos_token_id", "pad_token_id")
    }
    if isinstance(raw.get("eos_token_id"), list) and raw["eos_token_id"]:
        ids["eos_token_id"] = raw["eos_token_id"][0]
    if mtype == "genloop":
        return validate(ModelConfig, raw.get("genloop") or {}, source)
    if mtype in LLAMA_LIKE:
        rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", None):
            raise CheckpointError(
                f"{source}: RoPE scaling '{rope_type}' is not supported yet; "
                "only default RoPE models can be loaded"
            )
        if raw.get("hidden_act", "silu") != "silu":
            raise CheckpointError(
                f"{source}: hidden_act '{raw['hidden_act']}' is not supported (expected silu)"
            )
        if (
            mtype == "mistral"
            and raw.get("sliding_window")
            and raw["sliding_window"] < raw.get("max_position_embeddings", 0)
        ):
            pass  # full attention equals sliding-window attention up to the window: longer contexts differ
        bias = bool(raw.get("attention_bias", False))
        data = {
            "vocab_size": raw["vocab_size"],
            "d_model": raw["hidden_size"],
            "d_ff": raw["intermediate_size"],
            "n_layers": raw["num_hidden_layers"],
            "n_heads": raw["num_attention_heads"],
            "n_kv_heads": _get(raw, "num_key_value_heads", default=raw["num_attention_heads"]),
            "head_dim": raw.get("head_dim"),
            "max_seq_len": _get(raw, "max_position_embeddings", default=2048),
            "norm_eps": _get(raw, "rms_norm_eps", default=1e-6),
            **LLAMA_STYLE,
            "rope_theta": _get(rope, "rope_theta", default=_get(raw, "rope_theta", default=1e4)),
            "qkv_bias": True if mtype == "qwen2" else bias,
            "out_bias": False if mtype == "qwen2" else bias,
            "mlp_bias": bool(raw.get("mlp_bias", False)),
            "tie_embeddings": bool(raw.get("tie_word_embeddings", mtype == "qwen2")),
            "init_std": _get(raw, "initializer_range", default=0.02),
            **ids,
        }
    elif mtype == "gpt2":
        if raw.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            raise CheckpointError(
                f"{source}: GPT-2 activation '{raw['activation_function']}' is not supported"
            )
        if (
            raw.get("scale_attn_by_inverse_layer_idx")
            or raw.get("reorder_and_upcast_attn")
            or (raw.get("scale_attn_weights") is False)
        ):
            raise CheckpointError(f"{source}: GPT-2 attention scaling variants are not supported")
        d = raw.get("n_embd", 768)
        data = {
            "vocab_size": raw.get("vocab_size", 50257),
            "d_model": d,
            "n_layers": raw.get("n_layer", 12),
            "n_heads": raw.get("n_head", 12),
            "d_ff": raw.get("n_inner") or 4 * d,
            "max_seq_len": raw.get("n_positions", 1024),
            "norm_eps": raw.get("layer_norm_epsilon", 1e-5),
            **GPT2_STYLE,
            "tie_embeddings": bool(raw.get("tie_word_embeddings", True)),
            "init_std": raw.get("initializer_range", 0.02),
            **ids,
        }
    else:
        raise CheckpointError(
            f"{source}: model_type '{mtype}' is not supported; genloop loads "
            f"{', '.join([*LLAMA_LIKE, 'gpt2', 'genloop'])}"
        )
    # spell defaults the way genloop does, so a save/load round trip gives an equal config
    if data.get("n_kv_heads") == data["n_heads"]:
        data["n_kv_heads"] = None
    if data.get("head_dim") == data["d_model"] // data["n_heads"]:
        data["head_dim"] = None
    return validate(ModelConfig, {k: v for k, v in data.items() if v is not None}, source)


# ---------------------------------------------------------------- tensor names

# Each pair is (genloop name, family name); {i} is a layer number, {p} a projection, {w} weight/bias.
_LLAMA_NAMES = [
    ("embed.tokens.weight", "model.embed_tokens.weight"),
    ("decoder.blocks.{i}.norm1.weight", "model.layers.{i}.input_layernorm.weight"),
    ("decoder.blocks.{i}.norm2.weight", "model.layers.{i}.post_attention_layernorm.weight"),
    ("decoder.blocks.{i}.attn.{p}.{w}", "model.layers.{i}.self_attn.{p}_proj.{w}"),
    ("decoder.blocks.{i}.mlp.{p}.{w}", "model.layers.{i}.mlp.{p}_proj.{w}"),
    ("decoder.norm.weight", "model.norm.weight"),
    ("lm_head.weight", "lm_head.weight"),
]
_GPT2_NAMES = [
    ("embed.tokens.weight", "transformer.wte.weight"),
    ("embed.positions.weight", "transformer.wpe.weight"),
    ("decoder.blocks.{i}.norm1.{w}", "transformer.h.{i}.ln_1.{w}"),
    ("decoder.blocks.{i}.norm2.{w}", "transformer.h.{i}.ln_2.{w}"),
    ("decoder.blocks.{i}.attn.o.{w}", "transformer.h.{i}.attn.c_proj.{w}"),
    ("decoder.blocks.{i}.mlp.up.{w}", "transformer.h.{i}.mlp.c_fc.{w}"),
    ("decoder.blocks.{i}.mlp.down.{w}", "transformer.h.{i}.mlp.c_proj.{w}"),
    ("decoder.norm.{w}", "transformer.ln_f.{w}"),
    ("lm_head.weight", "lm_head.weight"),
]
_SLOTS = {"i": r"\d+", "p": r"[a-z]+", "w": r"weight|bias"}
_GPT2_QKV = re.compile(r"decoder\.blocks\.(\d+)\.attn\.([qkv])\.(weight|bias)")
_GPT2_CATTN = re.compile(r"transformer\.h\.(\d+)\.attn\.c_attn\.(weight|bias)")
_GPT2_IGNORED = re.compile(r"transformer\.h\.\d+\.attn\.(masked_)?bias$")


@functools.cache
def _pattern(template: str) -> re.Pattern[str]:
    regex = re.escape(template)
    for slot, body in _SLOTS.items():
        regex = regex.replace(re.escape("{" + slot + "}"), f"(?P<{slot}>{body})")
    return re.compile(regex)


def rename(name: str, table: list[tuple[str, str]], forward: bool) -> str | None:
    """Map one tensor name through the table, genloop -> family when forward, else back."""
    for ours, theirs in table:
        src, dst = (ours, theirs) if forward else (theirs, ours)
        m = _pattern(src).fullmatch(name)
        if m:
            return dst.format(**m.groupdict())
    return None


def _conv1d(t: Tensor) -> Tensor:
    """GPT-2's Conv1D keeps weights as [in, out]; nn.Linear wants [out, in]."""
    return t.t().contiguous()


def hf_name(name: str, cfg: ModelConfig) -> str:
    """The name a genloop tensor has in the family's files, for messages that point into those files."""
    fam = family(cfg)
    if fam == "genloop":
        return name
    if fam == "gpt2":
        m = _GPT2_QKV.fullmatch(name)
        if m:
            return f"transformer.h.{m[1]}.attn.c_attn.{m[3]} ({m[2]} part)"
    return rename(name, _GPT2_NAMES if fam == "gpt2" else _LLAMA_NAMES, forward=True) or name


def state_to_hf(state: Mapping[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """genloop tensor names -> the family's names (tied heads already dropped by the caller)."""
    fam = family(cfg)
    if fam == "genloop":
        return dict(state)
    out: dict[str, Tensor] = {}
    if fam == "gpt2":
        qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
        for name, t in state.items():
            m = _GPT2_QKV.fullmatch(name)
            if m:
                qkv.setdefault((m[1], m[3]), {})[m[2]] = t
                continue
            new = rename(name, _GPT2_NAMES, forward=True)
            if new is None:
                raise CheckpointError(f"no GPT-2 name for tensor '{name}'")
            out[new] = _conv1d(t) if new.endswith(("c_proj.weight", "c_fc.weight")) else t
        for (layer, kind), parts in qkv.items():
            fused = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
            out[f"transformer.h.{layer}.attn.c_attn.{kind}"] = _conv1d(fused) if kind == "weight" else fused
        return out
    for name, t in state.items():
        new = rename(name, _LLAMA_NAMES, forward=True)
        if new is None:
            raise CheckpointError(f"no Llama name for tensor '{name}'")
        out[new] = t
    return out


def state_from_hf(state: Mapping[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """The family's tensor names -> genloop's; unknown names are kept as-is so the caller can name them."""
    fam = family(cfg)
    if fam == "genloop":
        return dict(state)
    out: dict[str, Tensor] = {}
    for name, t in state.items():
        if fam == "gpt2":
            if not name.startswith(("transformer.", "lm_head.")):
                name = "transformer." + name  # original OpenAI-converted checkpoints lack the prefix
            if _GPT2_IGNORED.match(name):
                continue
            m = _GPT2_CATTN.fullmatch(name)
            if m:
                fused = _conv1d(t) if m[2] == "weight" else t
                for part, chunk in zip("qkv", fused.chunk(3, dim=0), strict=True):
                    out[f"decoder.blocks.{m[1]}.attn.{part}.{m[2]}"] = chunk.contiguous()
                continue
            new = rename(name, _GPT2_NAMES, forward=False)
            if new is not None and name.endswith(("c_proj.weight", "c_fc.weight")):
                t = _conv1d(t)
        else:
            if name.endswith("rotary_emb.inv_freq"):
                continue
            new = rename(name, _LLAMA_NAMES, forward=False)
        out[new or name] = t
    return out
