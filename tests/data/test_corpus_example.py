"""The README's real corpus: `genloop data build examples/data/corpus.yaml` fetches real sources
through the recipes and writes >= 10M tokens of shards with a report and a plot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_example_corpus_builds_ten_million_tokens(genloop_home: Path, recipe_cache_path: Path) -> None:
    env = {**os.environ, "GENLOOP_HOME": str(genloop_home), "GENLOOP_CACHE": str(recipe_cache_path)}
    genloop = [sys.executable, "-m", "genloop"]
    cmd = [*genloop, "data", "build", "examples/data/corpus.yaml", "--no-progress"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    out = genloop_home / "data" / "corpus"
    manifest = json.loads((out / "manifest.json").read_text())
    recipes = [s for s in manifest["sources"] if s["kind"] == "recipe" and sum(s["tokens"].values()) > 0]
    assert len(recipes) >= 3
    assert manifest["splits"]["train"]["tokens"] >= 10_000_000
    assert all(s["licence"] for s in manifest["sources"])
    assert "debian-descriptions" in (out / "report.md").read_text()
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.startswith("up to date")
