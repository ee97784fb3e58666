"""Typed settings for every stage, read from YAML and overridable with `key=value` on the command line.

pydantic does the validation; this module's job is to turn its errors into one line a person can act
on: the unknown key and the nearest valid one, the field and the type it wants, the missing path.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from genloop.errors import ConfigError


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    """One configurable transformer family; the three assemblies share every field that applies."""

    arch: Literal["decoder", "encoder-decoder", "encoder"] = "decoder"
    vocab_size: int = Field(32000, gt=0)
    d_model: int = Field(512, gt=0)
    n_layers: int = Field(8, gt=0, description="decoder layers (decoder), encoder layers otherwise")
    n_decoder_layers: int | None = Field(None, gt=0, description="encoder-decoder: decoder layers")
    n_heads: int = Field(8, gt=0)
    n_kv_heads: int | None = Field(None, gt=0, description="grouped-query (< n_heads) or multi-query (1)")
    head_dim: int | None = Field(None, gt=0, description="defaults to d_model // n_heads")
    d_ff: int = Field(2048, gt=0, description="MLP hidden size")
    max_seq_len: int = Field(2048, gt=0)
    pos_emb: Literal["learned", "rope", "none"] = "rope"
    rope_theta: float = Field(10000.0, gt=0)
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    norm_eps: float = Field(1e-5, gt=0)
    mlp: Literal["swiglu", "gelu", "gelu_tanh"] = "swiglu"
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    tie_embeddings: bool = True
    dropout: float = Field(0.0, ge=0, lt=1)
    init_std: float = Field(0.02, gt=0)
    pad_token_id: int | None = Field(None, ge=0)
    bos_token_id: int | None = Field(None, ge=0)
    eos_token_id: int | None = Field(None, ge=0)
    decoder_start_token_id: int | None = Field(None, ge=0, description="encoder-decoder: first target id")
    num_labels: int = Field(2, gt=0, description="encoder: classes of the classification head")
    pooling: Literal["mean", "first"] = "mean"

    @model_validator(mode="after")
    def _check_shapes(self) -> ModelConfig:
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads}), or set head_dim"
            )
        if self.kv_heads > self.n_heads or self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.kv_heads})")
        if self.pos_emb == "rope" and self.dim_per_head % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {self.dim_per_head}")
        return self

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def decoder_layers(self) -> int:
        return self.n_decoder_layers or self.n_layers


class TokenizerConfig(Section):
    """Byte-level BPE training settings and the special tokens the model will know."""

    vocab_size: int = Field(8000, ge=300, description="including the 256 byte symbols and specials")
    min_frequency: int = Field(2, ge=1)
    bos_token: str | None = "<|endoftext|>"
    eos_token: str | None = "<|endoftext|>"
    pad_token: str | None = "<|pad|>"
    unk_token: str | None = None
    chat_tokens: list[str] = Field(default_factory=lambda: ["<|im_start|>", "<|im_end|>"])
    extra_special_tokens: list[str] = Field(default_factory=list)
    add_bos_token: bool = False
    chat_template: str | None = Field(None, description="Jinja2 template; None uses genloop's ChatML")
    model_max_length: int = Field(2048, gt=0)
    normalize: list[str] = Field(default_factory=list, description="preprocess steps applied before training")


class DataConfig(Section):
    """Where training text comes from and how it is cut into examples."""

    sources: list[str] = Field(default_factory=list, description="files, folders or recipe names")
    text_field: str = "text"
    normalize: list[str] = Field(default_factory=lambda: ["nfkc", "fix_mojibake", "clean_whitespace"])
    seq_len: int = Field(512, gt=0)
    val_fraction: float = Field(0.01, ge=0, lt=1)
    output: str | None = None
    seed: int = 0
    shards: str | None = Field(
        None, description="token shards from `genloop data build` (causal LM, span corruption)"
    )
    train_file: str | None = Field(
        None, description="JSONL for sft (messages or prompt/completion) or classification"
    )
    validation_file: str | None = Field(None, description="held-out JSONL; default: a slice of train_file")
    packing: bool = Field(True, description="sft: pack several conversations into each row")
    replay_shards: str | None = Field(None, description="continual learning: shards of the previous data")
    replay_ratio: float = Field(0.0, ge=0, lt=1, description="share of each batch drawn from replay_shards")


class PreferenceConfig(Section):
    """DPO, IPO and KTO settings (and the reward model's margin-free Bradley-Terry has none)."""

    beta: float = Field(0.1, gt=0, description="strength of the pull towards the reference model")
    loss_type: Literal["sigmoid", "ipo"] = Field("sigmoid", description="dpo: DPO's sigmoid loss or IPO")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="dpo: assumed share of flipped labels")
    desirable_weight: float = Field(1.0, gt=0, description="kto: weight of thumbs-up examples")
    undesirable_weight: float = Field(1.0, gt=0, description="kto: weight of thumbs-down examples")
    reference_model: str | None = Field(
        None, description="reference for dpo/kto log-probs; default: the starting model (frozen)"
    )


