"""Training checkpoints: everything needed to continue a run exactly, written atomically.

`runs/<id>/checkpoints/step-0000100/` holds `model/` (an ordinary model directory: it loads,
serves and exports like any other), `trainer.pt` (optimizer state, step, best validation loss,
early-stopping count) and `rng-<rank>.pt` (every RNG, per rank). A checkpoint folder appears
whole or not at all; `latest` names the newest; only the last K are kept.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genloop.atomic import atomic_dir, atomic_write_text
from genloop.errors import UserError


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoints_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def latest_checkpoint(run_dir: Path) -> Path | None:
    folder = checkpoints_dir(run_dir)
    pointer = folder / "latest"
    if pointer.is_file():
        candidate = folder / pointer.read_text().strip()
        if (candidate / "trainer.pt").is_file():
            return candidate
    found = (
        sorted(p for p in folder.glob("step-*") if (p / "trainer.pt").is_file()) if folder.is_dir() else []
    )
    return found[-1] if found else None


def write_checkpoint(
    run_dir: Path, step: int, save_model_to: Any, trainer_state: dict[str, Any], keep_last: int
) -> Path:
    """`save_model_to(folder)` writes the model directory; the rest is torch.save'd beside it."""
    folder = checkpoints_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / f"step-{step:07d}"
    with atomic_dir(dest) as tmp:
        save_model_to(tmp / "model")
        torch.save(trainer_state, tmp / "trainer.pt")
    atomic_write_text(folder / "latest", dest.name)
    for old in sorted(p for p in folder.glob("step-*") if p.is_dir())[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return dest


def write_rng(checkpoint: Path, rank: int) -> None:
    tmp = checkpoint / f".rng-{rank}.pt.tmp"
    torch.save(rng_state(), tmp)
    tmp.replace(checkpoint / f"rng-{rank}.pt")


def read_trainer_state(checkpoint: Path) -> dict[str, Any]:
    try:
        return torch.load(checkpoint / "trainer.pt", map_location="cpu", weights_only=False)
    except Exception as exc:  # a damaged file: say which, and what to do
        raise UserError(
            f"checkpoint {checkpoint} is unreadable ({exc}); delete it to resume from an earlier one"
        ) from None


def check_free_space(folder: Path, needed: int) -> None:
    """Fail before training, not at the first save, when a checkpoint cannot fit or be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe-{os.getpid()}"  # one per process: torchrun ranks check at once
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(
            f"cannot write checkpoints to {folder} ({exc.strerror or exc}): choose a writable --run-dir"
        ) from None
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise UserError(
            f"{folder} has {free / 2**30:.1f} GiB free but a checkpoint needs about "
            f"{needed / 2**30:.1f} GiB: "
            "free some space, lower keep_last, or choose another --run-dir"
        )
