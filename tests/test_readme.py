"""The README's commands work as written: bash and python blocks run, `$ cmd` lines print what is shown."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


@pytest.fixture
def workdir(tmp_path: Path, genloop_home: Path, smollm2: Path) -> tuple[Path, dict[str, str]]:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    # reuse the suite's download of SmolLM2 (the README's pull still converts it into this home)
    env = {
        **os.environ,
        "GENLOOP_CACHE": str(smollm2.parents[2] / "cache"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "GENLOOP_HOME": str(genloop_home),
    }
    return tmp_path, env


@pytest.mark.slow
def test_bash_blocks_run(workdir) -> None:
    cwd, env = workdir
    script = "set -euo pipefail\n" + "\n".join(_blocks("bash"))
    r = subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (cwd / "work" / "small" / "model.safetensors").is_file()
    for block in _blocks("python"):
        r = subprocess.run(
            [sys.executable, "-c", block], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
        )
        assert r.returncode == 0, r.stderr[-3000:]


def test_error_examples_print_what_the_readme_says(workdir) -> None:
    cwd, env = workdir
    for block in _blocks("text"):
        lines = block.strip().splitlines()
        for i, line in enumerate(lines):
            if not line.startswith("$ "):
                continue
            r = subprocess.run(
                ["bash", "-c", line[2:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
            )
            expected = lines[i + 1].replace("~/.genloop", env["GENLOOP_HOME"])
            assert r.returncode == 2, line
            assert r.stderr.strip() == expected, (line, r.stderr)
