"""What a run writes as it goes: `metrics.jsonl` (one object per log line), TensorBoard events when
the `tensorboard` package is installed, and a PNG of the curves when the run ends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class MetricsLog:
    """Appends metrics; on rank 0 only (other ranks get a log that writes nothing)."""

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.rows: list[dict[str, Any]] = []
        self._tb: Any = None
        if enabled:
            run_dir.mkdir(parents=True, exist_ok=True)
            if self.path.exists():  # a resumed run continues the same file
                self.rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(run_dir / "tensorboard"))
            except Exception:  # tensorboard not installed: JSONL and PNG still written
                self._tb = None

    def log(self, step: int, **values: float) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: float(v) for k, v in values.items()}}
        self.rows = [r for r in self.rows if not (r["step"] == step and r.keys() == row.keys())]
        self.rows.append(row)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(key, value, step)

    def truncate_after(self, step: int) -> None:
        """A resumed run repeats the steps after its checkpoint: forget what the lost run logged there."""
        if not self.enabled:
            return
        self.rows = [r for r in self.rows if r["step"] <= step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in self.rows), encoding="utf-8")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()

    def plot(self, path: Path, title: str) -> Path | None:
        """Loss (train and validation), learning rate and throughput against the step."""
        if not self.enabled or not self.rows:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        def series(key: str) -> tuple[list[int], list[float]]:
            pts = [(r["step"], r[key]) for r in self.rows if key in r]
            return [p[0] for p in pts], [p[1] for p in pts]

        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        for key, style in (("loss", "-"), ("val_loss", "o-")):
            xs, ys = series(key)
            if xs:
                axes[0].plot(xs, ys, style, label=key.replace("_", " "), markersize=3)
        axes[0].set_ylabel("loss (nats/token)")
        axes[0].legend()
        for ax, key, label in ((axes[1], "lr", "learning rate"), (axes[2], "tokens_per_s", "tokens/s")):
            xs, ys = series(key)
            ax.plot(xs, ys)
            ax.set_ylabel(label)
        return save_step_figure(fig, axes, path, title)


def save_step_figure(fig: Any, axes: Any, path: Path, title: str) -> Path:
    """Label the x axes 'step', title the figure and write it atomically (a half-written PNG never
    replaces the last good one)."""
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.set_xlabel("step")
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path
