"""LoRA adapters on disk in PEFT's layout: `adapter_config.json` + `adapter_model.safetensors`, tensors
named `base_model.model.<module>.lora_A.weight` / `.lora_B.weight`.

For the Llama (Llama, Qwen2, Mistral) and GPT-2 families the module paths are the family's Hugging
Face paths, so `peft.PeftModel.from_pretrained(transformers_model, folder)` loads what genloop saves
and `load_adapter` loads what PEFT saves. Other shapes (encoder-decoder, encoder, unusual decoders:
`family(cfg) == "genloop"`) are saved in the same layout with genloop's module paths and short names:
genloop reads them back, PEFT has no model to put them on.

GPT-2 fuses q, k and v into one `c_attn` projection. genloop keeps one adapter per projection, so
they are written as one `c_attn` adapter: side by side (rank = sum of ranks, a block-diagonal B, the
rank recorded in `rank_pattern`) or, when they share one A, as that A with the B rows stacked. The
safetensors metadata records the blocks so `load_adapter` splits them back exactly; an adapter PEFT
made has no such record and loads as one shared A for q, k and v, which computes the same update.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from genloop.atomic import atomic_write_text
from genloop.checkpoint.hf import family, hf_name
from genloop.config import ModelConfig
from genloop.errors import CheckpointError, UserError
from genloop.model.lora import (
    TARGETS,
    LoRAConfig,
    LoRALinear,
    check_no_lora,
    freeze_all_but_lora,
    lora_modules,
    targetable_modules,
    wrap_module,
)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
BLOCKS_KEY = "genloop_lora_blocks"  # safetensors metadata: how a fused c_attn adapter splits into q/k/v
_TENSOR = re.compile(r"base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])\.weight")
_TASK = {"decoder": "CAUSAL_LM", "encoder-decoder": "SEQ_2_SEQ_LM", "encoder": "FEATURE_EXTRACTION"}
_Piece = tuple[str, Tensor, Tensor, int, float]  # genloop path, A, B, rank, alpha


def _hf_module(path: str, cfg: ModelConfig) -> str:
    """The family's module path for a genloop projection (GPT-2's q, k, v all give `...attn.c_attn`)."""
    return hf_name(f"{path}.weight", cfg).split(" ", 1)[0].removesuffix(".weight")


def _short(hf_path: str, fam: str) -> str:
    """A target_modules entry that picks this kind of module in every layer, as PEFT matches them."""
    parts = hf_path.split(".")
    if fam == "gpt2" and parts[-1] == "c_proj":
        return ".".join(parts[-2:])  # attn.c_proj vs mlp.c_proj
    return parts[-1]


def _groups(model: nn.Module, cfg: ModelConfig) -> dict[str, list[str]]:
    """Family module path -> the genloop projections it holds (three for GPT-2's c_attn, else one)."""
    out: dict[str, list[str]] = {}
    for path in targetable_modules(model):
        out.setdefault(_hf_module(path, cfg), []).append(path)
    return out


# ---------------------------------------------------------------- save


def _fused_tensors(
    members: list[str], wrapped: Mapping[str, LoRALinear], model: nn.Module
) -> tuple[Tensor, Tensor, float, list[tuple[str, int]] | None]:
    """One c_attn adapter (A, B, alpha) from the wrapped ones among q, k, v, and its block record
    (None when they share one A, which PEFT's own c_attn adapter also is)."""
    outs = [model.get_submodule(p).out_features for p in members]
    rows = {p: sum(outs[:i]) for i, p in enumerate(members)}  # first row of each part in c_attn
    mods = [(p, wrapped[p]) for p in members if p in wrapped]
    first = mods[0][1]
    a0 = first.lora_A.weight.detach()
    shared = all(
        m.r == first.r and m.scaling == first.scaling and torch.equal(m.lora_A.weight, a0) for _, m in mods
    )
    rank = first.r if shared else sum(m.r for _, m in mods)
    b = a0.new_zeros(sum(outs), rank)
    a_parts, col = [], 0
    for path, m in mods:
        r0 = rows[path]
        width = rank if shared else m.r
        # a member with another scale than the first is rescaled into B: same update, one alpha
        b[r0 : r0 + m.out_features, col : col + width] = m.lora_B.weight.detach() * (
            m.scaling / first.scaling
        )
        if not shared:
            a_parts.append(m.lora_A.weight.detach())
            col += m.r
    a = a0 if shared else torch.cat(a_parts)
    blocks = None if shared else [(p.rpartition(".")[2], m.r) for p, m in mods]
    return a, b, first.scaling * rank, blocks


def save_adapter(
    model: nn.Module, config: LoRAConfig, directory: str | Path, base_model: str | None = None
) -> Path:
    """Write the model's LoRA tensors and a PEFT `adapter_config.json` into `directory` (created if
    needed; each file replaced atomically). `base_model` is recorded as `base_model_name_or_path`."""
    wrapped = lora_modules(model)
    if not wrapped:
        raise UserError("the model has no LoRA adapters to save; call apply_lora(model, config) first")
    cfg: ModelConfig = model.config  # type: ignore[assignment]
    fam = family(cfg)
    tensors: dict[str, Tensor] = {}
    rank_pattern: dict[str, int] = {}
    alpha_pattern: dict[str, float] = {}
    blocks: dict[str, list[tuple[str, int]]] = {}
    chosen: dict[str, list[str]] = {}  # short name -> chosen family paths (to write short names if all)
    groups = _groups(model, cfg)
    for hf_path, members in groups.items():
        if not any(p in wrapped for p in members):
            continue
        if len(members) > 1:  # GPT-2 c_attn
            a, b, alpha, layout = _fused_tensors(members, wrapped, model)
            if layout is not None:
                blocks[hf_path] = layout
        else:
            m = wrapped[members[0]]
            a, b, alpha = m.lora_A.weight.detach(), m.lora_B.weight.detach(), m.alpha
        rank = a.shape[0]
        if rank != config.r:
            rank_pattern[hf_path] = rank
        if alpha != config.alpha:
            alpha_pattern[hf_path] = alpha
        tensors[f"{PREFIX}{hf_path}.lora_A.weight"] = a.cpu().contiguous()
        tensors[f"{PREFIX}{hf_path}.lora_B.weight"] = b.cpu().contiguous()
        chosen.setdefault(_short(hf_path, fam), []).append(hf_path)
    targets: list[str] = []
    for short, paths in chosen.items():
        every = [p for p in groups if _short(p, fam) == short]
        targets += [short] if len(paths) == len(every) else paths  # partial: name each module exactly
    peft_config = {
        "task_type": _TASK[cfg.arch],
        "peft_type": "LORA",
        "auto_mapping": None,
        "base_model_name_or_path": base_model,
        "revision": None,
        "inference_mode": True,
        "r": config.r,
        "target_modules": sorted(targets),
        "lora_alpha": _number(config.alpha),
        "lora_dropout": config.dropout,
        "fan_in_fan_out": fam == "gpt2",  # GPT-2's Conv1D stores weights [in, out]
        "bias": config.bias,
        "use_rslora": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": _compact(rank_pattern, chosen),
        "alpha_pattern": _compact(alpha_pattern, chosen),
        "megatron_config": None,
        "megatron_core": "megatron.core",
        "loftq_config": {},
        "use_dora": False,
        "layer_replication": None,
    }
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt"}
    if blocks:
        metadata[BLOCKS_KEY] = json.dumps(blocks)
    tmp = out / f".{ADAPTER_WEIGHTS}.{uuid.uuid4().hex}.tmp"
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, out / ADAPTER_WEIGHTS)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    atomic_write_text(out / ADAPTER_CONFIG, json.dumps(peft_config, indent=2) + "\n")
    return out


