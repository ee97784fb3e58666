"""`ClassificationDataset`: JSONL of text and label as batches for a sequence classifier.

Labels may be names (strings) or class ids (integers). Names map to ids by their sorted order, or by
the `labels` list given, which is how a validation set gets the training set's mapping (pass
`labels=train.labels`); the mapping is kept as `.labels` so it can be saved beside the model.
Batches follow the same contract as every genloop dataset: a pure function of (seed, step, rank),
a new permutation each epoch, disjoint examples per rank.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from genloop.data.loader import StepBatches, resolve_position
from genloop.errors import UserError
from genloop.preprocess.tokenizer import Tokenizer
from genloop.train.sft_data import Records, no_examples, read_records


def _label(value: object, where: str, field: str) -> str | int:
    # bool is an int in Python, but `true` as a class is almost surely a mistake in the file
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise UserError(f"{where}: '{field}' must be a string or an integer, got {value!r}")
    if isinstance(value, int) and value < 0:
        raise UserError(f"{where}: '{field}' {value} is negative; class ids start at 0")
    return value


def label_names(values: Sequence[str | int], given: Sequence[str] | None) -> list[str]:
    """The class names in id order: the given list, else the sorted names, else ids 0..max."""
    if given is not None:
        names = [str(n) for n in given]
        if not names or len(set(names)) != len(names):
            raise UserError(f"labels must be a non-empty list of distinct names, got {list(given)!r}")
        return names
    kinds = {type(v) for v in values}
    if len(kinds) > 1:
        raise UserError("labels mix strings and integers; use one kind throughout the file")
    if kinds == {int}:
        return [str(i) for i in range(max(values) + 1)]  # type: ignore[type-var]
    return sorted({str(v) for v in values})


class ClassificationDataset(StepBatches):
    """Batches of `input_ids`, `attention_mask` `[B, T]` (T the longest text in the batch, at most
    seq_len; 1 on real tokens) and `labels` `[B]`, by global step."""

    def __init__(
        self,
        path: Records,
        tokenizer: Tokenizer,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        text_field: str = "text",
        label_field: str = "label",
        labels: Sequence[str] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if seq_len < 1 or batch_size < 1:
            raise UserError(f"seq_len and batch_size must be positive, got {seq_len} and {batch_size}")
        self.rank, self.world_size = resolve_position(rank, world_size)
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.pad_id = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)
        self.skipped: dict[str, int] = {}
        self.truncated = 0
        texts, values, places = self._read(path, text_field, label_field)
        self.labels = label_names(values, labels)
        ids = self._map(values, places, label_field)
        encoded = tokenizer.encode_batch(texts) if texts else []
        kept_tokens, kept_labels = [], []
        for tokens, label in zip(encoded, ids, strict=True):
            if not tokens:
                self.skipped["empty_text"] = self.skipped.get("empty_text", 0) + 1
                continue
            if len(tokens) > seq_len:
                self.truncated += 1
                tokens = tokens[:seq_len]
            kept_tokens.append(np.asarray(tokens, dtype=np.int64))
            kept_labels.append(label)
        if not kept_tokens:
            raise no_examples(path, self.skipped, "examples")
        self.tokens = kept_tokens
        self.targets = np.asarray(kept_labels, dtype=np.int64)
        self.counts = {self.labels[i]: n for i, n in sorted(Counter(kept_labels).items())}
        self.steps_per_epoch = len(self.tokens) // (self.world_size * batch_size)
        if self.steps_per_epoch == 0:
            raise UserError(
                f"{len(self.tokens)} examples are too few for one batch of {batch_size} per rank on "
                f"{self.world_size} rank(s); lower batch_size or add examples"
            )
        self.step = 0
        self._epoch: int | None = None
        self._order = np.empty(0, dtype=np.int64)

    @staticmethod
    def _read(
        path: Records, text_field: str, label_field: str
    ) -> tuple[list[str], list[str | int], list[str]]:
        texts: list[str] = []
        values: list[str | int] = []
        places: list[str] = []
        for where, record in read_records(path):
            for field in (text_field, label_field):
                if field not in record:
                    raise UserError(f"{where}: no '{field}' field (fields: {', '.join(record) or 'none'})")
            text = record[text_field]
            if not isinstance(text, str):
                raise UserError(f"{where}: '{text_field}' must be a string, got {type(text).__name__}")
            texts.append(text)
            values.append(_label(record[label_field], where, label_field))
            places.append(where)
        return texts, values, places

    def _map(self, values: Sequence[str | int], places: Sequence[str], field: str) -> list[int]:
        """Class ids: names looked up in `.labels`, integers checked against its length."""
        index = {name: i for i, name in enumerate(self.labels)}
        out = []
        for value, where in zip(values, places, strict=True):
            if isinstance(value, int):
                if value >= len(self.labels):
                    raise UserError(
                        f"{where}: '{field}' {value} is out of range for {len(self.labels)} labels "
                        f"({', '.join(self.labels)})"
                    )
                out.append(value)
            elif value in index:
                out.append(index[value])
            else:
                raise UserError(
                    f"{where}: '{field}' {value!r} is not one of the labels ({', '.join(self.labels)})"
                )
        return out

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return (
            f"ClassificationDataset({len(self.tokens)} examples, labels={self.counts}, "
            f"truncated={self.truncated}, skipped={self.skipped})"
        )

    def order(self, epoch: int) -> np.ndarray:
        """This rank's examples for `epoch`, in the order it reads them."""
        if epoch != self._epoch:
            used = self.steps_per_epoch * self.batch_size * self.world_size
            perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.tokens))[:used]
            self._order, self._epoch = perm[self.rank :: self.world_size], epoch
        return self._order

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        """The batch this rank reads at global `step` (epochs follow one another)."""
        epoch, i = divmod(step, self.steps_per_epoch)
        chosen = self.order(epoch)[i * self.batch_size : (i + 1) * self.batch_size]
        width = max(len(self.tokens[j]) for j in chosen)
        ids = np.full((len(chosen), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(chosen), width), dtype=np.int64)
        for row, j in enumerate(chosen):
            n = len(self.tokens[j])
            ids[row, :n], mask[row, :n] = self.tokens[j], 1
        return {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(mask),
            "labels": torch.from_numpy(self.targets[chosen]),
        }

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "labels": self.labels}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume at the recorded step; a changed label mapping would silently relabel the classes."""
        if "labels" in state and list(state["labels"]) != self.labels:
            raise UserError(
                f"the checkpoint's labels were {list(state['labels'])}, this run's {self.labels}: "
                "pass the same labels"
            )
        super().load_state_dict(state)
