"""Reading PyTorch's CPU int4 packing back: codes for fusing layers and for dense copies.

The packing (aten/src/ATen/native/cpu/int4mm_kernel.cpp) lays rows out in blocks of BLOCK_N (64 on
AVX512, 32 otherwise), each block [K, nb/2] bytes. Full blocks on AVX2/AVX512 pair row r with row
r + nb/2 in one byte ("halves"); partial blocks and the scalar build pair 2j with 2j + 1 ("pairs").
The layout is not public, so it is confirmed by a round trip before use.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

_int4_pack = getattr(torch, "_convert_weight_to_int4pack_for_cpu", None) or getattr(
    torch.ops.aten, "_convert_weight_to_int4pack_for_cpu", None
)
Layout = tuple[int, bool]


def _unpack_block(blk: Tensor, halves: bool) -> Tensor:
    """blk uint8 [NB, K, nb/2] -> codes [NB * nb, K]."""
    nblk, k, half = blk.shape
    lo, hi = blk & 15, blk >> 4
    if halves:  # byte j: rows j (low nibble) and j + nb/2 (high)
        return torch.stack((lo, hi), 1).transpose(2, 3).reshape(nblk * 2 * half, k)
    return torch.stack((lo, hi), -1).view(nblk, k, 2 * half).transpose(1, 2).reshape(nblk * 2 * half, k)


def unpack_int4(packed: Tensor, n: int, layout: Layout | None = None) -> Tensor:
    """Codes uint8 [N, K] back from `_convert_weight_to_int4pack_for_cpu`'s packing."""
    block_n, halves = layout or int4_layout() or (0, False)
    if not block_n:
        raise RuntimeError("the CPU int4 packing of this torch build is not one genloop can read")
    k = packed.numel() * 2 // n
    flat, full = packed.reshape(-1), n // block_n
    parts = []
    if full:
        parts.append(_unpack_block(flat[: full * block_n * k // 2].view(full, k, block_n // 2), halves))
    if n % block_n:
        parts.append(_unpack_block(flat[full * block_n * k // 2 :].view(1, k, (n % block_n) // 2), False))
    return torch.cat(parts) if len(parts) > 1 else parts[0]


@functools.cache
def int4_layout() -> Layout | None:
    """The packing of this torch build, found by a round trip on first use, not at import: a
    parallel op on the importing thread starts an OpenMP team there, and with two teams on two cores
    libgomp stops spin-waiting, which makes every kernel of the engine's thread ~1.5x slower."""
    if _int4_pack is None:
        return None
    gen = torch.Generator().manual_seed(0)
    q = torch.randint(0, 16, (176, 64), generator=gen, dtype=torch.int32)  # full and partial blocks
    try:
        packed = _int4_pack(q, 2)
    except RuntimeError:
        return None
    for layout in ((64, True), (32, True), (32, False), (64, False)):
        if torch.equal(unpack_int4(packed, q.shape[0], layout).int(), q):
            return layout
    return None
