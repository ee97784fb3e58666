"""Progress bars for data stages: count, rate and time left when the total is known (on stderr)."""

from __future__ import annotations

from rich import progress as rp
from rich.console import Console
from rich.text import Text


class RateColumn(rp.ProgressColumn):
    """Items per second, the number to watch when a corpus grows."""

    def __init__(self, unit: str = "docs") -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: rp.Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(
            f"{speed:,.0f} {self.unit}/s" if speed else f"- {self.unit}/s", style="progress.data.speed"
        )


def stage_progress(enabled: bool, unit: str = "docs") -> rp.Progress:
    return rp.Progress(
        rp.TextColumn("{task.description}"),
        rp.BarColumn(),
        rp.MofNCompleteColumn(),
        RateColumn(unit),
        rp.TimeElapsedColumn(),
        rp.TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )
