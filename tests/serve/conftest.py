"""Fixtures for tests against a real `genloop serve`: a tiny model directory and a server starter."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.serve import live


def build_tiny_model(root: Path, max_seq_len: int = 4096) -> Path:
    """`live.tiny_model` with a longer context: at temperature 0 this model repeats a newline and never
    ends, so asking for ~4000 tokens keeps it busy for seconds (serve it with --max-seq-len 4096), long
    enough to stop the answer from a browser."""
    return live.tiny_model(root, max_seq_len)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny model (4096-token context) for the whole session; serve it with `--dtype float32`."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def live_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[..., contextlib.AbstractContextManager[str]]:
    """`with live_server(model_dir, *extra_args) as base_url:` runs `genloop serve` on a free 127.0.0.1
    port with a fresh GENLOOP_HOME (its own store), waits for GET /health 200, and stops it on exit."""

    def start(
        model_dir: Path | str, *extra_args: str, **kwargs: Any
    ) -> contextlib.AbstractContextManager[str]:
        return live.live_server(model_dir, tmp_path_factory.mktemp("serve-home"), *extra_args, **kwargs)

    return start
