"""LoRA (low-rank adaptation): train two small matrices beside each frozen projection instead of the
projection itself, so fine-tuning a model costs a fraction of its optimizer memory and the result is a
file of a few megabytes (saved in PEFT's layout by `genloop.checkpoint.adapter`).

`W x` becomes `W x + B A x * alpha / r` with A [r, in] and B [out, r]; B starts at zero, so a freshly
wrapped model computes exactly what the base model computes. `merge_lora` folds `B A * alpha / r` into
W for serving and export, after which the model is an ordinary one again.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import ConfigDict, Field, ValidationError, field_validator
from torch import Tensor, nn

from genloop.config import Section, _describe
from genloop.errors import ConfigError, UserError

TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
"""Projections LoRA can wrap, by genloop's module names (attention: q k v o; MLP: gate up down)."""

# Hugging Face names a user may know from PEFT configs, each standing for one or more genloop modules.
_ALIASES: dict[str, tuple[str, ...]] = {
    **{f"{t}_proj": (t,) for t in TARGETS},
    "c_attn": ("q", "k", "v"),  # GPT-2 fuses q, k, v into one Conv1D
    "c_fc": ("up",),
    "c_proj": ("o", "down"),  # PEFT's "c_proj" matches both the attention and the MLP output
}
_OWNERS = {"q": ("attn", "cross_attn"), "k": ("attn", "cross_attn"), "v": ("attn", "cross_attn")}
_OWNERS |= {"o": _OWNERS["q"], "gate": ("mlp",), "up": ("mlp",), "down": ("mlp",)}


class LoRAConfigError(ConfigError, ValueError):
    """A bad LoRAConfig value. Also a ValueError so that, when LoRAConfig sits inside another config,
    pydantic reports it under that config's key and file like any other field error."""


class LoRAConfig(Section):
    """Which projections get adapters, their rank and scale. Same meaning as PEFT's LoraConfig
    (`alpha` is its `lora_alpha`); `target_modules` is stored in genloop's names."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    r: int = Field(8, gt=0, description="rank of the update B A")
    alpha: float = Field(16.0, gt=0, description="the update is scaled by alpha / r")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the input of A while training")
    target_modules: list[str] = Field(default_factory=lambda: ["q", "v"])
    bias: Literal["none"] = "none"

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:  # constructed in code: answer like a config file would
            raise LoRAConfigError(_describe(exc.errors()[0], LoRAConfig, "LoRA config: ")) from None

    @field_validator("target_modules", mode="before")
    @classmethod
    def _normalize(cls, value: Any) -> Any:
        """Accept "q,v", HF names (q_proj, c_attn, ...) and repeats; keep genloop names in TARGETS order."""
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            return value  # let pydantic name the type problem
        if not value:
            raise ValueError(f"needs at least one module; choose from {', '.join(TARGETS)}")
        found: set[str] = set()
        for name in value:
            if name in TARGETS:
                found.add(name)
            elif name in _ALIASES:
                found.update(_ALIASES[name])
            else:
                raise ValueError(
                    f"unknown module '{name}'; choose from {', '.join(TARGETS)} "
                    f"(or the Hugging Face names {', '.join(_ALIASES)})"
                )
        return [t for t in TARGETS if t in found]


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus a trainable low-rank update, computed as PEFT computes it so adapters
    trained here give the same logits there."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.r, self.alpha = r, alpha
        self.scaling = alpha / r
        kw: dict[str, Any] = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Linear(base.in_features, r, bias=False, **kw)
        self.lora_B = nn.Linear(r, base.out_features, bias=False, **kw)
        self.dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_lora()

    def reset_lora(self) -> None:
        """PEFT's default init: A Kaiming-uniform (a=sqrt(5), nn.Linear's own), B zero: the update is 0."""
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    # Code that reads a projection's weight (stats, init, export) keeps working on a wrapped one.
    @property
    def weight(self) -> Tensor:
        return self.base.weight

    @property
    def bias(self) -> Tensor | None:
        return self.base.bias

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def delta_weight(self) -> Tensor:
        """B A * scaling in float32, shaped like the base weight [out, in]."""
        return (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling

    def forward(self, x: Tensor) -> Tensor:
        out = self.base(x)
        update = self.lora_B(self.lora_A(self.dropout(x.to(self.lora_A.weight.dtype))))
        return out + (update * self.scaling).to(out.dtype)

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha:g}"


def targetable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every attention and MLP projection of every block (cross-attention too), by module path.
    Output heads and classifiers are never targets, as in PEFT's defaults."""
    out: dict[str, nn.Module] = {}
    for path, module in model.named_modules():
        parent, _, leaf = path.rpartition(".")
        if leaf in _OWNERS and parent.rpartition(".")[2] in _OWNERS[leaf]:
            out[path] = module
    return out


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """The wrapped projections of `model`, by module path (empty when it has no LoRA)."""
    return {path: m for path, m in model.named_modules() if isinstance(m, LoRALinear)}