def _compact(pattern: Mapping[str, Any], chosen: Mapping[str, list[str]]) -> dict[str, Any]:
    """Per-module exceptions, keyed by the short name where all modules of that kind agree (the
    usual case: GPT-2's c_attn in every layer), else by the full path, as PEFT matches the keys."""
    out: dict[str, Any] = {}
    for short, paths in chosen.items():
        values = {pattern.get(p) for p in paths}
        if values == {None}:
            continue
        if len(values) == 1:
            out[short] = _number(values.pop())
        else:
            out |= {p: _number(pattern[p]) for p in paths if p in pattern}
    return out


def _number(x: float) -> float | int:
    """16.0 -> 16: the config reads as PEFT writes it."""
    return int(x) if float(x).is_integer() else x


# ---------------------------------------------------------------- load


def _read_config(p: Path) -> dict[str, Any]:
    f = p / ADAPTER_CONFIG
    if not f.is_file():
        raise CheckpointError(
            f"{p} has no {ADAPTER_CONFIG}: not a LoRA adapter folder (write one with save_adapter)"
        )
    try:
        raw = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{f} is not valid JSON ({exc}); save the adapter again") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{f} must hold a JSON object")
    if raw.get("peft_type") != "LORA":
        raise CheckpointError(f"{f}: peft_type is {raw.get('peft_type')!r}; genloop loads LORA adapters only")
    unsupported = {
        "use_dora": bool(raw.get("use_dora")),
        "use_rslora": bool(raw.get("use_rslora")),
        "lora_bias": bool(raw.get("lora_bias")),
        "modules_to_save": bool(raw.get("modules_to_save")),
        "target_parameters": bool(raw.get("target_parameters")),
        "layer_replication": bool(raw.get("layer_replication")),
        "bias": raw.get("bias", "none") != "none",
    }
    for key, used in unsupported.items():
        if used:
            raise CheckpointError(f"{f}: '{key}' = {raw[key]!r} is not supported; genloop loads plain LoRA")
    if not isinstance(raw.get("r"), int) or raw["r"] <= 0 or not raw.get("target_modules"):
        raise CheckpointError(f"{f} needs a positive integer 'r' and 'target_modules'")
    return raw


