"""`genloop eval MODEL --tasks ...`: score a model and write results.json, report.md and a chart."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "eval",
        help="evaluate a model on tasks (multiple choice, generation, perplexity)",
        description="Score MODEL on each task and write results.json, report.md and scores.png to "
        "--out. A task is KIND:PATH (KIND: multiple_choice, generation, perplexity) or a YAML file "
        "defining tasks. Rerunning into the same --out skips the tasks already finished.",
    )
    p.add_argument("model", metavar="MODEL", help="a model directory or a registered name")
    task_flags(p)
    p.add_argument(
        "--out", default=None, metavar="DIR", help="output folder (default GENLOOP_HOME/evals/<time>-<model>)"
    )
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    p.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        metavar="T",
        help="generation temperature; 0 (default) is greedy",
    )
    p.set_defaults(handler=_eval)


def task_flags(p: argparse.ArgumentParser) -> None:
    """The flags `eval` and `compare` share: which tasks, how much of them, and how models run."""
    p.add_argument(
        "--tasks",
        nargs="+",
        required=True,
        metavar="TASK",
        help="built-in task names (summarization, translation, conversation, humaneval), KIND:PATH "
        "or YAML files (one or more)",
    )
    p.add_argument("--limit", type=int, default=None, metavar="N", help="first N rows (or windows) per task")
    p.add_argument(
        "--batch-size", type=int, default=16, metavar="B", help="rows per forward pass (default 16)"
    )
    p.add_argument(
        "--max-tokens", type=int, default=256, metavar="N", help="most tokens per generation (default 256)"
    )
    p.add_argument("--chat", action="store_true", help="wrap generation prompts in the model's chat template")
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "int8", "int4"],
        default="float32",
        help="weights during evaluation (default float32: scores of the model itself)",
    )


def _eval(args: argparse.Namespace) -> int:
    from genloop.evaluate import evaluate

    summary = evaluate(
        args.model,
        args.tasks,
        limit=args.limit,
        out=args.out,
        seed=args.seed,
        batch_size=args.batch_size,
        max_tokens=args.max_tokens,
        chat=args.chat,
        temperature=args.temperature,
        dtype=args.dtype,
        progress=sys.stderr.isatty(),
    )
    _print(summary)
    return 0


def _print(summary: dict[str, Any]) -> None:
    for name, task in summary["tasks"].items():
        scores = "  ".join(f"{k}={v:.4g}" for k, v in task["metrics"].items() if k not in ("tokens", "bytes"))
        print(f"{name}  n={task['n']}  {scores}{'  (cached)' if task.get('cached') else ''}")
    print(f"wrote {summary['out']}/results.json, report.md, scores.png")
