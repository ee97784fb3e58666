"""`genloop train CONFIG.yaml`, `genloop pretrain`, `genloop finetune`: one trainer behind three doors.

`train` runs any objective from a YAML file; `pretrain` and `finetune` build that config from flags
for the two common cases. All of them run unchanged under `torchrun --nproc_per_node=N`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from genloop.errors import UserError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--run-dir",
        type=Path,
        help="run folder: checkpoints, metrics, model (default GENLOOP_HOME/runs/<time>-<name>)",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --run-dir from its newest checkpoint"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    train = sub.add_parser(
        "train", help="train with any objective from a YAML run config",
        description="Pretraining, SFT, span corruption or classification: the config's train.objective.",
    )  # fmt: skip
    train.add_argument("config", type=Path, help="run config (see examples/*.yaml)")
    train.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="override config keys (train.max_steps=50)"
    )
    train.add_argument("--continue-from", metavar="MODEL", help="continual learning: start from this model")
    train.add_argument("--data", metavar="SHARDS", help="the new data (shards) to continue on")
    train.add_argument(
        "--replay",
        metavar="SHARDS",
        help="shards of the previous data: replayed, and forgetting measured on them",
    )
    train.add_argument(
        "--replay-ratio", type=float, help="share of each batch replayed from --replay (e.g. 0.25)"
    )
    _common(train)
    train.set_defaults(handler=_train)

    pre = sub.add_parser("pretrain", help="causal-LM pretraining (or continued pretraining) on shards")
    pre.add_argument("--data", required=True, metavar="SHARDS", help="shard folder from `genloop data build`")
    pre.add_argument("--preset", default="small", help="model preset for a fresh model (default: small)")
    pre.add_argument(
        "--model", metavar="MODEL", help="continue pretraining this model instead of a fresh one"
    )
    _schedule_flags(pre, steps=1000, lr=1e-3, batch=16, seq=256)
    _common(pre)
    pre.set_defaults(handler=_pretrain)

    fine = sub.add_parser("finetune", help="supervised fine-tuning on chat/prompt-completion JSONL")
    fine.add_argument("model", help="model directory or registered name to start from")
    fine.add_argument(
        "--data", required=True, type=Path, help="SFT JSONL ({messages} or {prompt, completion})"
    )
    fine.add_argument("--validation", type=Path, help="held-out SFT JSONL for validation loss")
    _lora_flags(fine)
    fine.add_argument(
        "--freeze-layers", type=int, default=0, help="freeze the first K blocks (full fine-tuning)"
    )
    fine.add_argument("--freeze-embeddings", action="store_true", help="freeze the token embeddings")
    _schedule_flags(fine, steps=200, lr=2e-4, batch=8, seq=512)
    _common(fine)
    fine.set_defaults(handler=_finetune)


def _lora_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lora", action="store_true", help="train LoRA adapters instead of all weights")
    p.add_argument("--lora-r", type=int, default=8, help="LoRA rank (default 8)")
    p.add_argument("--lora-alpha", type=float, default=16, help="LoRA alpha (default 16)")
    p.add_argument("--lora-dropout", type=float, default=0.05, help="LoRA dropout (default 0.05)")
    p.add_argument("--lora-targets", default="q,k,v,o", help="projections to adapt (default q,k,v,o)")


def _lora_settings(args: argparse.Namespace) -> dict[str, Any]:
    targets = [t.strip() for t in args.lora_targets.split(",") if t.strip()]
    return {
        "r": args.lora_r,
        "alpha": args.lora_alpha,
        "dropout": args.lora_dropout,
        "target_modules": targets,
    }


def _schedule_flags(p: argparse.ArgumentParser, steps: int, lr: float, batch: int, seq: int) -> None:
    p.add_argument("--steps", type=int, default=steps, help=f"optimizer steps (default {steps})")
    p.add_argument("--minutes", type=float, help="time budget: stop, evaluate and save after this long")
    p.add_argument("--lr", type=float, default=lr, help=f"peak learning rate (default {lr})")
    p.add_argument("--batch-size", type=int, default=batch, help=f"sequences per step (default {batch})")
    p.add_argument("--seq-len", type=int, default=seq, help=f"tokens per sequence (default {seq})")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step (default 1)")
    p.add_argument("--eval-every", type=int, default=100, help="steps between validation runs (default 100)")
    p.add_argument("--save-every", type=int, default=200, help="steps between checkpoints (default 200)")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto", help="autocast dtype")
    p.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=None,
        help="torch.compile the model (default: only for runs of >= 10 minutes or >= 2000 steps)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed for weights, data order and dropout")


def _schedule(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "max_steps": args.steps, "max_minutes": args.minutes, "learning_rate": args.lr,
        "batch_size": args.batch_size, "grad_accum": args.grad_accum, "eval_every": args.eval_every,
        "save_every": args.save_every, "dtype": args.dtype, "seed": args.seed,
        "compile": "auto" if args.compile is None else args.compile,
        "warmup_steps": min(100, args.steps // 10),
    }  # fmt: skip


def _run(data: dict[str, Any], args: argparse.Namespace, label: str) -> int:
    from genloop.config import RunConfig, validate
    from genloop.train.run import run_training

    config = validate(RunConfig, data, "flags")
    if args.resume and not args.run_dir:
        raise UserError("--resume needs --run-dir: the run folder to continue")
    result = run_training(config, args.run_dir, args.resume, not args.no_progress, label)
    _report(result)
    return 0


def _report(result: Any) -> None:
    from genloop.train.distributed import rank_and_world

    if rank_and_world()[0] != 0:
        return
    val = f", validation loss {result.val_loss:.4f}" if result.val_loss is not None else ""
    print(
        f"{result.steps} steps ({result.stopped}) in {result.seconds / 60:.1f} min: "
        f"loss {result.loss:.4f}{val}, "
        f"{result.tokens_per_s:,.0f} tokens/s, MFU {100 * result.mfu:.0f}%"
    )
    print(f"  model: {result.run_dir / 'model'}; curves: {result.run_dir / 'curves.png'}")


def _train(args: argparse.Namespace) -> int:
    from genloop.config import read_yaml
    from genloop.train.continual import continue_training

    data = read_yaml(args.config)
    if args.continue_from or args.data or args.replay:
        return continue_training(data, args)
    from genloop.config import RunConfig, load_config
    from genloop.train.run import run_training

    config = load_config(RunConfig, args.config, args.overrides)
    if args.resume and not args.run_dir:
        raise UserError("--resume needs --run-dir: the run folder to continue")
    result = run_training(config, args.run_dir, args.resume, not args.no_progress, args.config.stem)
    _report(result)
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    train = {**_schedule(args), "objective": "causal_lm"}
    if args.model:
        train["init_from"] = args.model
    data = {
        "preset": None if args.model else args.preset,
        "data": {"shards": args.data, "seq_len": args.seq_len},
    }
    return _run({**data, "train": train}, args, "pretrain")


def _finetune(args: argparse.Namespace) -> int:
    train: dict[str, Any] = {**_schedule(args), "objective": "sft", "init_from": args.model}
    train["freeze_layers"], train["freeze_embeddings"] = args.freeze_layers, args.freeze_embeddings
    if args.lora:
        train["lora"] = _lora_settings(args)
    data = {"train_file": str(args.data), "seq_len": args.seq_len}
    if args.validation:
        data["validation_file"] = str(args.validation)
    return _run({"data": data, "train": train}, args, "finetune")
