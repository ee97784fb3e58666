"""`SpanCorruptionDataset`: T5's pretraining objective over token shards.

Each example is a window of the shard stream with about `noise_density` of its tokens hidden in
spans of mean length `mean_span_length`. The encoder reads the window with every span replaced by a
sentinel; the decoder writes, after each sentinel, the tokens it stood for:

    window   a b c d e f g h            inputs   a <s0> d e <s1> h </s>
    noise      ^   ^     ^ ^            targets  <s0> b c <s1> f g </s>

Span counts and lengths follow T5's `random_spans_noise_mask`: the number of noise tokens and spans is
fixed by the window length, and the cut points are random. The window length is the largest one
whose corrupted input fits `seq_len` (T5's `compute_input_and_target_lengths`), so every row has the
same input and target length. Windows, their order and the rank split are `PackedDataset`'s; the
noise of a window depends on (seed, epoch, window), so batches are a pure function of the step.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from genloop.data.loader import PackedDataset, StepBatches, resolve_position
from genloop.data.shards import Shards
from genloop.errors import UserError
from genloop.preprocess.tokenizer import Tokenizer


def noise_counts(length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """(noise tokens, noise spans) for a window of `length` tokens, as T5 computes them."""
    noise = min(max(round(length * noise_density), 1), length - 1)
    spans = max(round(noise / mean_span_length), 1)
    return noise, min(spans, length - noise)  # each span needs a kept span before it


def corrupted_lengths(length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """(input length, target length) of a corrupted window, both counting the closing EOS."""
    noise, spans = noise_counts(length, noise_density, mean_span_length)
    return length - noise + spans + 1, noise + spans + 1


def window_length(seq_len: int, noise_density: float, mean_span_length: float) -> int:
    """The longest window whose corrupted input still fits in `seq_len` tokens."""
    if corrupted_lengths(2, noise_density, mean_span_length)[0] > seq_len:
        raise UserError(f"seq_len {seq_len} is too short for span corruption: use at least 3")
    length = 2
    while corrupted_lengths(length + 1, noise_density, mean_span_length)[0] <= seq_len:
        length += 1  # the input length never shrinks as the window grows, so the first miss is the end
    return length


def random_segmentation(rng: np.random.Generator, items: int, segments: int) -> np.ndarray:
    """Lengths of `segments` non-empty pieces that `items` in a row are cut into, uniformly at random."""
    cuts = np.sort(rng.choice(items - 1, segments - 1, replace=False)) + 1
    return np.diff(np.concatenate([[0], cuts, [items]]))


def corrupt(
    window: np.ndarray,
    rng: np.random.Generator,
    sentinels: np.ndarray,
    eos: int,
    noise_density: float,
    mean_span_length: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) of one window: kept and noise spans alternate, a kept span first."""
    noise, spans = noise_counts(len(window), noise_density, mean_span_length)
    noise_spans = random_segmentation(rng, noise, spans)
    kept_spans = random_segmentation(rng, len(window) - noise, spans)
    is_noise = np.repeat(np.tile([False, True], spans), np.stack([kept_spans, noise_spans], 1).ravel())
    # each sentinel goes where its noise span was: after kept span i in the inputs, before noise span i
    inputs = np.insert(window[~is_noise], np.cumsum(kept_spans), sentinels[:spans])
    targets = np.insert(window[is_noise], np.cumsum(noise_spans) - noise_spans, sentinels[:spans])
    return np.append(inputs, eos), np.append(targets, eos)


def find_sentinels(tokenizer: Tokenizer, needed: int) -> np.ndarray:
    """`<extra_id_0>`, `<extra_id_1>`, ... when the tokenizer has them, else the vocabulary's last ids
    counting down (T5's and Hugging Face's convention for vocabularies without named sentinels)."""
    named = []
    while (token := tokenizer.token_to_id(f"<extra_id_{len(named)}>")) is not None:
        named.append(token)
    if named and len(named) < needed:
        raise UserError(
            f"the tokenizer has {len(named)} <extra_id_N> sentinels but a window can hold {needed} spans: "
            "add more sentinel tokens, lower seq_len or raise mean_span_length"
        )
    if named:
        return np.asarray(named[:needed], dtype=np.int64)
    if needed >= tokenizer.vocab_size:
        raise UserError(f"a vocabulary of {tokenizer.vocab_size} cannot spare {needed} sentinel ids")
    return tokenizer.vocab_size - 1 - np.arange(needed, dtype=np.int64)


