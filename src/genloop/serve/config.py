"""`genloop serve --config serve.yaml`: every serve option in one typed file; command-line flags win.

The file holds what a deployment pins down (model, keys, limits, the postprocess pipeline) so that a
restart serves exactly the same thing; flags stay for quick changes. Unknown keys are errors with a
did-you-mean hint, like every genloop config.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from genloop.config import Section, merge, read_yaml, validate
from genloop.errors import ConfigError

DEFAULT_MODEL = "smollm2-135m-instruct"
MIB = 1024 * 1024


class LimitsConfig(Section):
    """Abuse limits on the input side. Rates count per API key, or per client IP when no keys are set;
    unset (null) means unlimited, which is the default for every rate."""

    requests_per_minute: int | None = Field(
        None, gt=0, description="generation requests (chat, completions, embeddings) per key per minute"
    )
    tokens_per_minute: int | None = Field(
        None,
        gt=0,
        description="tokens per key per minute, charged up front as prompt + max_tokens (× n); with no "
        "max_tokens the rest of the context is charged",
    )
    max_concurrent: int | None = Field(None, gt=0, description="generation requests in flight per key")
    max_request_bytes: int = Field(MIB, gt=0, description="largest request body; more is a 413")
    max_messages: int | None = Field(None, gt=0, description="messages in one chat request")
    max_prompt_tokens: int | None = Field(
        None, gt=0, description="tokens of one prompt (the whole conversation so far for chat)"
    )


class ServeConfig(Section):
    """Everything `genloop serve` takes; each field is also a flag of the same name (where one exists)."""

    model: str = Field(DEFAULT_MODEL, description="a model directory or a registered name")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    name: str | None = Field(None, description="model name clients use (default: the directory name)")
    dtype: Literal["auto", "float32", "bfloat16", "int8", "int4"] = "auto"
    compile: bool = Field(False, description="each decode step as one torch.compile graph")
    db: str | None = Field(None, description="store: an SQLAlchemy URL or an SQLite file path")
    store: bool = Field(True, description="false keeps no conversations, feedback or filter events")
    api_keys: list[str] = Field(default_factory=list, description="keys clients must send (empty: open)")
    max_batch: int = Field(32, ge=1)
    max_seq_len: int = Field(2048, ge=16)
    max_queue: int = Field(256, ge=1)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "warning"
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    postprocess: dict[str, Any] | Literal["off"] | None = Field(
        None,
        description="the formatting/filtering pipeline (genloop.postprocess): its settings, nothing for "
        "the default pipeline, or off for raw answers",
    )


def store_url(db: str | None) -> str | None:
    """`db` as an SQLAlchemy URL: a plain path is an SQLite file (relative to the working directory)."""
    if db is None or "://" in db:
        return db
    return f"sqlite:///{Path(db).expanduser().resolve()}"


def load_serve_config(path: str | Path | None, flags: Mapping[str, Any] = ()) -> ServeConfig:
    """The file (if any) validated on its own, so its problems name the file, then `flags` on top.

    `flags` uses the config's keys (nested for limits); a bad flag value names the flag, not the key.
    """
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml(path)
        validate(ServeConfig, data, str(path))
    merged = merge(data, dict(flags))
    try:
        return ServeConfig.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(p) for p in first["loc"]]
        flag = "--" + (loc[-1] if loc else "config").replace("_", "-")
        value = dict(flags).get(loc[0]) if loc else None
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{flag} {value!r} is invalid: {message}") from None
