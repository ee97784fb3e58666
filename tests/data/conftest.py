"""Fixtures for data tests: one download cache for the recipes, shared by the suite and across runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def recipe_cache_path() -> Path:
    """Where recipe downloads live for tests: GENLOOP_TEST_CACHE (default .test-cache/) + /cache,
    the same place the smollm2 fixture keeps its wheel, so a machine fetches each package once."""
    return Path(os.environ.get("GENLOOP_TEST_CACHE") or REPO / ".test-cache") / "cache"


@pytest.fixture
def recipe_cache(recipe_cache_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point GENLOOP_CACHE at the shared cache for one test; monkeypatch restores it afterwards."""
    monkeypatch.setenv("GENLOOP_CACHE", str(recipe_cache_path))
    return recipe_cache_path
