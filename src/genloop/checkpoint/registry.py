"""Names for model directories: a MODEL argument is a path or a name under GENLOOP_HOME/models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from genloop.errors import CheckpointError
from genloop.home import models_dir


def list_models() -> list[str]:
    root = models_dir()
    if not root.is_dir():
        return []
    return sorted(
        d.name for d in root.iterdir() if (d / "config.json").is_file() and not d.name.startswith(".")
    )


def resolve(name_or_path: str | Path) -> Path:
    """A model directory for a path or a registered name; an unknown one lists what exists. A training
    checkpoint (runs/ID/checkpoints/step-N) or a run folder stands for the model directory inside it."""
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        inner = p / "model"
        return inner if not (p / "config.json").is_file() and (inner / "config.json").is_file() else p
    candidate = models_dir() / str(name_or_path)
    if "/" not in str(name_or_path) and (candidate / "config.json").is_file():
        return candidate
    known = list_models()
    listing = (
        f"registered models: {', '.join(known)}" if known else f"no models are registered in {models_dir()}"
    )
    raise CheckpointError(
        f"model '{name_or_path}' not found: not a directory and not a registered name; {listing}"
    )


def metadata(path: Path) -> dict[str, Any]:
    """genloop.json of a model directory (provenance); empty when absent or unreadable."""
    try:
        data = json.loads((path / "genloop.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def disk_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def remove(name: str) -> Path:
    """Delete a registered model (only names inside the registry, never an arbitrary path)."""
    target = models_dir() / name
    if "/" in name or name.startswith(".") or not (target / "config.json").is_file():
        known = list_models()
        raise CheckpointError(f"no registered model '{name}'; registered: {', '.join(known) or 'none'}")
    shutil.rmtree(target)
    return target
