"""GGUF model files (llama.cpp, Ollama): read any tensor type the `gguf` package can dequantize,
write f32 / f16 / q8_0 that llama.cpp and transformers' GGUF loader accept.

llama.cpp stores Llama's query/key rows interleaved for its RoPE kernel; Hugging Face (and genloop)
keep them half-split, so those two projections are permuted on the way in and out.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from torch import Tensor

from genloop.checkpoint.gguf_tokenizer import tokenizer_from_gguf, tokenizer_to_gguf
from genloop.checkpoint.hf import family, rename
from genloop.config import ModelConfig, validate
from genloop.errors import CheckpointError
from genloop.model.presets import LLAMA_STYLE
from genloop.preprocess import Tokenizer

ARCHITECTURES = ("llama", "qwen2")
FLOAT_TYPES = {Q.F32, Q.F16, Q.F64}  # the reader returns these as typed arrays; BF16 comes as raw bytes
EXPORT_TYPES = {"f32": Q.F32, "f16": Q.F16, "q8_0": Q.Q8_0}

_NAMES = [
    ("embed.tokens.weight", "token_embd.weight"),
    ("decoder.blocks.{i}.norm1.weight", "blk.{i}.attn_norm.weight"),
    ("decoder.blocks.{i}.norm2.weight", "blk.{i}.ffn_norm.weight"),
    ("decoder.blocks.{i}.attn.q.{w}", "blk.{i}.attn_q.{w}"),
    ("decoder.blocks.{i}.attn.k.{w}", "blk.{i}.attn_k.{w}"),
    ("decoder.blocks.{i}.attn.v.{w}", "blk.{i}.attn_v.{w}"),
    ("decoder.blocks.{i}.attn.o.{w}", "blk.{i}.attn_output.{w}"),
    ("decoder.blocks.{i}.mlp.{p}.{w}", "blk.{i}.ffn_{p}.{w}"),
    ("decoder.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
]


@functools.cache
def dequantizable(qtype: Q) -> bool:
    """Whether the installed `gguf` package can turn this tensor type back into floats (one block tried)."""
    if qtype in FLOAT_TYPES:
        return True
    try:
        block = np.zeros((1, gguf.GGML_QUANT_SIZES[qtype][1]), dtype=np.uint8)
        gguf.quants.dequantize(block, qtype)
    except (NotImplementedError, KeyError, ValueError, TypeError, IndexError):
        return False
    return True


def supported_types() -> list[str]:
    return sorted(q.name for q in Q if dequantizable(q))


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's interleaved RoPE rows -> half-split rows (per head: evens first, then odds)."""
    half = w.shape[0] // heads // 2
    return w.reshape(heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """Half-split rows -> llama.cpp's interleaved rows; the inverse of `_unpermute`."""
    half = w.shape[0] // heads // 2
    return w.reshape(heads, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@dataclass
class GGUFModel:
    config: ModelConfig
    state: dict[str, Tensor]
    tokenizer: Tokenizer
    generation: dict[str, Any]
    metadata: dict[str, Any]


def _open(path: Path) -> gguf.GGUFReader:
    if not path.is_file():
        raise CheckpointError(f"GGUF file not found: {path}")
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise CheckpointError(
            f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF'); "
            "give a .gguf file from llama.cpp or Ollama"
        )
    try:
        return gguf.GGUFReader(path)
    except Exception as exc:  # the reader raises assorted errors for truncated or corrupt files
        raise CheckpointError(
            f"{path} is truncated or corrupt ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:160]}); download or export it again"
        ) from None


def read_metadata(reader: gguf.GGUFReader) -> dict[str, Any]:
    """Every key/value field as plain Python values (arrays as lists)."""
    meta: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        try:
            meta[key] = field.contents()
        except Exception:  # a field the package cannot decode is not one we need
            continue
    return meta


def _f32(value: float) -> float:
    """GGUF stores floats as float32: 1e-5 comes back as 9.99999974e-06; take the shortest decimal."""
    return float(str(np.float32(value)))


def _config(meta: Mapping[str, Any], tied: bool, source: str) -> ModelConfig:
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise CheckpointError(
            f"{source}: architecture '{arch}' is not supported; supported: {', '.join(ARCHITECTURES)}"
        )

    def get(key: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{key}", default)

    scaling = get("rope.scaling.type")
    if scaling not in (None, "none"):
        raise CheckpointError(f"{source}: RoPE scaling '{scaling}' is not supported yet")
    d, heads = get("embedding_length"), get("attention.head_count")
    if d is None or heads is None or get("block_count") is None:
        raise CheckpointError(f"{source}: {arch}.embedding_length/attention.head_count/block_count missing")
    n_vocab = get("vocab_size") or len(meta.get("tokenizer.ggml.tokens") or [])
    data = {
        **LLAMA_STYLE,
        "vocab_size": n_vocab,
        "d_model": d,
        "n_layers": get("block_count"),
        "n_heads": heads,
        "n_kv_heads": get("attention.head_count_kv", heads),
        "d_ff": get("feed_forward_length"),
        "head_dim": get("attention.key_length"),
        "max_seq_len": get("context_length", 2048),
        "norm_eps": _f32(get("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": _f32(get("rope.freq_base", 10000.0)),
        "tie_embeddings": tied,
        "qkv_bias": arch == "qwen2",
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
    }
    if data["n_kv_heads"] == heads:
        data["n_kv_heads"] = None
    if data["head_dim"] == d // heads:
        data["head_dim"] = None
    return validate(ModelConfig, {k: v for k, v in data.items() if v is not None}, source)


def _dequantize(t: gguf.ReaderTensor) -> np.ndarray:
    shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists dimensions fastest-first
    if t.tensor_type in FLOAT_TYPES:
        return np.asarray(t.data, dtype=np.float32).reshape(shape)
    return gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32, copy=False)


def read_gguf(
    path: str | Path, dtype: torch.dtype = torch.float32, on_tensor: Callable[[str], None] | None = None
) -> GGUFModel:
    """Config, genloop-named weights, tokenizer and generation defaults of a GGUF file."""
    p = Path(path)
    reader = _open(p)
    meta = read_metadata(reader)
    names = {t.name for t in reader.tensors}
    cfg = _config(meta, tied="output.weight" not in names, source=str(p))
    tokenizer = tokenizer_from_gguf(meta, str(p))
    for t in reader.tensors:
        if not dequantizable(t.tensor_type):
            raise CheckpointError(
                f"{p}: tensor '{t.name}' has type {t.tensor_type.name}, which cannot be "
                f"dequantized; supported: {', '.join(supported_types())}"
            )
    state: dict[str, Tensor] = {}
    permute = meta.get("general.architecture") == "llama"
    for t in reader.tensors:
        name = rename(t.name, _NAMES, forward=False)
        if name is None:
            if t.name == "rope_freqs.weight":
                raise CheckpointError(
                    f"{p}: RoPE frequency factors (Llama 3.1-style scaling) are not supported yet"
                )
            raise CheckpointError(f"{p}: unexpected tensor '{t.name}' for architecture llama")
        w = _dequantize(t)
        if permute and ".attn.q." in name:
            w = _unpermute(w, cfg.n_heads)
        elif permute and ".attn.k." in name:
            w = _unpermute(w, cfg.kv_heads)
        state[name] = torch.from_numpy(np.array(w, dtype=np.float32, order="C")).to(dtype)
        if on_tensor is not None:
            on_tensor(t.name)
    generation = {
        k: v
        for k, v in {
            "bos_token_id": cfg.bos_token_id,
            "eos_token_id": cfg.eos_token_id,
            "pad_token_id": cfg.pad_token_id,
        }.items()
        if v is not None
    }
    for ours, key in (
        ("temperature", "temp"),
        ("top_k", "top_k"),
        ("top_p", "top_p"),
        ("min_p", "min_p"),
        ("repetition_penalty", "penalty_repeat"),
    ):
        if f"general.sampling.{key}" in meta:
            generation[ours] = meta[f"general.sampling.{key}"]
    keep = {k: v for k, v in meta.items() if not k.startswith("tokenizer.ggml.") and not isinstance(v, list)}
    return GGUFModel(cfg, state, tokenizer, generation, keep)


def _quantized(w: np.ndarray, qtype: Q) -> tuple[np.ndarray, Q]:
    """Weights as stored: matrices in the asked type, vectors (norms, biases) always f32 like llama.cpp."""
    if w.ndim == 1 or qtype == Q.F32:
        return w.astype(np.float32), Q.F32
    if qtype == Q.F16:
        return w.astype(np.float16), Q.F16
    if w.shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0]:
        return w.astype(np.float16), Q.F16  # rows not a multiple of the 32-value block
    return quantize_q8_0(w), Q.Q8_0


def quantize_q8_0(w: np.ndarray, steps: int = 35) -> np.ndarray:
    """Q8_0 blocks (an f16 scale + 32 int8) with the scale chosen per block to minimise the squared
    error, not fixed at max|x|/127. Same format, so llama.cpp reads it as usual; on weights that were
    themselves dequantized from 4-bit (SmolLM2's Q4_1) the error falls about 2.5x, which keeps the
    model's greedy choices far better than the plain max-scaled rounding."""
    x = w.reshape(-1, 32).astype(np.float32)
    amax = np.abs(x).max(axis=1, keepdims=True)
    best_d = best_q = best_err = None
    for divisor in np.linspace(127.0, 110.0, steps):
        d = (amax / divisor).astype(np.float16).astype(np.float32)
        inv = np.divide(1.0, d, out=np.zeros_like(d), where=d > 0)
        q = np.clip(np.rint(x * inv), -127, 127)
        err = np.square(q * d - x).sum(axis=1, keepdims=True)
        if best_err is None:
            best_d, best_q, best_err = d, q, err
        else:
            better = err < best_err
            best_d, best_q = np.where(better, d, best_d), np.where(better, q, best_q)
            best_err = np.minimum(err, best_err)
    assert best_d is not None and best_q is not None
    blocks = np.concatenate(
        [best_d.astype(np.float16).view(np.uint8), best_q.astype(np.int8).view(np.uint8)], axis=1
    )
    return blocks.reshape(*w.shape[:-1], w.shape[-1] // 32 * 34)


def _tensors(state: Mapping[str, Tensor], cfg: ModelConfig) -> Iterator[tuple[str, np.ndarray]]:
    for name, t in state.items():
        w = t.detach().float().cpu().numpy()
        if ".attn.q.weight" in name or ".attn.q.bias" in name:
            w = _permute(w, cfg.n_heads)
        elif ".attn.k.weight" in name or ".attn.k.bias" in name:
            w = _permute(w, cfg.kv_heads)
        new = rename(name, _NAMES, forward=True)
        if new is None:
            raise CheckpointError(f"no GGUF name for tensor '{name}'")
        yield new, w


def add_config(writer: gguf.GGUFWriter, cfg: ModelConfig, qtype: Q, name: str, arch: str = "llama") -> None:
    """The `general.*` and `{arch}.*` hyperparameter keys llama.cpp reads."""
    writer.add_name(name)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_context_length(cfg.max_seq_len)
    writer.add_embedding_length(cfg.d_model)
    writer.add_block_count(cfg.n_layers)
    writer.add_feed_forward_length(cfg.d_ff)
    writer.add_head_count(cfg.n_heads)
    writer.add_head_count_kv(cfg.kv_heads)
    writer.add_rope_dimension_count(cfg.dim_per_head)
    if cfg.dim_per_head * cfg.n_heads != cfg.d_model:
        writer.add_key_length(cfg.dim_per_head)
        writer.add_value_length(cfg.dim_per_head)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    file_types = {
        Q.F32: gguf.LlamaFileType.ALL_F32,
        Q.F16: gguf.LlamaFileType.MOSTLY_F16,
        Q.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0,
    }
    writer.add_file_type(file_types[qtype])


def add_tensors(writer: gguf.GGUFWriter, state: Mapping[str, Tensor], cfg: ModelConfig, qtype: Q) -> None:
    for tensor_name, w in _tensors(state, cfg):
        data, stored = _quantized(w, qtype)
        writer.add_tensor(tensor_name, data, raw_dtype=stored if stored == Q.Q8_0 else None)


@contextmanager
def gguf_writer(path: str | Path, arch: str = "llama") -> Iterator[gguf.GGUFWriter]:
    """A GGUFWriter whose file appears at `path` only when everything was written."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    try:
        yield writer
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise


def write_gguf(
    state: Mapping[str, Tensor],
    cfg: ModelConfig,
    tokenizer: Tokenizer,
    path: str | Path,
    dtype: str = "f16",
    name: str = "genloop model",
) -> Path:
    """Write a Llama-architecture GGUF (atomically) that llama.cpp, Ollama and transformers can load."""
    fam = family(cfg)
    if fam != "llama":
        raise CheckpointError(f"GGUF export supports Llama-layout decoders; this model has a {fam} layout")
    if dtype not in EXPORT_TYPES:
        raise CheckpointError(
            f"GGUF dtype '{dtype}' is not supported; choose one of {', '.join(EXPORT_TYPES)}"
        )
    qtype = EXPORT_TYPES[dtype]
    with gguf_writer(path) as writer:
        add_config(writer, cfg, qtype, name)
        tokenizer_to_gguf(tokenizer, writer)
        add_tensors(writer, state, cfg, qtype)
    return Path(path)
