"""The training progress bar: step, loss, tokens/s, MFU and time left, on stderr."""

from __future__ import annotations

from typing import Any

from rich import progress as rp
from rich.console import Console


class TrainProgress:
    def __init__(self, enabled: bool, total: int, start: int) -> None:
        self.console = Console(stderr=True)
        self.bar = rp.Progress(
            rp.TextColumn("step {task.completed}/{task.total}"),
            rp.BarColumn(),
            rp.TextColumn("loss {task.fields[loss]}  {task.fields[rate]} tok/s  MFU {task.fields[mfu]}"),
            rp.TimeElapsedColumn(),
            rp.TimeRemainingColumn(),
            console=self.console,
            disable=not enabled,
        )
        self.enabled = enabled
        self.task = self.bar.add_task("train", total=total, completed=start, loss="-", rate="-", mfu="-")

    def __enter__(self) -> TrainProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)

    def update(self, step: int, loss: float, rate: float, mfu: float) -> None:
        self.bar.update(
            self.task, completed=step, loss=f"{loss:.4f}", rate=f"{rate:,.0f}", mfu=f"{100 * mfu:.0f}%"
        )

    def set_total(self, total: int) -> None:
        self.bar.update(self.task, total=total)

    def note(self, text: str) -> None:
        if self.enabled:
            self.bar.console.print(text)
