"""KV memory for the engine: one preallocated buffer with a slot per running sequence, per-slot
lengths, and a prefix cache so prompts that share a beginning (a system prompt) skip its prefill.

Running sequences are kept in slots 0..B-1 (the engine compacts on exit), so a decode step reads the
cache through plain slices, never a gather of every sequence's history.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor

from genloop.config import ModelConfig


class SlotCache:
    """K/V for `n_slots` sequences of up to `max_len` tokens. `torch.empty`: pages are touched (and
    counted in memory) only as sequences grow into them; each column is zeroed the first time any
    batch reaches it, because a masked key still multiplies its value by 0, and 0 x NaN garbage is NaN.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        n_slots: int,
        max_len: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (cfg.decoder_layers, n_slots, cfg.kv_heads, max_len, cfg.dim_per_head)
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.lengths = [0] * n_slots
        self.n_slots, self.max_len = n_slots, max_len
        self.clean = 0  # columns [0, clean) hold zeros or real K/V in every slot

    def ensure_clean(self, total: int) -> None:
        if total > self.clean:
            self.k[:, :, :, self.clean : total].zero_()
            self.v[:, :, :, self.clean : total].zero_()
            self.clean = total

    def view(self, start: int, stop: int, new_tokens: int) -> CacheView:
        """The model-facing cache for slots [start, stop), each about to receive `new_tokens`."""
        return CacheView(self, start, stop, new_tokens)

    def move(self, src: int, dst: int) -> None:
        """Copy a sequence's cache to another slot (compaction when a sequence leaves)."""
        n = self.lengths[src]
        self.k[:, dst, :, :n] = self.k[:, src, :, :n]
        self.v[:, dst, :, :n] = self.v[:, src, :, :n]
        self.lengths[dst] = n

    def write_prefix(self, slot: int, k: Tensor, v: Tensor) -> None:
        """Put cached prefix K/V ([layers, heads, n, dim]) at the start of a slot."""
        n = k.shape[2]
        self.k[:, slot, :, :n] = k
        self.v[:, slot, :, :n] = v
        self.lengths[slot] = n

    def read(self, slot: int, start: int, stop: int) -> tuple[Tensor, Tensor]:
        return self.k[:, slot, :, start:stop].clone(), self.v[:, slot, :, start:stop].clone()


class CacheView:
    """What the model sees during one forward: rows = slots [start, stop), each with its own past."""

    def __init__(self, cache: SlotCache, start: int, stop: int, new_tokens: int) -> None:
        self.cache, self.start, self.stop, self.t = cache, start, stop, new_tokens
        self.past = torch.tensor(cache.lengths[start:stop], dtype=torch.long, device=cache.k.device)
        self.total = max(cache.lengths[start:stop]) + new_tokens
        self._first = cache.lengths[start]  # a single row's past, without reading a tensor per layer
        self._rows: Tensor | None = None  # slot indices and write positions, made once per forward
        self._positions: Tensor | None = None
        cache.ensure_clean(self.total)

    def past_length(self) -> int:  # only meaningful for a single row; the model uses batch_* below
        return int(self.past[0])

    def batch_positions(self, t: int) -> Tensor:
        return self.past[:, None] + torch.arange(t, device=self.past.device)[None, :]

    def batch_mask(self, t: int) -> Tensor:
        """[B, 1, t, total]: each new token sees its row's past and the new tokens up to itself."""
        keys = torch.arange(self.total, device=self.past.device)[None, None, :]
        return (keys <= self.batch_positions(t)[:, :, None])[:, None]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        kc, vc = self.cache.k[layer], self.cache.v[layer]
        rows = self.stop - self.start
        if rows == 1:
            p = self._first
            kc[self.start, :, p : p + self.t] = k[0]  # copy_ rounds to an fp16 cache's dtype
            vc[self.start, :, p : p + self.t] = v[0]
        else:  # one scatter per tensor: [rows, 1] x [rows, t] indices take k as [rows, t, heads, dim]
            if self._rows is None:
                self._rows = torch.arange(self.start, self.stop, device=k.device)[:, None]
                self._positions = self.batch_positions(self.t)
            kc[self._rows, :, self._positions] = k.transpose(1, 2).to(kc.dtype)
            vc[self._rows, :, self._positions] = v.transpose(1, 2).to(vc.dtype)
        return kc[self.start : self.stop, :, : self.total], vc[self.start : self.stop, :, : self.total]

    def cross(self, layer: int) -> tuple[Tensor, Tensor] | None:
        return None

    def set_cross(self, layer: int, k: Tensor, v: Tensor) -> None:
        raise NotImplementedError("the slot cache serves decoder-only models")

    def commit(self) -> None:
        """Record the new tokens in the slots' lengths once the forward succeeded."""
        for i, slot in enumerate(range(self.start, self.stop)):
            self.cache.lengths[slot] = int(self.past[i]) + self.t


@dataclass
class _Block:
    k: Tensor
    v: Tensor


class PrefixCache:
    """K/V of prompt prefixes in blocks of `block` tokens, keyed by the hash of all tokens up to the
    block's end; least recently used blocks are dropped past `capacity` tokens."""

    def __init__(self, block: int = 32, capacity: int = 16384) -> None:
        self.block, self.capacity = block, capacity
        self.blocks: OrderedDict[bytes, _Block] = OrderedDict()

    def _keys(self, tokens: list[int]) -> list[bytes]:
        digest, keys = hashlib.blake2b(digest_size=16), []
        for end in range(self.block, len(tokens) + 1, self.block):
            digest.update(torch.tensor(tokens[end - self.block : end], dtype=torch.int64).numpy().tobytes())
            keys.append(digest.copy().digest())
        return keys

    def lookup(self, tokens: list[int]) -> tuple[int, Tensor | None, Tensor | None]:
        """Longest cached prefix, leaving at least one token to run (its logits start generation)."""
        ks, vs = [], []
        for key in self._keys(tokens[:-1]):
            block = self.blocks.get(key)
            if block is None:
                break
            self.blocks.move_to_end(key)
            ks.append(block.k)
            vs.append(block.v)
        if not ks:
            return 0, None, None
        return len(ks) * self.block, torch.cat(ks, dim=2), torch.cat(vs, dim=2)

    def store(self, tokens: list[int], cache: SlotCache, slot: int) -> None:
        for i, key in enumerate(self._keys(tokens)):
            if key in self.blocks:
                self.blocks.move_to_end(key)
                continue
            k, v = cache.read(slot, i * self.block, (i + 1) * self.block)
            self.blocks[key] = _Block(k, v)
        while len(self.blocks) * self.block > self.capacity:
            self.blocks.popitem(last=False)
