"""Sending models out: a GGUF file for llama.cpp / Ollama, or a plain model directory copy."""

from __future__ import annotations

import shutil
from pathlib import Path

from genloop.atomic import atomic_dir
from genloop.checkpoint.directory import read_config, read_weights
from genloop.checkpoint.gguf_file import EXPORT_TYPES, write_gguf
from genloop.checkpoint.hf import state_from_hf
from genloop.checkpoint.registry import metadata
from genloop.errors import CheckpointError, UserError
from genloop.preprocess import Tokenizer

FORMATS = ("gguf", "hf")


def export_model(model_dir: Path, fmt: str, out: str | Path, dtype: str = "f16") -> Path:
    """Write the model at `model_dir` as `fmt` to `out` (a .gguf file, or a directory for hf)."""
    if fmt not in FORMATS:
        raise UserError(f"export format '{fmt}' is not supported; choose one of {', '.join(FORMATS)}")
    target = Path(out)
    if fmt == "hf":
        with atomic_dir(target) as tmp:
            for f in model_dir.iterdir():
                if f.is_file():
                    shutil.copy2(f, tmp / f.name)
        return target
    if dtype not in EXPORT_TYPES:
        raise UserError(f"GGUF dtype '{dtype}' is not supported; choose one of {', '.join(EXPORT_TYPES)}")
    if not (model_dir / "tokenizer.json").is_file():
        raise CheckpointError(
            f"{model_dir} has no tokenizer.json; a GGUF file must carry its tokenizer "
            "(bundle one with `genloop model init ... --tokenizer DIR`)"
        )
    cfg = read_config(model_dir)
    state = state_from_hf(read_weights(model_dir), cfg)
    if cfg.tie_embeddings:
        state.pop("lm_head.weight", None)
    name = metadata(model_dir).get("source", {}).get("name") or model_dir.name
    return write_gguf(state, cfg, Tokenizer.load(model_dir), target, dtype=dtype, name=str(name))
