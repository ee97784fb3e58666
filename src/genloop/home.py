"""Where genloop keeps its state: everything lives under GENLOOP_HOME (default ~/.genloop)."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The root folder; read from the environment each call so tests can point it elsewhere."""
    return Path(os.environ.get("GENLOOP_HOME") or Path.home() / ".genloop").expanduser()


def models_dir() -> Path:
    return home() / "models"


def data_dir() -> Path:
    return home() / "data"


def runs_dir() -> Path:
    return home() / "runs"


def cache_dir() -> Path:
    """Downloads (wheels, GGUF files); GENLOOP_CACHE may point elsewhere so several homes share one."""
    override = os.environ.get("GENLOOP_CACHE")
    return Path(override).expanduser() if override else home() / "cache"


def db_path() -> Path:
    return home() / "genloop.db"
