"""Bringing models in: GGUF files and Hugging Face directories become genloop model directories,
registered by name under GENLOOP_HOME/models. A failed import leaves nothing behind."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import torch
from rich import progress as rp
from rich.console import Console

from genloop.checkpoint.directory import load_generation_config, read_config, read_weights, save_state
from genloop.checkpoint.gguf_file import read_gguf
from genloop.checkpoint.hf import state_from_hf
from genloop.errors import CheckpointError, UserError
from genloop.home import models_dir
from genloop.preprocess import Tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise UserError(f"dtype '{name}' is not supported for imported weights; choose {' or '.join(DTYPES)}")
    return DTYPES[name]


def default_name(source: Path) -> str:
    """A registry name from a file or folder name: lowercase, '-' for anything unusual."""
    stem = source.name.removesuffix(".gguf")
    return re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-.") or "model"


def check_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name):
        raise UserError(f"model name '{name}' is not allowed: use letters, digits, '.', '_' and '-'")
    return name


def import_gguf(
    source: str | Path,
    out: str | Path,
    dtype: str = "float32",
    provenance: dict[str, Any] | None = None,
    progress: bool = True,
) -> Path:
    """Dequantize a GGUF file into a model directory at `out` (atomically)."""
    src = Path(source)
    torch_dtype = _dtype(dtype)
    columns = (rp.BarColumn(), rp.MofNCompleteColumn(), rp.TimeRemainingColumn())
    with rp.Progress(
        rp.TextColumn("{task.description}"),
        *columns,
        console=Console(stderr=True),
        disable=not progress,
        transient=True,
    ) as bar:
        task = bar.add_task("dequantizing", total=None)
        model = read_gguf(src, torch_dtype, on_tensor=lambda _: bar.advance(task))
    meta = {
        "source": {
            "kind": "gguf",
            "file": src.name,
            "sha256": sha256_file(src),
            "quantization": model.metadata.get("general.file_type"),
            "name": model.metadata.get("general.name"),
            "license": model.metadata.get("general.license"),
        },
        "dtype": dtype,
        "parent": None,
        **(provenance or {}),
    }
    return save_state(
        model.state,
        model.config,
        out,
        tokenizer=model.tokenizer,
        provenance=meta,
        generation=model.generation,
    )


def import_hf(
    source: str | Path, out: str | Path, dtype: str = "float32", provenance: dict[str, Any] | None = None
) -> Path:
    """A Hugging Face model directory (Llama, Mistral, Qwen2, GPT-2; single or sharded safetensors)."""
    src = Path(source)
    if not (src / "config.json").is_file():
        raise CheckpointError(
            f"{src} has no config.json: not a Hugging Face model directory "
            "(expected config.json, model.safetensors or shards, tokenizer.json)"
        )
    cfg = read_config(src)
    state = {k: v.to(_dtype(dtype)) for k, v in state_from_hf(read_weights(src), cfg).items()}
    if cfg.tie_embeddings:
        state.pop("lm_head.weight", None)
    tokenizer = Tokenizer.load(src) if (src / "tokenizer.json").is_file() else None
    meta = {
        "source": {"kind": "huggingface", "path": str(src.resolve())},
        "dtype": dtype,
        "parent": None,
        **(provenance or {}),
    }
    return save_state(
        state, cfg, out, tokenizer=tokenizer, provenance=meta, generation=load_generation_config(src)
    )


def import_model(
    source: str | Path,
    name: str | None = None,
    dtype: str = "float32",
    progress: bool = True,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Import a .gguf file or a Hugging Face directory into the registry as `name`."""
    src = Path(source).expanduser()
    if not src.exists():
        raise UserError(f"nothing to import at {src}: give a .gguf file or a Hugging Face model directory")
    target = models_dir() / check_name(name or default_name(src))
    if src.is_dir():
        return import_hf(src, target, dtype, provenance)
    return import_gguf(src, target, dtype, provenance, progress)
