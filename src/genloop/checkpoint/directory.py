"""The model directory every stage reads and writes (DESIGN.md): config.json, model.safetensors,
tokenizer files, generation_config.json and genloop.json. Writes are atomic: everything goes into a
temporary sibling folder that is renamed into place only when complete.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from genloop import __version__
from genloop.atomic import atomic_dir
from genloop.checkpoint.hf import config_from_hf, config_to_hf, family, hf_name, state_from_hf, state_to_hf
from genloop.config import ModelConfig
from genloop.errors import CheckpointError
from genloop.model import Model, build_model
from genloop.model.layers import Rotary

if TYPE_CHECKING:
    from genloop.preprocess import Tokenizer

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
_FLOAT_DTYPES = {torch.float32, torch.float16, torch.bfloat16, torch.float64}


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _unique_state(model: torch.nn.Module) -> dict[str, Tensor]:
    """state_dict without the tied output head (safetensors stores each storage once)."""
    state = model.state_dict()
    if getattr(model.config, "tie_embeddings", False) and "lm_head.weight" in state:
        state.pop("lm_head.weight")
    return {k: v.detach().contiguous() for k, v in state.items()}


def save_model(
    model: Model,
    path: str | Path,
    *,
    tokenizer: Tokenizer | None = None,
    provenance: Mapping[str, Any] | None = None,
    generation: Mapping[str, Any] | None = None,
) -> Path:
    """Write `model` (and its tokenizer) as a model directory, replacing `path` atomically."""
    return save_state(
        _unique_state(model),
        model.config,
        path,
        tokenizer=tokenizer,
        provenance=provenance,
        generation=generation,
    )


def save_state(
    state: Mapping[str, Tensor],
    cfg: ModelConfig,
    path: str | Path,
    *,
    tokenizer: Tokenizer | None = None,
    provenance: Mapping[str, Any] | None = None,
    generation: Mapping[str, Any] | None = None,
) -> Path:
    """Write genloop-named weights + config as a model directory without building the model
    (importers use this: a 135M model need not be initialized only to be overwritten)."""
    check_state(_unique_state(_skeleton(cfg)), state, "weights to save", cfg)
    dtype = next(iter(state.values())).dtype
    with atomic_dir(path) as tmp:
        _write_json(tmp / "config.json", config_to_hf(cfg, dtype))
        tensors = {k: v.contiguous() for k, v in state_to_hf(state, cfg).items()}
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
        gen = {
            "bos_token_id": cfg.bos_token_id,
            "eos_token_id": cfg.eos_token_id,
            "pad_token_id": cfg.pad_token_id,
        }
        if cfg.arch == "encoder-decoder":
            gen["decoder_start_token_id"] = cfg.decoder_start_token_id
        merged = {k: v for k, v in {**gen, **(generation or {})}.items() if v is not None}
        _write_json(tmp / "generation_config.json", merged)
        info = {
            "genloop_version": __version__,
            "created": time.time(),
            "family": family(cfg),
            **(provenance or {}),
        }
        _write_json(tmp / "genloop.json", info)
        if tokenizer is not None:
            tokenizer.save(tmp)
    return Path(path)


def _skeleton(cfg: ModelConfig) -> Model:
    """The model's module tree with shapes but no memory: for checking names and building fast."""
    with torch.device("meta"):
        return build_model(cfg)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(
            f"{path} is missing: not a model directory (make one with `genloop model init`)"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{path} is not valid JSON ({exc}); restore it from the model's source"
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def read_config(path: str | Path) -> ModelConfig:
    """The ModelConfig of a model directory, from its config.json."""
    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"model directory not found: {p}")
    return config_from_hf(_read_json(p / "config.json"), str(p / "config.json"))


def _weight_files(p: Path) -> list[Path]:
    if (p / WEIGHTS).is_file():
        return [p / WEIGHTS]
    if (p / WEIGHTS_INDEX).is_file():
        shards = sorted(set(_read_json(p / WEIGHTS_INDEX).get("weight_map", {}).values()))
        missing = [s for s in shards if not (p / s).is_file()]
        if missing or not shards:
            raise CheckpointError(
                f"{p / WEIGHTS_INDEX} names shard '{missing[0] if missing else '?'}' "
                "that is not in the directory; copy all shards"
            )
        return [p / s for s in shards]
    raise CheckpointError(f"{p} has no {WEIGHTS} (nor {WEIGHTS_INDEX}); the weights were not saved or copied")


def read_weights(p: Path) -> dict[str, Tensor]:
    """All tensors of a model directory, single-file or sharded, without building a model."""
    out: dict[str, Tensor] = {}
    for f in _weight_files(p):
        try:
            with safe_open(str(f), framework="pt") as fh:
                for k in fh.keys():  # noqa: SIM118 - safe_open is not a dict
                    out[k] = fh.get_tensor(k)
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(
                f"{f} is not a readable safetensors file ({exc}); re-save or re-download it"
            ) from None
    return out


def check_state(
    expected: Mapping[str, Tensor], found: Mapping[str, Tensor], where: str, cfg: ModelConfig | None = None
) -> None:
    """Names, shapes and dtypes of `found` against the model's; the first mismatch is the message,
    naming the tensor as it is called in the files."""

    def shown(name: str) -> str:
        return hf_name(name, cfg) if cfg is not None else name

    for name in expected:
        if name not in found:
            raise CheckpointError(
                f"{where}: tensor '{shown(name)}' is missing (the weights do not match config.json)"
            )
    for name, got in found.items():
        want = expected.get(name)
        if want is None:
            raise CheckpointError(
                f"{where}: unexpected tensor '{name}' (the weights do not match config.json)"
            )
        if tuple(got.shape) != tuple(want.shape):
            raise CheckpointError(
                f"{where}: tensor '{shown(name)}' has shape {list(got.shape)}, "
                f"config.json implies {list(want.shape)}"
            )
        if got.dtype not in _FLOAT_DTYPES:
            raise CheckpointError(
                f"{where}: tensor '{shown(name)}' has dtype "
                f"{str(got.dtype).removeprefix('torch.')}, expected a floating-point type"
            )


def load_model(
    path: str | Path, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> Model:
    """Build the model a directory describes and fill it with its weights, checked tensor by tensor."""
    p = Path(path)
    cfg = read_config(p)
    found = state_from_hf(read_weights(p), cfg)
    model = _skeleton(cfg)
    check_state(_unique_state(model), found, str(p), cfg)
    model.load_state_dict(found, strict=False, assign=True)  # adopt the loaded tensors, no copy
    if getattr(model, "lm_head", None) is not None and cfg.tie_embeddings:
        model.lm_head.weight = model.embed.tokens.weight
    for module in model.modules():
        if isinstance(module, Rotary):
            module.reset_buffers(torch.device("cpu"))
    first = next(iter(found.values()))
    model.to(device=device, dtype=dtype or first.dtype)
    return model.eval()


def load_generation_config(path: str | Path) -> dict[str, Any]:
    f = Path(path) / "generation_config.json"
    return _read_json(f) if f.is_file() else {}