def _read_tensors(p: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    f = p / ADAPTER_WEIGHTS
    if not f.is_file():
        raise CheckpointError(f"{p} has no {ADAPTER_WEIGHTS}; copy the whole adapter folder")
    try:
        with safe_open(str(f), framework="pt") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}, fh.metadata() or {}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{f} is not a readable safetensors file ({exc}); save it again") from None


def _targeted(raw: Mapping[str, Any], module: str) -> bool:
    """PEFT's rule: a regex string must match the whole path; list entries match a path or its end."""
    targets = raw["target_modules"]
    if targets == "all-linear":
        hit = True
    elif isinstance(targets, str):
        hit = re.fullmatch(targets, module) is not None
    else:
        hit = any(module == t or module.endswith("." + t) for t in targets)
    layers = raw.get("layers_to_transform")
    if hit and layers is not None:
        m = re.search(r"\.(\d+)\.", module)
        hit = m is not None and int(m[1]) in ([layers] if isinstance(layers, int) else layers)
    return hit


def _pattern(patterns: Mapping[str, Any] | None, module: str, default: Any) -> Any:
    """PEFT's rank_pattern / alpha_pattern lookup: the first key that matches the end of the path."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def load_adapter(model: nn.Module, directory: str | Path) -> LoRAConfig:
    """Add the adapter in `directory` (genloop- or PEFT-made) to `model`, checking every tensor's name
    and shape; only the adapter stays trainable. Returns its config in genloop's names."""
    p = Path(directory)
    raw = _read_config(p)
    found, metadata = _read_tensors(p)
    check_no_lora(model)
    cfg: ModelConfig = model.config  # type: ignore[assignment]
    groups = {k: v for k, v in _groups(model, cfg).items() if _targeted(raw, k)}
    if not groups:
        raise CheckpointError(
            f"{p / ADAPTER_CONFIG}: target_modules {raw['target_modules']} match no projection of this "
            "model; the adapter was made for another architecture"
        )
    pairs: dict[str, dict[str, Tensor]] = {}
    for name, tensor in found.items():
        m = _TENSOR.fullmatch(name)
        if m is None or m["module"] not in groups:
            raise CheckpointError(
                f"{p / ADAPTER_WEIGHTS}: unexpected tensor '{name}' (no targeted module of this model "
                "has that name); the adapter does not match the base model"
            )
        pairs.setdefault(m["module"], {})[m["ab"]] = tensor
    try:
        blocks = json.loads(metadata.get(BLOCKS_KEY, "{}"))
    except json.JSONDecodeError:
        raise CheckpointError(
            f"{p / ADAPTER_WEIGHTS}: metadata '{BLOCKS_KEY}' is not JSON; save it again"
        ) from None
    plan: list[_Piece] = []  # everything is checked before the model is touched: no half-loaded model
    for hf_path, members in groups.items():
        got = pairs.get(hf_path, {})
        for ab in "AB":
            if ab not in got:
                raise CheckpointError(
                    f"{p / ADAPTER_WEIGHTS}: tensor '{PREFIX}{hf_path}.lora_{ab}.weight' is missing; "
                    "the file is incomplete or was saved for another model"
                )
        rank = int(_pattern(raw.get("rank_pattern"), hf_path, raw["r"]))
        alpha = float(_pattern(raw.get("alpha_pattern"), hf_path, raw.get("lora_alpha", 8)))
        outs = [model.get_submodule(m).out_features for m in members]
        d_in = model.get_submodule(members[0]).in_features
        for ab, want in (("A", (rank, d_in)), ("B", (sum(outs), rank))):
            if tuple(got[ab].shape) != want:
                raise CheckpointError(
                    f"{p / ADAPTER_WEIGHTS}: tensor '{PREFIX}{hf_path}.lora_{ab}.weight' has shape "
                    f"{list(got[ab].shape)}, the model and r={rank} imply {list(want)}"
                )
        plan += _split(members, outs, got["A"], got["B"], alpha, blocks.get(hf_path), p)
    names = {path.rpartition(".")[2] for path, *_ in plan}
    try:
        config = LoRAConfig(
            r=raw["r"],
            alpha=raw.get("lora_alpha", 8),
            dropout=raw.get("lora_dropout") or 0.0,
            target_modules=[t for t in TARGETS if t in names],
        )
    except UserError as exc:
        raise CheckpointError(f"{p / ADAPTER_CONFIG}: {exc}") from None
    with torch.no_grad():
        for path, a, b, rank, alpha in plan:
            wrapped = wrap_module(model, path, rank, alpha, config.dropout)
            wrapped.lora_A.weight.copy_(a)
            wrapped.lora_B.weight.copy_(b)
    freeze_all_but_lora(model)
    return config


