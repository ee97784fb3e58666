"""DPO/IPO, KTO and reward-model objectives for the Trainer: (model, batch) -> (loss, examples).

Each reads its batch from `preference_data` (rows of answers with their reference log-probs already
attached) and hands per-sequence log-probs or scores to the losses in `preference_losses`, which
carry the formulas.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from genloop.config import PreferenceConfig
from genloop.train.preference_data import sequence_logps
from genloop.train.preference_losses import dpo_loss, kl_estimate, kto_loss, reward_loss

Objective = Callable[[nn.Module, dict[str, Tensor]], tuple[Tensor, int]]


def dpo(settings: PreferenceConfig) -> Objective:
    """Chosen vs rejected log-ratio against the reference; IPO compares per-token averages (TRL's
    convention for it), DPO sums."""

    def objective(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
        logps, ref = sequence_logps(model, batch), batch["ref_logps"].to(batch["labels"].device)
        if settings.loss_type == "ipo":
            tokens = batch["answer_tokens"].to(logps.device)
            logps, ref = logps / tokens, ref / tokens
        half = logps.shape[0] // 2
        loss, _, _ = dpo_loss(
            logps[:half], logps[half:], ref[:half].to(logps.dtype), ref[half:].to(logps.dtype),
            beta=settings.beta, loss_type=settings.loss_type, label_smoothing=settings.label_smoothing,
        )  # fmt: skip
        return loss, half

    return objective


def kto(settings: PreferenceConfig) -> Objective:
    """Rated completions against a reference point: the batch's KL estimate from mismatched pairs,
    computed without gradient as in TRL."""

    def objective(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
        logps = sequence_logps(model, batch)
        ref = batch["ref_logps"].to(logps.device, logps.dtype)
        half = logps.shape[0] // 2
        kl = kl_estimate(logps[half:].detach(), ref[half:])
        loss, _ = kto_loss(
            logps[:half], ref[:half], batch["desirable"].to(logps.device), kl, beta=settings.beta,
            desirable_weight=settings.desirable_weight, undesirable_weight=settings.undesirable_weight,
        )  # fmt: skip
        return loss, half

    return objective


def reward(_: PreferenceConfig) -> Objective:
    """Bradley-Terry on the scalar scores of chosen and rejected answers."""

    def objective(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
        scores = model(batch["input_ids"], labels=batch["labels"])
        half = scores.shape[0] // 2
        return reward_loss(scores[:half], scores[half:]), half

    return objective


PREFERENCE_OBJECTIVES: dict[str, Callable[[PreferenceConfig], Objective]] = {
    "dpo": dpo,
    "kto": kto,
    "reward": reward,
}
