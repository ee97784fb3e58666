"""`PackedDataset`: what the trainer reads. Fixed-length windows of a shard split, in a random order
that depends only on (seed, epoch), so a run is reproducible, resumable at an exact step, and split
across torchrun ranks without two ranks ever seeing the same window.

The split's shards are one token stream (documents joined by the end-of-text id). Window `i` holds
tokens `[i*T, i*T + T + 1)`: inputs are its first T tokens, targets its last T. Each epoch permutes
the windows; rank r of W takes every W-th window of that permutation, and step s of a rank is its
windows `[s*B, (s+1)*B)`. Nothing is read until a batch needs it (numpy.memmap).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genloop.data.shards import Shards
from genloop.errors import UserError


def distributed_position() -> tuple[int, int]:
    """(rank, world size) of this process: torch.distributed when initialised, else torchrun's
    environment variables, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def resolve_position(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """The given (rank, world size), else this process's place under torchrun."""
    if rank is None or world_size is None:
        rank, world_size = distributed_position()
    if not 0 <= rank < world_size:
        raise UserError(f"rank {rank} is outside world size {world_size}")
    return rank, world_size


class StepBatches:
    """What the trainer needs of any dataset besides `batch(step)`: length, iteration, resume.

    Subclasses set `steps_per_epoch`, `seed`, `seq_len`, `batch_size` and name in `_state_keys` the
    settings a resumed run must share (a different layout would not be a resume).
    """

    steps_per_epoch: int
    seed: int
    seq_len: int
    batch_size: int
    step: int = 0
    _state_keys: tuple[str, ...] = ("seed", "seq_len", "batch_size")

    def batch(self, step: int) -> Any:
        raise NotImplementedError

    def __len__(self) -> int:
        """Steps in one epoch for this rank."""
        return self.steps_per_epoch

    def __iter__(self) -> Iterator[Any]:
        """Endless batches from the current step; the step advances as they are taken."""
        while True:
            batch = self.batch(self.step)
            self.step += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, **{key: getattr(self, key) for key in self._state_keys}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume at the exact step a checkpoint recorded, refusing changed data settings."""
        for key in self._state_keys:
            if key in state and state[key] != getattr(self, key):
                raise UserError(
                    f"the checkpoint's data loader used {key}={state[key]}, this run {getattr(self, key)}: "
                    "resume with the same data settings"
                )
        self.step = int(state["step"])


class PackedDataset(StepBatches):
    """Batches of `(inputs, targets)`, each `[batch_size, seq_len]` int64, by global step."""

    def __init__(
        self,
        shards: str | os.PathLike[str] | Shards,
        split: str = "train",
        seq_len: int = 512,
        batch_size: int = 8,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        self.shards = shards if isinstance(shards, Shards) else Shards.open(Path(shards))
        rank, world_size = resolve_position(rank, world_size)
        self.split, self.seq_len, self.batch_size = split, seq_len, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.arrays = self.shards.arrays(split)
        sizes = np.array([a.size for a in self.arrays], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])
        self.total_tokens = int(self.offsets[-1])
        self.windows = max(0, (self.total_tokens - 1) // seq_len)
        self.per_rank = self.windows // world_size
        self.steps_per_epoch = self.per_rank // batch_size
        if self.steps_per_epoch == 0:
            raise UserError(
                f"split '{split}' has {self.total_tokens:,} tokens: too few for one batch of "
                f"{batch_size} x {seq_len} per rank on {world_size} rank(s); lower batch_size or seq_len"
            )
        self.step = 0
        self._epoch: int | None = None
        self._order = np.empty(0, dtype=np.int64)

    def order(self, epoch: int) -> np.ndarray:
        """This rank's windows for `epoch`, in the order it reads them."""
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            perm = rng.permutation(self.windows)[: self.per_rank * self.world_size]
            self._order, self._epoch = perm.reshape(self.per_rank, self.world_size)[:, self.rank], epoch
        return self._order

    def window(self, index: int) -> np.ndarray:
        """Tokens `[index*T, index*T + T + 1)` of the stream, across a shard boundary if need be."""
        start, stop = index * self.seq_len, index * self.seq_len + self.seq_len + 1
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        pieces, k = [], first
        while start < stop:
            end = min(stop, int(self.offsets[k + 1]))
            pieces.append(self.arrays[k][start - self.offsets[k] : end - self.offsets[k]])
            start, k = end, k + 1
        return np.concatenate(pieces) if len(pieces) > 1 else np.asarray(pieces[0])

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch this rank reads at global `step` (epochs follow one another)."""
        epoch, i = divmod(step, self.steps_per_epoch)
        chosen = self.order(epoch)[i * self.batch_size : (i + 1) * self.batch_size]
        rows = np.stack([self.window(int(w)) for w in chosen]).astype(np.int64)
        data = torch.from_numpy(rows)
        return data[:, :-1], data[:, 1:]
