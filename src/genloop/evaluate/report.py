"""The three files of an evaluation: results.json (for programs), report.md (for people), a PNG chart.

Scores are charted on one 0-100 axis: fractions (accuracy, exact match, F1, ROUGE) are shown as
percentages beside BLEU and chrF, which sacrebleu already reports on that scale. Perplexity tasks chart
bits-per-byte, the measure comparable across tokenizers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from genloop.atomic import atomic_write_text

PERCENT_SCALE = ("bleu", "chrf")
CHARTED_PERPLEXITY = ("bits_per_byte",)
HIDDEN = ("tokens", "bytes")


def write_report(folder: Path, summary: dict[str, Any]) -> None:
    atomic_write_text(folder / "results.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(folder / "report.md", markdown(summary))
    plot(summary, folder / "scores.png")


def markdown(summary: dict[str, Any]) -> str:
    settings = ", ".join(f"{k}={v}" for k, v in summary["settings"].items())
    lines = [
        f"# Evaluation of {Path(summary['model']).name}",
        "",
        f"Model: `{summary['model']}`  ",
        f"Settings: {settings}  ",
        f"Created: {summary['created']}",
        "",
        "Accuracy, exact match, F1 and ROUGE are fractions in [0, 1]; BLEU and chrF are sacrebleu's 0-100.",
        "",
        "| task | kind | n | metric | value |",
        "|---|---|---:|---|---:|",
    ]
    for name, task in summary["tasks"].items():
        for metric, value in task["metrics"].items():
            lines.append(f"| {name} | {task['kind']} | {task['n']} | {metric} | {_fmt(value)} |")
    lines += ["", "![scores](scores.png)", ""]
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _charted(task: dict[str, Any]) -> dict[str, float]:
    metrics = task["metrics"]
    if task["kind"] == "perplexity":
        return {k: metrics[k] for k in CHARTED_PERPLEXITY if k in metrics}
    return {k: v if k in PERCENT_SCALE else 100 * v for k, v in metrics.items() if k not in HIDDEN}


def plot(summary: dict[str, Any], path: Path) -> None:
    """One panel per task, one bar per metric, value written on each bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = summary["tasks"]
    fig, axes = plt.subplots(1, max(len(tasks), 1), figsize=(3.6 * max(len(tasks), 1), 3.6), squeeze=False)
    for ax, (name, task) in zip(axes[0], tasks.items(), strict=False):
        values = _charted(task)
        bars = ax.bar(list(values), list(values.values()), color="#4C72B0")
        ax.bar_label(bars, fmt="%.3g", fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("bits per byte" if task["kind"] == "perplexity" else "score (0-100)")
        if task["kind"] != "perplexity":
            ax.set_ylim(0, 105)
        ax.tick_params(axis="x", labelsize=8)
        plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.suptitle(f"{Path(summary['model']).name}", fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
