"""Names for model directories: a MODEL argument is a path or a name under GENLOOP_HOME/models."""

from __future__ import annotations

from pathlib import Path

from genloop.errors import CheckpointError
from genloop.home import models_dir


def list_models() -> list[str]:
    root = models_dir()
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if (d / "config.json").is_file())


def resolve(name_or_path: str | Path) -> Path:
    """A model directory for a path or a registered name; an unknown one lists what exists."""
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return p
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
