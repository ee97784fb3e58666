"""What a build kept and dropped, per source and stage: `report.md` for people, `report.png` to
see it at a glance. Both are made from the manifest alone, so they can be redrawn any time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from genloop.atomic import atomic_write_text

STAGES = ("read", "extract", "filter", "duplicate", "kept")
COLORS = {
    "kept": "#2e7d32",
    "read": "#9e9e9e",
    "extract": "#bdbdbd",
    "filter": "#f9a825",
    "duplicate": "#c62828",
}


def stage_of(key: str) -> str | None:
    """Which stage a stats key belongs to (None for counters that are not documents)."""
    if key.startswith(("read:", "extract:", "filter:")):
        return key.split(":", 1)[0]
    if key.endswith("_duplicate"):
        return "duplicate"
    return "kept" if key == "kept" else None


def stage_totals(stages: dict[str, int]) -> dict[str, int]:
    totals = dict.fromkeys(STAGES, 0)
    for key, n in stages.items():
        stage = stage_of(key)
        if stage:
            totals[stage] += n
    return totals


def _row(name: str, stages: dict[str, int], tokens: dict[str, int]) -> str:
    totals = stage_totals(stages)
    seen = sum(totals.values())
    pii = sum(n for k, n in stages.items() if k.startswith("pii:"))
    share = f"{100 * totals['kept'] / seen:.1f}%" if seen else "-"
    cells = [name, seen, totals["read"] + totals["extract"], totals["filter"], totals["duplicate"]]
    cells += [totals["kept"], share, tokens.get("train", 0), tokens.get("validation", 0), pii]
    return "| " + " | ".join(f"{c:,}" if isinstance(c, int) else c for c in cells) + " |"


def write_report(output: Path, manifest: dict[str, Any]) -> None:
    lines = [
        f"# Data build: {output.name}",
        "",
        f"{manifest['splits']['train']['tokens']:,} training tokens and "
        f"{manifest['splits']['validation']['tokens']:,} validation tokens "
        f"({manifest['dtype']}, vocabulary {manifest['tokenizer']['vocab_size']:,}), "
        f"built {manifest['created']}.",
        "",
        "| source | documents in | unreadable | filtered | duplicates | kept | kept % | train tokens "
        "| validation tokens | PII replaced |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_row(s["name"], s["stages"], s["tokens"]) for s in manifest["sources"]]
    for source in manifest["sources"]:
        lines += ["", f"## {source['name']}", "", f"{source['kind']}: `{source['where']}`"]
        lines += [f"licence: {source['licence'] or 'not recorded'}", "", "| stage | reason | documents |"]
        lines += ["|---|---|---|"]
        for key, n in sorted(
            source["stages"].items(), key=lambda kv: (STAGES.index(stage_of(kv[0]) or "kept"), kv[0])
        ):
            stage = stage_of(key)
            if stage and n:
                lines.append(f"| {stage} | {key.split(':', 1)[-1]} | {n:,} |")
        pii = {k.split(":", 1)[1]: n for k, n in source["stages"].items() if k.startswith("pii:") and n}
        if pii:
            lines += ["", "PII replaced: " + ", ".join(f"{k} {n:,}" for k, n in sorted(pii.items()))]
    lines += ["", "![what every stage kept and dropped](report.png)", ""]
    atomic_write_text(output / "report.md", "\n".join(lines))
    plot_report(output / "report.png", manifest)


def plot_report(path: Path, manifest: dict[str, Any]) -> None:
    """Left: the share of each source's documents every stage dropped or kept (sources differ in size
    by orders of magnitude, so shares, with the count beside each bar). Right: tokens kept."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = manifest["sources"]
    names = [s["name"] for s in sources]
    totals = [stage_totals(s["stages"]) for s in sources]
    seen = [max(1, sum(t.values())) for t in totals]
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(12, 1.6 + 0.6 * len(sources)), gridspec_kw={"width_ratios": [3, 2]}, sharey=True
    )
    start = [0.0] * len(sources)
    for stage in ("kept", "filter", "duplicate", "read", "extract"):
        shares = [100 * t[stage] / n for t, n in zip(totals, seen, strict=True)]
        if any(shares):
            left.barh(names, shares, left=start, color=COLORS[stage], label=stage)
            start = [a + b for a, b in zip(start, shares, strict=True)]
    for y, n in enumerate(seen):
        left.text(101, y, f"{n:,} docs", va="center", fontsize="small")
    left.set_xlim(0, 125)
    left.invert_yaxis()
    left.set_xlabel("% of the source's documents")
    left.set_title("What each stage kept and dropped")
    fig.legend(loc="lower left", ncol=5, fontsize="small", frameon=False)
    kept = [sum(s["tokens"].values()) / 1e6 for s in sources]
    right.barh(names, kept, color=COLORS["kept"])
    right.set_xlabel("million tokens kept (train + validation)")
    right.set_title("Tokens per source")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
