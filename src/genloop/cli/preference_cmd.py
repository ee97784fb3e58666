"""`genloop dpo`, `genloop kto`, `genloop rm`: learning from preferences by hand, on JSONL files.

The files are what `genloop feedback export --format preference|kto` writes (TRL's field names); the
runs are ordinary training runs (`runs/<id>/`, checkpoints, `--resume`, torchrun) with the DPO, KTO
or reward-model objective.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from genloop.cli.train_cmd import _common, _lora_flags, _lora_settings, _run, _schedule, _schedule_flags


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    pairs = "JSONL of {prompt, chosen, rejected} (strings or messages, as `genloop feedback export` writes)"
    dpo = sub.add_parser(
        "dpo", help="direct preference optimization (DPO or IPO) on preference pairs",
        description="Raise the chosen answer's likelihood over the rejected one's, relative to a frozen "
        "reference (the starting model unless --reference is given).",
    )  # fmt: skip
    _model_and_data(dpo, pairs)
    dpo.add_argument(
        "--loss", choices=("sigmoid", "ipo"), default="sigmoid", help="DPO's sigmoid loss or IPO"
    )
    dpo.add_argument(
        "--label-smoothing", type=float, default=0.0, help="dpo: assumed share of mislabeled pairs (cDPO)"
    )
    _reference(dpo)
    _lora_flags(dpo)
    _schedule_flags(dpo, steps=100, lr=5e-6, batch=4, seq=512)
    _common(dpo)
    dpo.set_defaults(handler=_dpo)

    kto = sub.add_parser(
        "kto", help="KTO on single thumbs-up/down answers",
        description="Kahneman-Tversky optimization: push liked answers up and disliked ones down, "
        "each against a reference point estimated from mismatched prompt/answer pairs.",
    )  # fmt: skip
    _model_and_data(kto, "JSONL of {prompt, completion, label} (label true = thumbs up)")
    kto.add_argument("--desirable-weight", type=float, default=1.0, help="weight of thumbs-up examples")
    kto.add_argument("--undesirable-weight", type=float, default=1.0, help="weight of thumbs-down examples")
    _reference(kto)
    _lora_flags(kto)
    _schedule_flags(kto, steps=100, lr=5e-6, batch=4, seq=512)
    _common(kto)
    kto.set_defaults(handler=_kto)

    rm = sub.add_parser(
        "rm", help="train a reward model (scalar head, Bradley-Terry) on preference pairs",
        description="A copy of MODEL with a scalar score head, trained so that chosen answers score "
        "above rejected ones; `genloop rl --reward-model` and `genloop compare` use it.",
    )  # fmt: skip
    _model_and_data(rm, pairs)
    rm.add_argument("--freeze-layers", type=int, default=0, help="freeze the first K blocks")
    _schedule_flags(rm, steps=100, lr=1e-5, batch=4, seq=512)
    _common(rm)
    rm.set_defaults(handler=_rm)


def _model_and_data(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("model", help="model directory or registered name to start from")
    p.add_argument("--data", required=True, type=Path, help=what)
    p.add_argument("--validation", type=Path, help="held-out file of the same kind, for validation loss")


def _reference(p: argparse.ArgumentParser) -> None:
    p.add_argument("--beta", type=float, default=0.1, help="pull towards the reference (default 0.1)")
    p.add_argument(
        "--reference",
        metavar="MODEL",
        help="reference model for the log-ratios (default: MODEL itself, frozen)",
    )


def _config(args: argparse.Namespace, objective: str, preference: dict[str, Any]) -> dict[str, Any]:
    train: dict[str, Any] = {**_schedule(args), "objective": objective, "init_from": args.model}
    train["preference"] = preference
    if getattr(args, "lora", False):
        train["lora"] = _lora_settings(args)
    if getattr(args, "freeze_layers", 0):
        train["freeze_layers"] = args.freeze_layers
    data = {"train_file": str(args.data), "seq_len": args.seq_len}
    if args.validation:
        data["validation_file"] = str(args.validation)
    return {"data": data, "train": train}


def _dpo(args: argparse.Namespace) -> int:
    preference = {"beta": args.beta, "loss_type": args.loss, "label_smoothing": args.label_smoothing}
    preference["reference_model"] = args.reference
    return _run(_config(args, "dpo", preference), args, "dpo")


def _kto(args: argparse.Namespace) -> int:
    preference = {"beta": args.beta, "reference_model": args.reference}
    preference |= {"desirable_weight": args.desirable_weight, "undesirable_weight": args.undesirable_weight}
    return _run(_config(args, "kto", preference), args, "kto")


def _rm(args: argparse.Namespace) -> int:
    return _run(_config(args, "reward", {}), args, "rm")
