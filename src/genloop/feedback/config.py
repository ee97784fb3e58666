"""`genloop loop`'s YAML: which served model the loop improves, how it trains, and the gate."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from genloop.config import Section


class LoopTrain(Section):
    """How a candidate is trained from one round's feedback."""

    method: Literal["auto", "dpo", "kto", "sft"] = Field(
        "auto", description="auto: dpo when there are preference pairs, else kto on thumbs, else sft"
    )
    steps: int = Field(60, gt=0)
    learning_rate: float = Field(5e-6, gt=0)
    batch_size: int = Field(4, gt=0)
    seq_len: int = Field(512, gt=1)
    beta: float = Field(0.1, gt=0, description="dpo/kto: pull towards the current model")
    lora: dict[str, Any] | None = Field(
        None, description="train LoRA adapters (r, alpha, dropout, target_modules), merged before serving"
    )
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    seed: int = 0


class LoopGate(Section):
    """When a candidate replaces the served model."""

    holdout: float = Field(0.2, gt=0, lt=1, description="share of each round's examples kept for the gate")
    min_examples: int = Field(8, gt=0, description="train only with at least this many examples")
    min_gain: float = Field(0.0, description="held-out feedback metric must beat the current model by more")
    guard_data: str | None = Field(
        None,
        description="general text (a text/JSONL file or a shard folder) whose perplexity must not regress",
    )
    max_regression: float = Field(0.05, ge=0, description="allowed relative rise of the guard's perplexity")
    guard_tokens: int = Field(20_000, gt=0, description="tokens of guard text to score")


class LoopConfig(Section):
    """One feedback loop: `model` is the registered name the server was started with."""

    model: str = Field(description="registered model the loop improves (`genloop serve NAME`)")
    server: str | None = Field(None, description="URL of the running `genloop serve` to switch on promotion")
    api_key: str | None = Field(None, description="API key for the server, if it requires one")
    db: str | None = Field(None, description="store URL or SQLite file (default GENLOOP_HOME/genloop.db)")
    train: LoopTrain = Field(default_factory=LoopTrain)
    gate: LoopGate = Field(default_factory=LoopGate)

    def guard_path(self) -> Path | None:
        return Path(self.gate.guard_data).expanduser() if self.gate.guard_data else None