class TrainConfig(Section):
    """The trainer loop's knobs; objectives read the ones that apply to them."""

    objective: Literal["causal_lm", "span_corruption", "sft", "classification", "dpo", "kto", "reward"] = (
        "causal_lm"
    )
    learning_rate: float = Field(3e-4, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup_steps: int = Field(100, ge=0)
    max_steps: int = Field(1000, gt=0)
    batch_size: int = Field(16, gt=0)
    grad_accum: int = Field(1, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    grad_clip: float = Field(1.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="autocast dtype; auto measures bf16 vs fp32 matmul speed here and picks the faster",
    )
    compile: Literal["auto", True, False] = Field(
        "auto", description="torch.compile the model; auto: for long runs (>= 10 minutes or >= 2000 steps)"
    )
    device: str = "auto"
    activation_checkpointing: bool = False
    eval_every: int = Field(200, gt=0)
    eval_batches: int = Field(20, gt=0, description="validation batches per evaluation")
    early_stopping: int | None = Field(
        None, gt=0, description="stop after this many evaluations without a gain"
    )
    save_every: int = Field(500, gt=0)
    keep_last: int = Field(3, gt=0)
    log_every: int = Field(10, gt=0)
    max_minutes: float | None = Field(None, gt=0, description="time budget: stop (and save) after this long")
    seed: int = 0
    init_from: str | None = Field(None, description="start from this model directory (transfer learning)")
    freeze_embeddings: bool = False
    freeze_layers: int = Field(0, ge=0, description="freeze the first K blocks")
    lora: dict[str, Any] | None = Field(None, description="LoRA options (r, alpha, dropout, target_modules)")
    distributed: Literal["ddp", "fsdp"] = Field("ddp", description="under torchrun: DDP or FSDP2")
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig)


class RunConfig(Section):
    """A whole run in one YAML file: `genloop train CONFIG.yaml` reads this."""

    preset: str | None = Field(None, description="model preset to start from; `model` keys override it")
    model: ModelConfig = Field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        """`preset: NAME` fills `model` with the preset's values; keys under `model` win."""
        if not isinstance(data, dict) or not data.get("preset"):
            return data
        from genloop.model.presets import PRESETS  # lazy: presets live with the model library

        name = data["preset"]
        if not isinstance(name, str) or name not in PRESETS:
            close = difflib.get_close_matches(str(name), PRESETS, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ValueError(f"unknown preset '{name}': {hint}known presets: {', '.join(PRESETS)}")
        model = data.get("model") or {}
        if not isinstance(model, dict):
            return data
        return {**data, "model": merge(PRESETS[name], model)}


C = TypeVar("C", bound=BaseModel)

_TYPE_WORDS = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "string": "a string",
    "list": "a list",
    "dict": "a mapping of keys to values",
    "tuple": "a list",
    "literal": "one of",
}


def _model_at(cls: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at `loc` (the parent of the last element)."""
    current: type[BaseModel] | None = cls
    for part in loc[:-1]:
        if current is None or not isinstance(part, str) or part not in current.model_fields:
            return None
        annotation = current.model_fields[part].annotation
        current = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return current


def _describe(error: Mapping[str, Any], cls: type[BaseModel], where: str) -> str:
    loc = tuple(error["loc"])
    key = ".".join(str(p) for p in loc) or "(top level)"
    kind: str = error["type"]
    if kind == "extra_forbidden":
        owner = _model_at(cls, loc)
        valid = sorted(owner.model_fields) if owner else []
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
        hint = (
            f"; did you mean '{close[0]}'?"
            if close
            else (f"; valid keys: {', '.join(valid)}" if valid else "")
        )
        return f"{where}unknown key '{key}'{hint}"
    got = error.get("input")
    shown = repr(got) if not isinstance(got, dict) else "a mapping"
    if kind == "literal_error":
        return f"{where}'{key}' must be {error['ctx']['expected']}, got {shown}"
    for word, text in _TYPE_WORDS.items():
        if kind.startswith(word + "_") and kind.endswith(("_type", "_parsing", "_from_float")):
            return f"{where}'{key}' expects {text}, got {shown}"
    if kind == "missing":
        return f"{where}'{key}' is required"
    message = str(error["msg"]).removeprefix("Value error, ")
    if isinstance(got, dict) or not loc:
        return f"{where}'{key}': {message}" if loc else f"{where}{message}"
    return f"{where}'{key}': {message} (got {shown})"


def validate(cls: type[C], data: Mapping[str, Any], source: str = "") -> C:
    """Build `cls` from plain data, or raise a ConfigError naming the first problem."""
    try:
        return cls.model_validate(dict(data))
    except ValidationError as exc:
        where = f"{source}: " if source else ""
        raise ConfigError(_describe(exc.errors()[0], cls, where)) from None


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """`a.b=value` strings into a nested dict; values are parsed as YAML scalars (1e-3, true, [1,2])."""
    nested: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{pair}' is not key=value (for example train.learning_rate=1e-3)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{pair}' conflicts with an earlier override of '{part}'")
            node = child
        node[parts[-1]] = value
    return nested


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge `update` into a copy of `base` (mappings merge, everything else replaces)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from disk; a missing file, bad syntax or a non-mapping is a ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p} (check the path)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{p}: cannot parse YAML{at}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a UTF-8 text file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{p}: the top level must be a mapping of keys to values, got {type(data).__name__}"
        )
    return data


def load_config(
    cls: type[C], path: str | Path | None = None, overrides: Iterable[str] = (), base: Mapping[str, Any] = ()
) -> C:
    """`base` (e.g. a preset), then the YAML file, then `key=value` overrides, validated as `cls`."""
    data: dict[str, Any] = dict(base)
    source = ""
    if path is not None:
        data = merge(data, read_yaml(path))
        source = str(path)
    overrides = list(overrides)
    if not overrides:
        return validate(cls, data, source)
    validate(cls, data, source)  # a problem in the file is reported as the file's
    return validate(cls, merge(data, parse_overrides(overrides)), "command-line override")


def dump_yaml(config: BaseModel) -> str:
    """The config as YAML, every default spelled out, in field order."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
