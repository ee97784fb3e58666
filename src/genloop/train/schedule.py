"""Learning-rate schedules: linear warmup, then cosine decay, warmup-stable-decay, or constant.

A plain function of the step (no state), so a resumed run needs only the step to be exact.
"""

from __future__ import annotations

import math


def lr_at(step: int, base: float, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total`.

    cosine: from `base` down to `min_ratio * base` over the steps after warmup.
    wsd: flat at `base`, then a linear decay to `min_ratio * base` over the last 20% of steps
    (warmup-stable-decay, as in MiniCPM), which lets a run be extended without restarting the decay.
    """
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    floor = base * min_ratio
    if schedule == "constant" or total <= warmup:
        return base
    if schedule == "wsd":
        decay_start = warmup + int(0.8 * (total - warmup))
        if step < decay_start:
            return base
        frac = (step - decay_start) / max(1, total - decay_start)
        return base - (base - floor) * min(1.0, frac)
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (base - floor) * 0.5 * (1 + math.cos(math.pi * frac))
