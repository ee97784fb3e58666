"""compare.md and compare.png of a comparison: B − A per task and metric, and head-to-head win rates.

The chart has one small panel per (task, metric), since metrics live on scales too different for one
axis (perplexity in the hundreds beside bits-per-byte near 1). Each panel shows B's improvement with
its interval around a line at 0, signed so that right of 0 always means B is better: for perplexity
and bits-per-byte (lower is better) it plots A − B. Win-rate panels show B's win rate against 0.5.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

_COLOURS = {"B better": "#2a9d4b", "A better": "#c8423b"}
_GREY = "#6b6b6b"


def _label(path: str) -> str:
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.name == "model" else p.name


def _fmt(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def interval(entry: dict[str, Any], key: str = "delta") -> str:
    """`value [low, high]` of a delta (signed) or a win rate; the bare value when nothing was resampled."""
    value, ci = entry[key], entry.get("ci")
    if key == "delta":
        return f"{value:+.4g}" + (f" [{ci[0]:+.4g}, {ci[1]:+.4g}]" if ci else "")
    return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def markdown(summary: dict[str, Any]) -> str:
    level = round(100 * summary["settings"]["confidence"])
    lines = [
        f"# {_label(summary['b'])} (B) against {_label(summary['a'])} (A)",
        "",
        f"A: `{summary['a']}`  ",
        f"B: `{summary['b']}`  ",
        f"Settings: {', '.join(f'{k}={v}' for k, v in summary['settings'].items())}  ",
        f"Created: {summary['created']}",
        "",
        f"Delta is B − A with a {level} % paired-bootstrap interval over the task's examples; the verdict "
        "names a model only when the interval excludes 0. Perplexity and bits-per-byte: lower is better.",
        "",
        "| task | metric | A | B | B − A [CI] | verdict |",
        "|---|---|---:|---:|---:|---|",
    ]
    wins = []
    for name, task in summary["tasks"].items():
        for metric, m in task["metrics"].items():
            verdict = m["verdict"] + (f"; {m['note']}" if m.get("note") else "")
            lines.append(
                f"| {name} | {metric} | {_fmt(m['a'])} | {_fmt(m['b'])} | {interval(m)} | {verdict} |"
            )
        for kind, h in task.get("head_to_head", {}).items():
            wins.append(
                f"| {name} | {kind} `{_label(h['model'])}` | {h['wins']} | {h['ties']} | {h['losses']} | "
                f"{interval(h, 'win_rate')} | {h['verdict']} |"
            )
    if wins:
        lines += [
            "",
            "Head to head: B's win rate counts a tie as half a win; a judge model's verdict counts only when "
            "it holds with the answers in both orders.",
            "",
            "| task | judged by | B wins | ties | A wins | B win rate [CI] | verdict |",
            "|---|---|---:|---:|---:|---:|---|",
            *wins,
        ]
    lines += ["", "![comparison](compare.png)", ""]
    return "\n".join(lines)


def _panels(summary: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for name, task in summary["tasks"].items():
        for metric, m in task["metrics"].items():
            if not m.get("ci"):
                continue
            lower = m["better"] == "lower"
            sign = -1.0 if lower else 1.0
            low, high = sorted((sign * m["ci"][0], sign * m["ci"][1]))
            panels.append({
                "title": f"{name}\n{metric}" + (" (lower is better: A − B)" if lower else " (B − A)"),
                "value": sign * m["delta"], "low": low, "high": high, "centre": 0.0,
                "verdict": m["verdict"], "text": f"A {_fmt(m['a'])}  B {_fmt(m['b'])}",
            })  # fmt: skip
        for kind, h in task.get("head_to_head", {}).items():
            panels.append({
                "title": f"{name}\nB win rate ({kind})", "value": h["win_rate"], "low": h["ci"][0],
                "high": h["ci"][1], "centre": 0.5, "verdict": h["verdict"],
                "text": f"B {h['wins']} / tie {h['ties']} / A {h['losses']}", "limits": (0.0, 1.0),
            })  # fmt: skip
    return panels


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = _panels(summary)
    cols = max(1, min(4, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.3 * rows + 0.6), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    if not panels:
        axes[0][0].text(0.5, 0.5, "nothing to compare", ha="center", va="center")
    for ax, p in zip(axes.flat, panels, strict=False):
        colour = _COLOURS.get(p["verdict"], _GREY)
        ax.axvline(p["centre"], color="black", linewidth=0.8)
        ax.errorbar(
            [p["value"]], [0], xerr=[[max(p["value"] - p["low"], 0)], [max(p["high"] - p["value"], 0)]],
            fmt="o", color=colour, capsize=6, linewidth=2,
        )  # fmt: skip
        if "limits" in p:
            ax.set_xlim(*p["limits"])
        else:
            reach = max(abs(p["low"]), abs(p["high"]), abs(p["value"])) * 1.3 or 1.0
            ax.set_xlim(-reach, reach)
        ax.set_ylim(-1, 1)
        ax.set_yticks([])
        ax.set_title(p["title"], fontsize=8)
        ax.text(0.02, 0.9, p["verdict"], transform=ax.transAxes, fontsize=8, color=colour, va="top")
        ax.text(0.02, 0.08, p["text"], transform=ax.transAxes, fontsize=7, color=_GREY)
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(
        f"B = {_label(summary['b'])} vs A = {_label(summary['a'])}: right of the line = B better "
        f"({round(100 * summary['settings']['confidence'])} % intervals)",
        fontsize=9,
    )
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