class SpanCorruptionDataset(StepBatches):
    """Batches of `input_ids`, `attention_mask` (1 on real tokens) `[B, seq_len]`, `decoder_input_ids`
    and `labels` `[B, target_len]`, by global step."""

    _state_keys = ("seed", "seq_len", "batch_size", "noise_density", "mean_span_length")

    def __init__(
        self,
        shards_dir: str | os.PathLike[str] | Shards,
        tokenizer_or_sentinels: Tokenizer | Sequence[int],
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        noise_density: float = 0.15,
        mean_span_length: float = 3.0,
        rank: int | None = None,
        world_size: int | None = None,
        *,
        split: str = "train",
        decoder_start_token_id: int | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
    ) -> None:
        if not 0 < noise_density < 1:
            raise UserError(f"noise_density must lie between 0 and 1, got {noise_density}")
        if mean_span_length < 1:
            raise UserError(f"mean_span_length must be at least 1, got {mean_span_length}")
        rank, world_size = resolve_position(rank, world_size)
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.noise_density, self.mean_span_length = noise_density, mean_span_length
        self.window_len = window_length(seq_len, noise_density, mean_span_length)
        self.input_len, self.target_len = corrupted_lengths(self.window_len, noise_density, mean_span_length)
        # non-overlapping windows of window_len tokens: PackedDataset's window i holds one token more
        self.windows = PackedDataset(shards_dir, split, self.window_len, batch_size, seed, rank, world_size)
        self.steps_per_epoch = len(self.windows)
        spans = noise_counts(self.window_len, noise_density, mean_span_length)[1]
        tokenizer = tokenizer_or_sentinels if isinstance(tokenizer_or_sentinels, Tokenizer) else None
        if tokenizer is not None:
            self.sentinels = find_sentinels(tokenizer, spans)
        else:
            self.sentinels = np.asarray(list(tokenizer_or_sentinels), dtype=np.int64)
            if len(self.sentinels) < spans or len(set(self.sentinels.tolist())) != len(self.sentinels):
                raise UserError(f"give at least {spans} distinct sentinel ids (a window holds {spans} spans)")
        tokenizer_eos = tokenizer.eos_token_id if tokenizer is not None else None
        candidates = (eos_token_id, tokenizer_eos, self.windows.shards.eos_token_id)
        eos = next((i for i in candidates if i is not None), None)
        if eos is None:
            raise UserError("span corruption needs an end-of-sequence id: the tokenizer and shards name none")
        self.eos = int(eos)
        pad = pad_token_id if pad_token_id is not None or tokenizer is None else tokenizer.pad_token_id
        self.pad = int(pad) if pad is not None else self.eos
        self.decoder_start = decoder_start_token_id if decoder_start_token_id is not None else self.pad
        self.step = 0

    def example(self, epoch: int, window: int) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, targets) of one window in one epoch: the same pair every time it is asked for."""
        tokens = self.windows.window(window)[: self.window_len].astype(np.int64)
        rng = np.random.default_rng([self.seed, epoch, window])
        return corrupt(tokens, rng, self.sentinels, self.eos, self.noise_density, self.mean_span_length)

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        """The batch this rank reads at global `step` (epochs follow one another)."""
        epoch, i = divmod(step, self.steps_per_epoch)
        chosen = self.windows.order(epoch)[i * self.batch_size : (i + 1) * self.batch_size]
        pairs = [self.example(epoch, int(w)) for w in chosen]
        inputs = np.full((len(pairs), self.seq_len), self.pad, dtype=np.int64)
        mask = np.zeros((len(pairs), self.seq_len), dtype=np.int64)
        inputs[:, : self.input_len] = np.stack([p[0] for p in pairs])
        mask[:, : self.input_len] = 1
        labels = torch.from_numpy(np.stack([p[1] for p in pairs]))
        start = torch.full((len(pairs), 1), self.decoder_start, dtype=torch.int64)
        return {
            "input_ids": torch.from_numpy(inputs),
            "attention_mask": torch.from_numpy(mask),
            "decoder_input_ids": torch.cat([start, labels[:, :-1]], dim=1),
            "labels": labels,
        }
