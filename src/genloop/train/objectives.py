"""Losses for each objective: (model, batch) -> (mean loss over target tokens, target count).

Every objective is token-level cross-entropy on different inputs: next token (pretraining, SFT with
non-assistant tokens masked to -100), the corrupted spans (T5), or one label per sequence.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

IGNORE = -100


def _ce(logits: Tensor, labels: Tensor) -> tuple[Tensor, int]:
    loss = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE
    )
    return loss, int((labels != IGNORE).sum())


def causal_lm(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
    """Next-token loss; `labels` are already aligned (labels[t] is the target after position t).

    The model computes the loss itself (its head and cross-entropy fused, chunked, skipping ignored
    positions), which is what lets a 50k-vocabulary head train at bf16 speed without the logits.
    """
    labels = batch["labels"]
    loss = model(
        batch["input_ids"],
        attention_mask=batch.get("attention_mask"),
        position_ids=batch.get("position_ids"),
        labels=labels,
    )
    return loss, int((labels != IGNORE).sum())


def span_corruption(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
    logits = model(batch["input_ids"], batch["decoder_input_ids"], attention_mask=batch.get("attention_mask"))
    return _ce(logits, batch["labels"])


def classification(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
    logits = model(batch["input_ids"], attention_mask=batch.get("attention_mask"))
    return F.cross_entropy(logits.float(), batch["labels"]), int(batch["labels"].numel())


OBJECTIVES = {
    "causal_lm": causal_lm,
    "sft": causal_lm,
    "span_corruption": span_corruption,
    "classification": classification,
}


class LMBatches:
    """PackedDataset's (inputs, targets) as the dict the objectives take."""

    def __init__(self, packed: object) -> None:
        self.packed = packed

    def __len__(self) -> int:
        return len(self.packed)  # type: ignore[arg-type]

    def batch(self, step: int) -> dict[str, Tensor]:
        x, y = self.packed.batch(step)  # type: ignore[attr-defined]
        return {"input_ids": x, "labels": y}


class ReplayMix:
    """Continual learning: each batch is new data plus a fixed share of rows replayed from the old."""

    def __init__(self, new: object, old: object) -> None:
        self.new, self.old = new, old

    def __len__(self) -> int:
        return len(self.new)  # type: ignore[arg-type]

    def batch(self, step: int) -> dict[str, Tensor]:
        import torch

        a, b = self.new.batch(step), self.old.batch(step)  # type: ignore[attr-defined]
        return {k: torch.cat([a[k], b[k]]) for k in a}
