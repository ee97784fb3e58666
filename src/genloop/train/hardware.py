"""What this machine can do, measured rather than assumed: matmul peak per dtype (the MFU
denominator and the bf16-or-not decision) and the memory a run may use."""

from __future__ import annotations

import functools
import time

import torch

from genloop.errors import UserError


@functools.lru_cache(maxsize=8)
def matmul_peak(device_type: str, dtype: torch.dtype, size: int = 1024, seconds: float = 0.3) -> float:
    """FLOP/s of a square matmul on this device and thread count (best of a short burst)."""
    device = torch.device(device_type)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = 0.0
    deadline = time.perf_counter() + seconds
    while True:
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        best = max(best, 4 * 2 * size**3 / elapsed)
        if time.perf_counter() > deadline:
            return best


def choose_autocast(requested: str, device: torch.device) -> torch.dtype | None:
    """None (plain fp32) or bfloat16. `auto` takes bf16 only where its matmuls are measured to be
    at least 1.5x faster than fp32: true on GPUs and AMX/AVX-512-bf16 CPUs, false on AVX2 CPUs where
    bf16 runs at a fraction of fp32 speed."""
    if requested == "float32":
        return None
    if requested == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    fast = matmul_peak(device.type, torch.bfloat16) >= 1.5 * matmul_peak(device.type, torch.float32)
    return torch.bfloat16 if fast else None


def available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62


def check_memory(
    params: int, trainable: int, batch: int, seq: int, layers: int, d: int, vocab: int, device: torch.device
) -> int:
    """Estimated training memory (weights, gradients and AdamW moments of trainable tensors,
    activations kept for backward, logits); too much for this machine is a UserError now, not an
    out-of-memory kill an hour in."""
    states = 4 * params + 12 * trainable
    activations = 4 * batch * seq * layers * d * 34
    logits = 4 * 3 * batch * seq * vocab
    need = states + activations + logits
    have = available_memory(device)
    if need > 0.9 * have:
        raise UserError(
            f"this run needs about {need / 2**30:.1f} GiB of memory but {device.type} has "
            f"{have / 2**30:.1f} GiB available: lower batch_size or seq_len (use grad_accum for the same "
            "batch), or train a smaller model"
        )
    return need
