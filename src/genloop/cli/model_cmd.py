"""`genloop model`: describe a preset or model directory, and create randomly initialized models."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from genloop.config import ModelConfig

# torch and the model library are imported inside the handlers: `genloop --help` should be instant.

MODEL_HELP = "a preset name (see `genloop model presets`), a model directory, or a registered model name"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "model",
        help="describe presets and model directories, create random models",
        description="Inspect model shapes and create randomly initialized model directories.",
    )
    cmds = p.add_subparsers(dest="model_command", metavar="ACTION", required=True)

    info = cmds.add_parser(
        "info",
        help="layers, heads, parameters, FLOPs/token and memory of a model",
        description="Print the shape and cost of a preset or a model directory.",
    )
    info.add_argument("model", metavar="PRESET|DIR", help=MODEL_HELP)
    info.add_argument(
        "overrides", nargs="*", metavar="key=value", help="model config overrides, e.g. n_layers=4"
    )
    info.add_argument(
        "--context",
        type=int,
        default=None,
        metavar="N",
        help="context length for the attention FLOPs (default: the model's max_seq_len)",
    )
    info.set_defaults(handler=_info)

    init = cmds.add_parser(
        "init",
        help="write a randomly initialized model directory",
        description="Create a model directory (config.json, model.safetensors, ...) "
        "with random weights from a preset or a model YAML.",
    )
    init.add_argument(
        "preset", metavar="PRESET|CONFIG.yaml", help="preset name, or a YAML file of model keys (ModelConfig)"
    )
    init.add_argument("out", metavar="DIR", help="directory to write; replaced atomically if it exists")
    init.add_argument(
        "overrides", nargs="*", metavar="key=value", help="model config overrides, e.g. n_layers=4"
    )
    init.add_argument("--seed", type=int, default=0, help="random seed for the weights (default 0)")
    init.add_argument(
        "--tokenizer",
        metavar="DIR",
        default=None,
        help="tokenizer directory to bundle; sets vocab_size and bos/eos/pad ids from it",
    )
    init.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default="float32",
        help="dtype of the saved weights (default float32)",
    )
    init.set_defaults(handler=_init)

    check = cmds.add_parser(
        "check",
        help="load a model directory and verify every tensor",
        description="Load the weights of a model directory and check names, shapes and "
        "dtypes against its config.json.",
    )
    check.add_argument("model", metavar="MODEL", help="a model directory or a registered model name")
    check.set_defaults(handler=_check)

    presets = cmds.add_parser(
        "presets",
        help="list the built-in model presets",
        description="List every preset with its parameter count.",
    )
    presets.set_defaults(handler=_presets)


def model_config(spec: str, overrides: list[str]) -> tuple[ModelConfig, str]:
    """Config for a preset name, a model YAML, or a model directory / registry name (+ overrides)."""
    from genloop.checkpoint import read_config, resolve
    from genloop.config import ModelConfig, load_config, merge, parse_overrides, validate
    from genloop.errors import CheckpointError
    from genloop.model.presets import PRESETS

    if spec in PRESETS:
        return load_config(ModelConfig, None, overrides, base=PRESETS[spec]), f"preset {spec}"
    if spec.endswith((".yaml", ".yml")):
        return load_config(ModelConfig, spec, overrides), spec
    try:
        path = resolve(spec)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; presets: {', '.join(PRESETS)}") from None
    cfg = read_config(path)
    if overrides:
        cfg = validate(ModelConfig, merge(cfg.model_dump(), parse_overrides(overrides)), str(path))
    return cfg, str(path)


def _info(args: argparse.Namespace) -> int:
    print_info(args.model, args.overrides, args.context)
    return 0


def print_info(spec: str, overrides: list[str] | None = None, context: int | None = None) -> None:
    """The `model info` table for a preset, YAML, directory or registered name."""
    from genloop.checkpoint import family
    from genloop.model import model_stats
    from genloop.model.stats import human

    cfg, source = model_config(spec, overrides or [])
    s = model_stats(cfg, context)
    rows = [
        ("source", source),
        ("assembly", f"{cfg.arch} ({family(cfg)} layout)"),
        (
            "layers",
            f"{cfg.n_layers}"
            + (f" encoder + {cfg.decoder_layers} decoder" if cfg.arch == "encoder-decoder" else ""),
        ),
        ("width", f"d_model {cfg.d_model}, d_ff {cfg.d_ff} ({cfg.mlp})"),
        ("heads", f"{cfg.n_heads} query / {cfg.kv_heads} key-value, head_dim {cfg.dim_per_head}"),
        (
            "positions",
            f"{cfg.pos_emb}"
            + (f" (theta {cfg.rope_theta:g})" if cfg.pos_emb == "rope" else "")
            + f", max {cfg.max_seq_len}",
        ),
        (
            "norm",
            f"{cfg.norm} (eps {cfg.norm_eps:g}), output head {'tied' if cfg.tie_embeddings else 'untied'}",
        ),
        ("vocab", f"{cfg.vocab_size}"),
        ("parameters", f"{s.params:,} ({human(s.params)}); non-embedding {s.non_embedding_params:,}"),
        (
            "FLOPs/token",
            f"{human(s.flops_per_token)} forward, {human(s.train_flops_per_token)} training "
            f"(context {s.context})",
        ),
        ("memory", f"{human(s.bytes_at(4), 'B')} fp32, {human(s.bytes_at(2), 'B')} bf16 (weights only)"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def _init(args: argparse.Namespace) -> int:
    import torch

    from genloop.checkpoint import family, save_model
    from genloop.model import build_model, model_stats
    from genloop.model.stats import human
    from genloop.preprocess import Tokenizer

    overrides = list(args.overrides)
    tokenizer = Tokenizer.load(args.tokenizer) if args.tokenizer else None
    if tokenizer is not None:
        ids = {
            "vocab_size": tokenizer.vocab_size,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
        given = {o.partition("=")[0] for o in overrides}
        overrides = [
            f"{k}={'null' if v is None else v}" for k, v in ids.items() if k not in given
        ] + overrides
    cfg, _ = model_config(args.preset, overrides)
    torch.manual_seed(args.seed)
    model = build_model(cfg).to(getattr(torch, args.dtype))
    out = save_model(
        model,
        Path(args.out),
        tokenizer=tokenizer,
        provenance={"preset": args.preset, "seed": args.seed, "parent": None},
    )
    print(f"wrote {out} ({human(model_stats(cfg).params)} parameters, {args.dtype}, {family(cfg)} layout)")
    return 0


def _check(args: argparse.Namespace) -> int:
    from genloop.checkpoint import load_model, resolve
    from genloop.model.stats import human

    path = resolve(args.model)
    model = load_model(path)
    n = sum(p.numel() for p in model.parameters())
    print(f"ok: {path} loads ({human(n)} parameters, {str(model.dtype).removeprefix('torch.')})")
    return 0


def _presets(args: argparse.Namespace) -> int:
    from genloop.config import ModelConfig
    from genloop.model import PRESETS, model_stats
    from genloop.model.stats import human

    for name, raw in PRESETS.items():
        cfg = ModelConfig.model_validate(raw)
        print(f"{name:<14} {cfg.arch:<16} {human(model_stats(cfg).params):>7} params")
    return 0
