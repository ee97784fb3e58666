"""Shared fixtures: every test gets its own GENLOOP_HOME, so nothing touches ~/.genloop."""

from __future__ import annotations

from pathlib import Path

import pytest

from genloop.cli import main


@pytest.fixture(autouse=True)
def genloop_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.mktemp("genloop_home")
    monkeypatch.setenv("GENLOOP_HOME", str(home))
    return home


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """Run `genloop ARGS...` in-process; returns (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
