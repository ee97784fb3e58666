"""`genloop loop CONFIG.yaml`: one round of learning from users' feedback, end to end."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "loop", help="one round of the feedback loop: export, train, gate, promote, switch the server",
        description="Export feedback given since the last round, build SFT/preference/KTO sets (a fixed "
        "held-out slice apart), train a candidate from the served version, compare it with that version on "
        "held-out feedback and on general-text perplexity, and promote it only if it wins without "
        "regressing: registered as <model>-rN and switched to in the running `genloop serve` without "
        "dropping requests. "
        "Each round writes report.md and report.png under GENLOOP_HOME/loop/<model>/.",
    )  # fmt: skip
    p.add_argument("config", type=Path, help="loop config (see examples/loop/loop.yaml)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override config keys (train.steps=20)")
    p.add_argument("--dry-run", action="store_true", help="show what the round would do; train nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    p.set_defaults(handler=_loop)


def _loop(args: argparse.Namespace) -> int:
    from genloop.config import load_config
    from genloop.feedback.config import LoopConfig
    from genloop.feedback.loop import run_round

    config = load_config(LoopConfig, args.config, args.overrides)
    r = run_round(config, dry_run=args.dry_run, progress=not args.no_progress)
    head = f"round {r.round} ({'dry run' if r.dry_run else r.method or 'nothing to train'})"
    print(f"{head}: feedback " + ", ".join(f"{n} {k}" for k, n in r.exported.items()))
    for reason in r.reasons:
        print(f"  {reason}")
    if r.promoted:
        print(f"promoted {r.new_version} (parent {r.model})")
    elif r.method and not r.dry_run:
        print(f"not promoted: {r.model} stays")
    if r.server:
        print(f"  {r.server}")
    if r.directory:
        print(f"  report: {Path(r.directory) / 'report.md'}")
    return 0
