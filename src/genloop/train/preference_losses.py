"""Losses for learning from preferences: DPO (sigmoid, IPO), KTO and a Bradley-Terry reward model.

Pure tensor functions, no model calls: the trainers compute per-sequence log-probs (or scores) and
pass them in, so each formula can be checked against TRL's on the same numbers
(tests/train/test_preference_losses.py). Every per-example input is a 1-D tensor [B].

Conventions a caller must follow to get TRL's numbers (TRL 1.16):
- A sequence log-prob is the *sum* of the log-probs of its completion tokens (prompt tokens excluded;
  token t is scored by the logits at t-1).
- IPO: pass the per-token *mean* of the completion log-probs instead (sum / number of completion
  tokens), for the policy and the reference alike.
- Reference log-probs carry no gradient (computed under `torch.no_grad()` or precomputed).
- KTO's reference point `kl` is detached and clamped at 0 (`kl_estimate` does both); under data
  parallelism, gather the per-example KL log-probs from every rank before calling `kl_estimate`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from genloop.errors import UserError

DPO_LOSS_TYPES = ("sigmoid", "ipo")


def _check_batch(**tensors: Tensor | None) -> int:
    """All given tensors are 1-D with one common, non-zero length; returns it."""
    sizes: dict[str, int] = {}
    for name, tensor in tensors.items():
        if tensor is None:
            continue
        if tensor.dim() != 1:
            raise ValueError(
                f"{name} must be a 1-D tensor [batch] (one value per example), got shape "
                f"{tuple(tensor.shape)}; squeeze or sum over the other dimensions first"
            )
        sizes[name] = tensor.shape[0]
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{name}={size}" for name, size in sizes.items())
        raise ValueError(f"batch sizes differ ({listed}); every input needs one value per example")
    batch = next(iter(sizes.values()))
    if batch == 0:
        raise ValueError("empty batch: the loss is a mean over examples and needs at least one")
    return batch


def _check_beta(beta: float) -> None:
    if not beta > 0:
        raise UserError(f"beta must be > 0 (it scales the log-ratio to the reference), got {beta}")


def dpo_loss(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """DPO on paired completions -> (loss: mean over the batch, chosen_rewards [B], rejected_rewards [B]).

    With the implicit rewards r_c = beta * (chosen - ref_chosen), r_r = beta * (rejected - ref_rejected)
    and the margin h = (chosen - ref_chosen) - (rejected - ref_rejected):

    - "sigmoid" (DPO, Rafailov et al. 2023, eq. 7; conservative DPO when label_smoothing = eps > 0,
      i.e. the label is taken as flipped with probability eps):
          loss_i = -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h)
    - "ipo" (Azar et al. 2023, eq. 17; beta is their tau):
          loss_i = (h - 1 / (2 * beta)) ** 2

    Inputs are per-sequence log-probs [B]: the sum over completion tokens for "sigmoid". For "ipo", TRL
    divides each log-ratio by the completion's token count, so pass per-token mean log-probs
    (sum / count, for policy and reference) to get TRL's loss; the returned rewards are then per-token
    too, whereas TRL logs rewards from the summed log-probs.

    TRL 1.16's "sigmoid" ignores `label_smoothing`; the smoothed form here is TRL < 1.0's "sigmoid"
    (`DPOTrainer.dpo_loss`) and the same expression TRL 1.16 applies in its "aot" losses. At
    label_smoothing = 0 both versions agree. The rewards are detached: they are metrics, not targets.
    """
    _check_batch(
        chosen_logps=chosen_logps,
        rejected_logps=rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
    )
    if loss_type not in DPO_LOSS_TYPES:
        allowed = ", ".join(repr(t) for t in DPO_LOSS_TYPES)
        raise UserError(f"unknown DPO loss_type {loss_type!r}; use one of {allowed}")
    _check_beta(beta)
    if not 0.0 <= label_smoothing < 0.5:
        raise UserError(
            f"label_smoothing must be in [0, 0.5) (the probability that a preference label is flipped), "
            f"got {label_smoothing}"
        )
    if label_smoothing and loss_type != "sigmoid":
        raise UserError(
            f"label_smoothing applies only to loss_type 'sigmoid', not {loss_type!r}; set it to 0"
        )

    chosen_logratios = chosen_logps - ref_chosen_logps
    rejected_logratios = rejected_logps - ref_rejected_logps
    margin = chosen_logratios - rejected_logratios
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * margin) * (1 - label_smoothing)
        if label_smoothing:
            losses = losses - F.logsigmoid(-beta * margin) * label_smoothing
    else:
        losses = (margin - 1 / (2 * beta)) ** 2
    chosen_rewards = beta * chosen_logratios.detach()
    rejected_rewards = beta * rejected_logratios.detach()
    return losses.mean(), chosen_rewards, rejected_rewards


def kl_estimate(policy_kl_logps: Tensor, ref_kl_logps: Tensor) -> Tensor:
    """KTO's reference point z0: a detached, clamped estimate of KL(policy || reference) for the batch.

        z0 = max(0, mean_i(policy_kl_logps_i - ref_kl_logps_i))

    The log-probs are of *mismatched* pairs, the prompt of example i with the completion of another
    example (TRL cycles completions by one within the batch: y'_i = y_(i-1)), summed over completion
    tokens. It is a baseline, not something to optimize, so no gradient flows through it (KTO paper,
    Ethayarajh et al. 2024, sec. 4.1). Returns a 0-dim tensor.
    """
    _check_batch(policy_kl_logps=policy_kl_logps, ref_kl_logps=ref_kl_logps)
    return (policy_kl_logps - ref_kl_logps).mean().detach().clamp(min=0)


def kto_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    desirable: Tensor,
    kl: Tensor,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """KTO on unpaired, labelled completions -> (loss: mean over the batch, rewards [B], detached).

    With the log-ratio r_i = policy_logps_i - ref_logps_i and the reference point z0 = `kl`
    (from `kl_estimate`: already detached and clamped at 0; it is used as given, only detached again):

        desirable:    loss_i = desirable_weight   * (1 - sigmoid(beta * (r_i - z0)))
        undesirable:  loss_i = undesirable_weight * (1 - sigmoid(beta * (z0 - r_i)))
        loss = mean_i loss_i          (a plain mean over all B examples; the weights are not normalized)
        rewards_i = beta * r_i

    KTO paper eq. 7 (Ethayarajh et al. 2024). The log-probs are summed over completion tokens.
    Batches that are all desirable or all undesirable are fine. The paper suggests weights such that
    desirable_weight * n_desirable / (undesirable_weight * n_undesirable) lies in [1, 4/3].
    """
    _check_batch(policy_logps=policy_logps, ref_logps=ref_logps, desirable=desirable)
    if desirable.dtype != torch.bool:
        raise ValueError(f"desirable must be a bool tensor (True = thumbs up), got dtype {desirable.dtype}")
    if kl.numel() != 1:
        raise ValueError(
            f"kl must be one number for the batch (see kl_estimate), got shape {tuple(kl.shape)}"
        )
    _check_beta(beta)
    kl = kl.detach().reshape(())
    logratios = policy_logps - ref_logps
    desirable_losses = desirable_weight * (1 - torch.sigmoid(beta * (logratios - kl)))
    undesirable_losses = undesirable_weight * (1 - torch.sigmoid(beta * (kl - logratios)))
    losses = torch.where(desirable, desirable_losses, undesirable_losses)
    return losses.mean(), beta * logratios.detach()


def reward_loss(
    chosen_scores: Tensor,
    rejected_scores: Tensor,
    margin: Tensor | None = None,
    center_coefficient: float | None = None,
) -> Tensor:
    """Bradley-Terry loss for a scalar reward model: P(chosen > rejected) = sigmoid(s_c - s_r).

        loss = mean_i -log sigmoid(s_c_i - s_r_i - m_i)  +  c * mean_i (s_c_i + s_r_i) ** 2

    m (`margin`, [B], optional) demands a larger gap on pairs known to be far apart (Llama 2's
    margin loss); c (`center_coefficient`, optional) pulls rewards toward zero mean, since the loss
    alone only fixes their differences (Eisenstein et al. 2023). TRL's `RewardTrainer.compute_loss`.
    """
    _check_batch(chosen_scores=chosen_scores, rejected_scores=rejected_scores, margin=margin)
    diff = chosen_scores - rejected_scores
    if margin is not None:
        diff = diff - margin
    loss = -F.logsigmoid(diff).mean()
    if center_coefficient is not None:
        loss = loss + center_coefficient * torch.mean((chosen_scores + rejected_scores) ** 2)
    return loss
