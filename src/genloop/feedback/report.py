"""A round's report: report.md says what data came in, what was trained, the figures and the
decision with its reasons; report.png puts current and candidate side by side per metric."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from genloop.atomic import atomic_write_text


def _markdown(r: Any) -> str:
    decision = f"**promoted** as `{r.new_version}`" if r.promoted else "**not promoted**"
    lines = [
        f"# Feedback round {r.round} of `{r.model.split('-r')[0]}`",
        "",
        f"- started {r.started}, took {r.minutes:.1f} min; served version before the round: `{r.model}`",
        "- feedback exported since the last round: "
        + ", ".join(f"{n} {kind}" for kind, n in r.exported.items()),
        "- training rows / held-out rows: "
        + ", ".join(f"{kind} {r.train_rows.get(kind, 0)}/{r.held_rows.get(kind, 0)}" for kind in r.exported),
        f"- method: {r.method}; candidate: `{r.candidate}`",
        f"- decision: {decision}",
    ]
    if r.server:
        lines.append(f"- {r.server}")
    lines += ["", "## Why", ""] + [f"- {reason}" for reason in r.reasons]
    if r.metrics:
        lines += [
            "",
            "## Figures",
            "",
            "| metric | current | candidate | gain | more |",
            "|---|---|---|---|---|",
        ]
        for name, m in r.metrics.items():
            extra = ", ".join(
                f"{k} {v:.3g}" for k, v in m.items() if k not in ("current", "candidate", "gain")
            )
            lines.append(
                f"| {name} | {m['current']:.4f} | {m['candidate']:.4f} | {m['gain']:+.4f} | {extra} |"
            )
    return "\n".join(lines) + "\n"


def _plot(r: Any, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(r.metrics)
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(3.2 * max(1, len(names)), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=False):
        m = r.metrics[name]
        ax.bar(
            ["current", "candidate"],
            [m["current"], m["candidate"]],
            color=["#9e9e9e", "#2e7d32" if r.promoted else "#c62828"],
        )
        ax.set_title(name, fontsize=9)
    if not names:
        axes[0][0].text(0.5, 0.5, "no figures", ha="center")
    fig.suptitle(f"round {r.round}: {'promoted' if r.promoted else 'not promoted'}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(result: Any, folder: Path) -> None:
    atomic_write_text(folder / "report.md", _markdown(result))
    _plot(result, folder / "report.png")