def wrap_module(model: nn.Module, path: str, r: int, alpha: float, dropout: float = 0.0) -> LoRALinear:
    """Replace the `nn.Linear` at `path` by a LoRALinear around it (the loader sets ranks per module)."""
    base = model.get_submodule(path)
    if not isinstance(base, nn.Linear):
        raise UserError(
            f"LoRA wraps nn.Linear, but '{path}' is {type(base).__name__}; "
            "apply LoRA before quantizing the model"
        )
    wrapped = LoRALinear(base, r, alpha, dropout)
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent), child, wrapped)
    return wrapped


def freeze_all_but_lora(model: nn.Module) -> None:
    """Only the adapters train: every other parameter (embeddings, norms, head) is frozen."""
    model.requires_grad_(False)
    for module in lora_modules(model).values():
        module.lora_A.requires_grad_(True)
        module.lora_B.requires_grad_(True)


def check_no_lora(model: nn.Module) -> None:
    if lora_modules(model):
        raise UserError(
            "the model already has LoRA adapters; merge them with merge_lora(model) "
            "or start again from the base model before adding new ones"
        )


def apply_lora(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Wrap every targeted projection in every block, freeze everything else; returns the wrapped paths."""
    check_no_lora(model)
    candidates = targetable_modules(model)
    paths = [p for p in candidates if p.rpartition(".")[2] in config.target_modules]
    present = {p.rpartition(".")[2] for p in candidates}
    absent = [t for t in config.target_modules if t not in present]
    if absent:
        raise UserError(
            f"LoRA target '{absent[0]}' is not a module of this model; "
            f"its projections are {', '.join(t for t in TARGETS if t in present)}"
        )
    for path in paths:
        wrap_module(model, path, config.r, config.alpha, config.dropout)
    freeze_all_but_lora(model)
    return paths


@torch.no_grad()
def merge_lora(model: nn.Module) -> None:
    """Fold each update into its base weight (in the base dtype) and put the plain nn.Linear back, so
    the model saves as an ordinary model directory. Frozen parameters stay frozen: call
    `model.requires_grad_(True)` to go on with full fine-tuning."""
    wrapped = lora_modules(model)
    if not wrapped:
        raise UserError("the model has no LoRA adapters to merge (apply_lora or load_adapter first)")
    for path, module in wrapped.items():
        weight = module.base.weight
        weight.copy_((weight.float() + module.delta_weight()).to(weight.dtype))
        parent, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent), child, module.base)


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Only the adapter tensors, by genloop names (`decoder.blocks.0.attn.q.lora_A.weight`)."""
    out: dict[str, Tensor] = {}
    for path, module in lora_modules(model).items():
        out[f"{path}.lora_A.weight"] = module.lora_A.weight.detach()
        out[f"{path}.lora_B.weight"] = module.lora_B.weight.detach()
    return out


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, shared (tied) tensors counted once."""
    params = list(model.parameters())  # parameters() already yields a tied tensor once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
