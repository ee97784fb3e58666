"""Continual learning: continue a model on new data, optionally replaying a share of the old, and
report forgetting — validation loss on the old data before and after, beside the gain on the new."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from genloop.atomic import atomic_write_text
from genloop.checkpoint import load_model, resolve
from genloop.config import RunConfig, merge, parse_overrides, validate
from genloop.data.loader import PackedDataset
from genloop.errors import UserError
from genloop.train.objectives import causal_lm
from genloop.train.run import run_training


@dataclass
class Forgetting:
    old_before: float
    old_after: float
    new_before: float
    new_after: float

    def lines(self) -> list[str]:
        return [
            f"old data: validation loss {self.old_before:.4f} -> {self.old_after:.4f} "
            f"(forgetting {self.old_after - self.old_before:+.4f})",
            f"new data: validation loss {self.new_before:.4f} -> {self.new_after:.4f} "
            f"(gain {self.new_before - self.new_after:+.4f})",
        ]


@torch.no_grad()
def validation_loss(model: torch.nn.Module, shards: str | Path, seq_len: int, batches: int = 20) -> float:
    """Mean next-token loss over the first `batches` windows of a shard folder's validation split."""
    data = PackedDataset(shards, "validation", seq_len, 4, seed=0, rank=0, world_size=1)
    model.eval()
    losses = []
    for i in range(min(batches, len(data))):
        x, y = data.batch(i)
        losses.append(float(causal_lm(model, {"input_ids": x, "labels": y})[0]))
    return sum(losses) / len(losses)


def continual(config: RunConfig, old_shards: str | None, **run: Any) -> tuple[Any, Forgetting | None]:
    """Run `config` (which starts from `train.init_from`) and measure forgetting on `old_shards`."""
    if not config.train.init_from:
        raise UserError("continual learning starts from a model: set --continue-from MODEL")
    seq = config.data.seq_len
    start = load_model(resolve(config.train.init_from))
    before = None
    if old_shards:
        before = (
            validation_loss(start, old_shards, seq),
            validation_loss(start, config.data.shards or "", seq),
        )
    result = run_training(config, **run)
    if before is None:
        return result, None
    end = load_model(result.run_dir / "model")
    report = Forgetting(before[0], validation_loss(end, old_shards or "", seq), before[1],
                        validation_loss(end, config.data.shards or "", seq))  # fmt: skip
    atomic_write_text(result.run_dir / "forgetting.json", json.dumps(report.__dict__, indent=2))
    return result, report


def continue_training(data: dict[str, Any], args: argparse.Namespace) -> int:
    """`genloop train CONFIG --continue-from MODEL --data NEW [--replay OLD --replay-ratio R]`."""
    if not (args.continue_from and args.data):
        raise UserError("continual learning needs both --continue-from MODEL and --data SHARDS")
    update: dict[str, Any] = {"train": {"init_from": args.continue_from, "objective": "causal_lm"}}
    update["data"] = {"shards": args.data}
    if args.replay:
        update["data"]["replay_shards"] = args.replay
        update["data"]["replay_ratio"] = args.replay_ratio if args.replay_ratio is not None else 0.25
    data = merge(merge(data, update), parse_overrides(args.overrides))
    data.pop("preset", None)
    config = validate(RunConfig, data, str(args.config))
    result, report = continual(config, args.replay, run_dir=args.run_dir, resume=args.resume,
                               progress=not args.no_progress, label="continue")  # fmt: skip
    from genloop.cli.train_cmd import _report

    _report(result)
    for line in report.lines() if report else []:
        print("  " + line)
    return 0
