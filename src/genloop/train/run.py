"""A training run from a RunConfig: model (fresh, or from a directory), freezing or LoRA, data for
the objective, the Trainer, and what a run leaves behind under `runs/<id>/`: metrics.jsonl, a PNG of
the curves, checkpoints, the final model directory (or adapter) and summary.json.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from genloop.atomic import atomic_write_text
from genloop.checkpoint import load_model, resolve, save_state
from genloop.config import RunConfig
from genloop.errors import UserError
from genloop.home import runs_dir
from genloop.model import build_model, model_stats
from genloop.preprocess.tokenizer import Tokenizer
from genloop.train import distributed as dist_util
from genloop.train.hardware import check_memory, choose_autocast, matmul_peak
from genloop.train.loop import Trainer, TrainResult
from genloop.train.objectives import OBJECTIVES, LMBatches, ReplayMix
from genloop.train.preference_objectives import PREFERENCE_OBJECTIVES
from genloop.train.state import check_free_space


def new_run_dir(label: str) -> Path:
    return runs_dir() / f"{time.strftime('%Y%m%d-%H%M%S')}-{label}"


def freeze(model: nn.Module, embeddings: bool, first_layers: int) -> None:
    """Transfer learning: keep the embeddings and/or the first K blocks of every stack as they are."""
    if embeddings:
        for p in model.embed.parameters():  # type: ignore[union-attr]
            p.requires_grad_(False)
    for stack in ("encoder", "decoder"):
        blocks = getattr(getattr(model, stack, None), "blocks", None)
        if blocks is None:
            continue
        if first_layers > len(blocks):
            raise UserError(f"freeze_layers={first_layers} but the {stack} has {len(blocks)} blocks")
        for block in blocks[:first_layers]:
            for p in block.parameters():
                p.requires_grad_(False)


def checkpoint_activations(model: nn.Module) -> None:
    """Recompute each block's activations in backward instead of keeping them (less memory, ~30% more
    compute); parameter names are unchanged, so checkpoints stay ordinary model directories."""
    from torch.utils.checkpoint import checkpoint

    for module in model.modules():
        if type(module).__name__ == "Block":
            inner = module.forward
            module.forward = lambda *a, _f=inner, **k: checkpoint(_f, *a, use_reentrant=False, **k)  # type: ignore[method-assign]


def _model_and_tokenizer(config: RunConfig, tokenizer_dir: Path | None) -> tuple[nn.Module, Tokenizer | None]:
    t = config.train
    if t.init_from:
        path = resolve(t.init_from)
        model = load_model(path)
        tokenizer = Tokenizer.load(path) if (path / "tokenizer.json").is_file() else None
        return model, tokenizer
    tokenizer = Tokenizer.load(tokenizer_dir) if tokenizer_dir is not None else None
    cfg = config.model
    if tokenizer is not None and cfg.vocab_size != tokenizer.vocab_size:
        cfg = cfg.model_copy(update={"vocab_size": tokenizer.vocab_size})
    return build_model(cfg), tokenizer


def _data(config: RunConfig, tokenizer: Tokenizer | None, rank: int, world: int) -> tuple[Any, Any]:
    from genloop.data.loader import PackedDataset

    d, t = config.data, config.train
    seq, batch, seed = d.seq_len, t.batch_size // world, t.seed
    if t.batch_size % world:
        raise UserError(f"batch_size {t.batch_size} does not split over {world} processes: use a multiple")
    objective = t.objective
    if objective == "causal_lm":
        if not d.shards:
            raise UserError("causal_lm needs `data.shards` (a folder from `genloop data build`)")
        old_rows = round(batch * d.replay_ratio) if d.replay_shards else 0
        train = LMBatches(PackedDataset(d.shards, "train", seq, batch - old_rows, seed, rank, world))
        if old_rows:
            old = LMBatches(PackedDataset(d.replay_shards, "train", seq, old_rows, seed + 1, rank, world))
            train = ReplayMix(train, old)
        val = LMBatches(PackedDataset(d.shards, "validation", seq, batch, seed, rank, world))
        return train, val
    if objective == "sft":
        from genloop.train.sft_data import SFTDataset

        if not d.train_file or tokenizer is None:
            raise UserError("sft needs `data.train_file` (JSONL) and a model with a tokenizer")
        train = SFTDataset(d.train_file, tokenizer, seq, batch, seed, rank, world, packing=d.packing)
        val_file = d.validation_file
        val = (
            SFTDataset(val_file, tokenizer, seq, batch, seed, rank, world, packing=d.packing)
            if val_file
            else None
        )
        return train, val
    if objective == "span_corruption":
        from genloop.train.span_data import SpanCorruptionDataset

        if not d.shards or tokenizer is None:
            raise UserError("span_corruption needs `data.shards` with their tokenizer")
        start = config.model.decoder_start_token_id
        train = SpanCorruptionDataset(
            d.shards, tokenizer, seq, batch, seed, rank=rank, world_size=world, decoder_start_token_id=start
        )
        return train, None
    if objective in ("dpo", "kto", "reward"):
        from genloop.train.preference_data import KTODataset, PreferenceDataset

        if not d.train_file or tokenizer is None:
            fields = "prompt, completion, label" if objective == "kto" else "prompt, chosen, rejected"
            raise UserError(
                f"{objective} needs `data.train_file` (JSONL of {fields}) and a model with a tokenizer"
            )
        cls = KTODataset if objective == "kto" else PreferenceDataset
        train = cls(d.train_file, tokenizer, seq, batch, seed, rank, world)
        val = cls(d.validation_file, tokenizer, seq, batch, seed, rank, world) if d.validation_file else None
        return train, val
    from genloop.train.classify_data import ClassificationDataset

    if not d.train_file or tokenizer is None:
        raise UserError("classification needs `data.train_file` (JSONL with text and label) and a tokenizer")
    train = ClassificationDataset(d.train_file, tokenizer, seq, batch, seed, rank=rank, world_size=world)
    val = None
    if d.validation_file:
        val = ClassificationDataset(d.validation_file, tokenizer, seq, batch, seed, labels=train.labels,
                                    rank=rank, world_size=world)  # fmt: skip
    return train, val


def _attach_reference(model: nn.Module, t: Any, device: torch.device, datasets: list[Any]) -> None:
    """DPO/KTO reference log-probs, once, before the first step: from `preference.reference_model`,
    or from the starting model itself (with LoRA, the base: the adapters are still zero)."""
    pending = [d for d in datasets if d is not None and d.ref is None]  # rows may carry precomputed ones
    if not pending:
        return
    path = t.preference.reference_model
    reference = load_model(resolve(path)).to(device) if path else model
    autocast = choose_autocast(t.dtype, device)
    train, val = datasets
    if train is not None and train.ref is None:
        train.attach_reference(reference, autocast=autocast, steps=t.max_steps * t.grad_accum)
    if val is not None and val.ref is None:
        val.attach_reference(reference, autocast=autocast, steps=t.eval_batches)


def use_compile(t: Any) -> bool:
    """torch.compile costs about a minute up front and then runs 1.2-1.4x faster here: worth it for a
    long run, not for a short one (or a test)."""
    if isinstance(t.compile, bool):
        return t.compile
    return (t.max_minutes or 0) >= 10 or t.max_steps >= 2000


def _check_memory_first(config: RunConfig, device: torch.device) -> None:
    """Estimate memory from the config alone: building a model too big for the machine is itself
    what would kill the process."""
    from genloop.checkpoint import read_config

    t = config.train
    cfg = read_config(resolve(t.init_from)) if t.init_from else config.model
    params = model_stats(cfg).params
    trainable = params // 50 if t.lora is not None else params
    _, world = dist_util.rank_and_world()
    per_rank = max(1, t.batch_size // world)
    seq = config.data.seq_len
    check_memory(params, trainable, per_rank, seq, cfg.n_layers, cfg.d_model, cfg.vocab_size, device)


def run_training(
    config: RunConfig,
    run_dir: Path | None = None,
    resume: bool = False,
    progress: bool = True,
    label: str = "run",
) -> TrainResult:
    t = config.train
    device = dist_util.local_device(t.device)
    dist_util.setup(device)
    rank, world = dist_util.rank_and_world()
    run_dir = Path(run_dir) if run_dir else new_run_dir(label)
    if world > 1:
        run_dir = dist_util.broadcast_path(run_dir if rank == 0 else None)
    torch.manual_seed(t.seed)  # every rank builds the same initial weights
    tokenizer_dir = None
    if config.data.shards:
        from genloop.data.shards import Shards

        shards = Shards.open(config.data.shards)
        tokenizer_dir = shards.directory / shards.manifest["tokenizer"]["path"]
    _check_memory_first(config, device)
    model, tokenizer = _model_and_tokenizer(config, tokenizer_dir)
    if t.objective == "reward":
        from genloop.train.reward_model import RewardModel

        if t.lora is not None:
            raise UserError("reward models train full weights (or frozen layers): drop the lora settings")
        model = RewardModel(model)  # type: ignore[arg-type]
    freeze(getattr(model, "backbone", model), t.freeze_embeddings, t.freeze_layers)
    lora_config = None
    if t.lora is not None:
        from genloop.model.lora import LoRAConfig, apply_lora

        lora_config = LoRAConfig(**t.lora)
        apply_lora(model, lora_config)
    if t.activation_checkpointing:
        checkpoint_activations(model)
    model.to(device)
    train_data, val_data = _data(config, tokenizer, rank, world)
    if t.objective in ("dpo", "kto"):
        _attach_reference(model, t, device, [train_data, val_data])
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    cfg = model.config  # type: ignore[union-attr]
    check_free_space(run_dir, int(params * 4 * 2 + trainable * 12))
    autocast = choose_autocast(t.dtype, device)
    peak = matmul_peak(device.type, autocast or torch.float32) * world
    flops = model_stats(cfg, config.data.seq_len).train_flops_per_token
    if use_compile(t):
        model.compile()
    torch.manual_seed(t.seed + 1 + rank)  # dropout differs per rank, reproducibly
    save_to = _saver(
        cfg, tokenizer, lora_config, {"run": str(run_dir), "config": config.model_dump(mode="json")}
    )
    if t.objective in PREFERENCE_OBJECTIVES:
        objective, rows = (
            PREFERENCE_OBJECTIVES[t.objective](t.preference),
            2,
        )  # a pair or a KL row per example
    else:
        objective, rows = OBJECTIVES[t.objective], 1
    trainer = Trainer(
        model, objective, train_data, val_data, t, run_dir, save_to,
        tokens_per_step=rows * t.batch_size * t.grad_accum * config.data.seq_len, flops_per_token=flops,
        peak_flops=peak, progress=progress,
    )  # fmt: skip
    if rank == 0:
        atomic_write_text(run_dir / "config.yaml", json.dumps(config.model_dump(mode="json"), indent=2))
    if resume and trainer.resume() is None and rank == 0:
        print(f"no checkpoint in {run_dir} yet: starting from step 0")
    result = trainer.fit()
    final_state, _ = dist_util.full_state(trainer.model, trainer.optimizer)  # every rank takes part
    if rank == 0:
        save_to(trainer.raw_model, run_dir / "model", final_state)
        trainer.metrics.plot(run_dir / "curves.png", f"{label}: {cfg.arch}, {params / 1e6:.1f}M parameters")
        summary = {**asdict(result), "params": params, "trainable": trainable, "autocast": str(autocast)}
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2, default=str))
    dist_util.barrier()
    return result


def _saver(cfg: Any, tokenizer: Tokenizer | None, lora_config: Any, provenance: dict[str, Any]) -> Any:
    """How a model is written: an ordinary model directory, or a PEFT-layout adapter for LoRA."""

    def save(model: nn.Module, folder: Path, state: dict[str, Tensor] | None) -> None:
        if hasattr(model, "backbone"):  # a reward model: the decoder's directory plus the score head
            model.save(folder, tokenizer, provenance)  # type: ignore[operator]
            return
        if lora_config is not None:
            from genloop.checkpoint.adapter import save_adapter

            save_adapter(model, lora_config, folder)
            return
        full = state if state is not None else model.state_dict()
        unique = {k: v for k, v in full.items() if not (cfg.tie_embeddings and k == "lm_head.weight")}
        save_state(unique, cfg, folder, tokenizer=tokenizer, provenance=provenance)

    return save


def world_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))
