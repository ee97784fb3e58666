"""`genloop compare A B --tasks ...`: B − A per task with bootstrap intervals, and head-to-head win rates."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from genloop.cli.eval_cmd import task_flags
from genloop.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "compare",
        help="compare two models on tasks: deltas with confidence intervals, head-to-head win rate",
        description="Evaluate A and B on each task (into --out/a and --out/b; reruns reuse finished "
        "tasks), then report B − A per metric with a paired-bootstrap confidence interval, and on "
        "generation tasks B's win rate as judged by --reward-model and/or --judge. Writes compare.json, "
        "compare.md and compare.png. A and B are model directories, registered names, training "
        "checkpoints (runs/ID/checkpoints/step-N) or run folders.",
    )
    p.add_argument("a", metavar="A", help="the baseline model")
    p.add_argument("b", metavar="B", help="the model compared against A")
    task_flags(p)
    p.add_argument(
        "--out", default=None, metavar="DIR", help="output folder (default GENLOOP_HOME/compares/TIME-A-vs-B)"
    )
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of generation and bootstrap (0)")
    p.add_argument(
        "--resamples", type=int, default=1000, metavar="R", help="bootstrap resamples (default 1000)"
    )
    p.add_argument(
        "--reward-model", default=None, metavar="DIR", help="judge answers with a reward model (`genloop rm`)"
    )
    p.add_argument(
        "--judge", default=None, metavar="MODEL", help="judge answers with a chat model and a rubric"
    )
    p.add_argument(
        "--rubric", default=None, metavar="TEXT", help="what the judge values: text or @FILE (default: "
        "helpful, correct, concise)"
    )  # fmt: skip
    p.set_defaults(handler=_compare)


def read_rubric(value: str | None) -> str | None:
    """The rubric text itself, or the contents of the file named after an `@`."""
    if value is None or not value.startswith("@"):
        return value
    path = Path(value[1:]).expanduser()
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(
            f"--rubric {value}: cannot read {path} ({exc.__class__.__name__}); give a text file"
        ) from None
    if not text:
        raise UserError(f"--rubric {value}: {path} is empty; write what the judge should value")
    return text


def _compare(args: argparse.Namespace) -> int:
    from genloop.evaluate.compare import compare

    summary = compare(
        args.a,
        args.b,
        args.tasks,
        out=args.out,
        judge=args.judge,
        reward_model=args.reward_model,
        rubric=read_rubric(args.rubric),
        resamples=args.resamples,
        seed=args.seed,
        limit=args.limit,
        batch_size=args.batch_size,
        max_tokens=args.max_tokens,
        chat=args.chat,
        dtype=args.dtype,
        progress=sys.stderr.isatty(),
    )
    _print(summary)
    return 0


def _print(summary: dict[str, Any]) -> None:
    from genloop.evaluate.compare_report import interval

    rows = [("task", "metric", "A", "B", "B - A [CI]", "verdict")]
    for name, task in summary["tasks"].items():
        for metric, m in task["metrics"].items():
            rows.append((name, metric, f"{m['a']:.4g}", f"{m['b']:.4g}", interval(m), m["verdict"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for name, task in summary["tasks"].items():
        for kind, h in task.get("head_to_head", {}).items():
            print(
                f"{name}  {kind}: B wins {h['wins']}, ties {h['ties']}, A wins {h['losses']}; "
                f"B win rate {interval(h, 'win_rate')}  {h['verdict']}"
            )
    print(f"wrote {summary['out']}/compare.json, compare.md, compare.png")
