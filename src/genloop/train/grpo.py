"""GRPO (group relative policy optimization): the policy-gradient objective of DeepSeekMath / R1, as
TRL 1.16 computes it, so a run here and a run there optimize the same number.

No value network: each prompt is answered G times and every completion's advantage is its reward
measured against its own group (`group_advantages`). The loss is PPO's clipped surrogate per token
with an optional KL penalty to a frozen reference (`grpo_loss`); the four loss types differ only in
how the per-token terms are averaged, which decides how long and short completions are weighted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]
LOSS_TYPES: tuple[str, ...] = ("grpo", "bnpo", "dr_grpo", "dapo")
DEFAULT_LOSS_TYPE: LossType = "dapo"  # TRL 1.16's GRPOConfig.loss_type default
ScaleRewards = Literal["group", "batch", "none"]
STD_EPS = 1e-4  # TRL adds this to the std, so a group of equal rewards gets advantage 0, not NaN


def _nanstd(x: Tensor, dim: int | None = None) -> Tensor:
    """Standard deviation with Bessel's correction, ignoring NaN (NaN where fewer than 2 values)."""
    dims = tuple(range(x.dim())) if dim is None else (dim,)
    mean = torch.nanmean(x, dim=dims, keepdim=True)
    var = torch.nanmean((x - mean) ** 2, dim=dims)
    count = (~torch.isnan(x)).sum(dim=dims).to(x.dtype)
    correction = torch.where(count > 1, count / (count - 1), torch.full_like(count, torch.nan))
    return torch.sqrt(var * correction)


def group_advantages(rewards: Tensor, group_size: int, scale: bool | ScaleRewards = True) -> Tensor:
    """Advantages [B*G] for rewards [B*G] laid out prompt by prompt (the G answers of prompt 0 first).

        A_i = (r_i - mean(r_group)) / (std(r_group) + 1e-4)      scale=True / "group" (TRL's default)
        A_i = (r_i - mean(r_group)) / (std(r_batch) + 1e-4)      scale="batch"
        A_i =  r_i - mean(r_group)                               scale=False / "none" (Dr. GRPO)

    std is the sample standard deviation (Bessel-corrected), 0 for a group of one. A NaN reward (a
    completion no reward could score) is left out of the mean and std and gets advantage 0, so it
    neither moves the policy nor shifts its group's baseline (TRL's `_generate_and_score_completions`).
    """
    mode = {True: "group", False: "none"}.get(scale, scale)  # type: ignore[call-overload]
    if mode not in ("group", "batch", "none"):
        raise ValueError(f"scale={scale!r}: use True/'group', 'batch' or False/'none'")
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = rewards.float()
    grouped = r.view(-1, group_size)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(group_size)
    if mode == "batch":
        std = _nanstd(r).expand_as(r) if r.numel() > 1 else torch.zeros_like(r)
    elif group_size > 1:
        std = _nanstd(grouped, dim=1).repeat_interleave(group_size)
    else:
        std = torch.zeros_like(r)
    adv = r - mean
    if mode != "none":
        adv = adv / (std + STD_EPS)
    return torch.nan_to_num(adv, nan=0.0)


@dataclass
class GRPOOutput:
    """The loss and what a run logs about it (TRL's `kl` and `clip_ratio/region_mean` metrics)."""

    loss: Tensor
    kl: Tensor | None  # mean per-token KL to the reference over completion tokens; None when beta == 0
    clip_ratio: Tensor  # share of completion tokens whose ratio was clipped in the direction that matters


def grpo_objective(
    logps: Tensor,
    old_logps: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    ref_logps: Tensor | None = None,
    beta: float = 0.0,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    loss_type: LossType = DEFAULT_LOSS_TYPE,
    max_completion_length: int | None = None,
    num_items: float | Tensor | None = None,
) -> GRPOOutput:
    """`grpo_loss` with its KL and clip statistics; see there for the formulas."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r}: choose from {', '.join(LOSS_TYPES)}")
    if beta != 0.0 and ref_logps is None:
        raise ValueError("beta > 0 needs ref_logps (the reference model's per-token log-probs)")
    mask = mask.to(logps.dtype)
    adv = advantages[:, None] if advantages.dim() == 1 else advantages
    old = logps.detach() if old_logps is None else old_logps
    ratio = torch.exp(logps - old)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    kl = None
    if beta != 0.0:
        assert ref_logps is not None
        diff = ref_logps - logps
        per_token_kl = torch.exp(diff) - diff - 1
        per_token = per_token + beta * per_token_kl
        kl = (per_token_kl * mask).sum().detach() / mask.sum().clamp(min=1.0)
    masked = per_token * mask
    if loss_type == "grpo":
        loss = (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = masked.sum() / mask.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        length = max_completion_length if max_completion_length is not None else logps.shape[1]
        loss = masked.sum() / (per_token.shape[0] * length)
    else:  # dapo
        items = mask.sum() if num_items is None else torch.as_tensor(num_items, dtype=logps.dtype)
        loss = masked.sum() / items.clamp(min=1.0)
    region = ((ratio < 1 - epsilon_low) & (adv < 0)) | ((ratio > 1 + epsilon_high) & (adv > 0))
    clip_ratio = (region.to(mask.dtype) * mask).sum().detach() / mask.sum().clamp(min=1.0)
    return GRPOOutput(loss, kl, clip_ratio)


def grpo_loss(
    logps: Tensor, old_logps: Tensor | None, advantages: Tensor, mask: Tensor, **options: Any
) -> Tensor:
    """The GRPO loss for completion log-probs logps [B, T] (with grad), as TRL's `_compute_loss`.

    Per completion token t of sequence i, with ratio rho = exp(logp - old_logp) (old_logps None means
    logps.detach(): one update per rollout, where rho = 1 but its gradient is still A * grad logp):

        l_it = -min(rho * A_i, clip(rho, 1 - epsilon_low, 1 + epsilon_high) * A_i)
               + beta * (exp(ref - logp) - (ref - logp) - 1)          (k3 KL estimate, if beta != 0)

    Aggregation over the completion mask m (the four loss types):

        grpo     mean_i( sum_t m l / sum_t m )         per-sequence mean, then mean: favours short answers
        bnpo     sum m l / sum m                        token mean over this batch
        dr_grpo  sum m l / (B * max_completion_length)  a constant: no length bias (default T)
        dapo     sum m l / num_items                    token mean over the whole generation batch
                                                        (num_items, default sum m): TRL's default

    With gradient accumulation, pass the whole batch's token count as num_items for dapo so the
    micro-batch losses add up to the batch loss.

    The keyword options are `grpo_objective`'s: ref_logps, beta, epsilon_low, epsilon_high,
    loss_type, max_completion_length, num_items.
    """
    return grpo_objective(logps, old_logps, advantages, mask, **options).loss