def _split(
    members: list[str], outs: list[int], a: Tensor, b: Tensor, alpha: float, layout: Any, p: Path
) -> list[_Piece]:
    """Each genloop projection's (A, B): one member takes all; the q, k, v of a fused c_attn take
    their rows of B and either their recorded block of A (genloop-made) or the shared A (PEFT-made);
    a block of width w keeps the scale alpha / rank with alpha * w / rank."""
    rank = a.shape[0]
    if len(members) == 1:
        return [(members[0], a, b, rank, alpha)]
    by_part = {m.rpartition(".")[2]: (m, sum(outs[:i]), sum(outs[: i + 1])) for i, m in enumerate(members)}
    if layout is None:
        cols = [(part, 0, rank) for part in by_part]
    else:
        try:
            widths = [int(width) for _, width in layout]
            starts = [sum(widths[:i]) for i in range(len(widths) + 1)]
            cols = [(str(part), starts[i], starts[i + 1]) for i, (part, _) in enumerate(layout)]
        except (TypeError, ValueError):
            cols = []
        if not cols or starts[-1] != rank or any(part not in by_part for part, _, _ in cols):
            raise CheckpointError(
                f"{p / ADAPTER_WEIGHTS}: metadata '{BLOCKS_KEY}' does not fit the tensors; save it again"
            )
    out: list[_Piece] = []
    for part, c0, c1 in cols:
        path, r0, r1 = by_part[part]
        out.append((path, a[c0:c1], b[r0:r1, c0:c1], c1 - c0, alpha * (c1 - c0) / rank))
    return out
