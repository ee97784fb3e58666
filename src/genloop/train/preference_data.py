"""Preference pairs (DPO, IPO, reward models) and single rated completions (KTO) as training batches.

Rows use TRL's field names, conversational or plain: `{"prompt", "chosen", "rejected"}` and
`{"prompt", "completion", "label"}`, where prompt is a string or a list of messages and each answer a
string or a list holding the assistant message (what `genloop feedback export` writes). Each answer
is tokenized after its prompt the way SFT does it (`sft_data.ChatEncoder`), so the loss covers the
answer's tokens and its end-of-turn token, nothing of the prompt.

A batch holds one sequence per row, right-padded (a causal model needs no mask for that): pairs as
`[chosen rows; rejected rows]`, KTO rows followed by their mismatched (prompt i, completion i+1)
rows, whose log-probs give KTO its reference point. Reference log-probs are constant per sequence,
so they are computed once before training (`attach_reference`) by a frozen model: a separate
reference model, or the starting model itself, which is what "the base with LoRA disabled" is at
step 0, unless the rows carry them (`ref_chosen_logps`, `ref_rejected_logps`, as TRL precomputes
them). Training then holds one model in memory and runs one forward per step, not two.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from genloop.data.loader import StepBatches, resolve_position
from genloop.errors import UserError
from genloop.preprocess.tokenizer import Tokenizer
from genloop.train.sft_data import IGNORE, ChatEncoder, Records, _plan, no_examples, read_records

Encoded = tuple[np.ndarray, int]  # token ids, index of the first learned token


def as_answer(value: object, prompt: object, where: str, field: str) -> object:
    """An answer in the prompt's form: a string after a string prompt, messages after messages."""
    if isinstance(prompt, list) and isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    if isinstance(value, str | list):
        return value
    raise UserError(f"{where}: '{field}' must be a string or a list of messages, got {type(value).__name__}")


def _require(record: Mapping[str, Any], where: str, fields: Sequence[str]) -> None:
    missing = [f for f in fields if f not in record]
    if missing:
        raise UserError(
            f"{where}: missing field(s) {', '.join(missing)}; each line needs {', '.join(fields)} "
            f"(got {', '.join(record) or 'nothing'})"
        )


class PairEncoder:
    def __init__(self, tokenizer: Tokenizer, seq_len: int) -> None:
        self.chat, self.tokenizer, self.seq_len = ChatEncoder(tokenizer), tokenizer, seq_len

    def encode(self, where: str, prompt: object, answer: object) -> Encoded | None:
        """Ids of prompt + answer, cut to seq_len + 1; None when no answer token is left."""
        plan = _plan(where, {"prompt": prompt, "completion": answer})
        texts = self.chat.texts(plan)
        ids, flags = self.chat.targets(
            plan, self.tokenizer.encode_batch(texts, add_special_tokens=plan.plain)
        )
        ids, flags = ids[: self.seq_len + 1], flags[: self.seq_len + 1]
        learned = np.flatnonzero(flags[1:])
        if learned.size == 0:
            return None
        return np.asarray(ids, dtype=np.int64), int(learned[0]) + 1


def collate(seqs: Sequence[Encoded], pad: int) -> dict[str, Tensor]:
    """Right-padded inputs and shifted labels (-100 on prompt and padding) for whole sequences."""
    width = max(len(ids) for ids, _ in seqs) - 1
    input_ids = np.full((len(seqs), width), pad, dtype=np.int64)
    labels = np.full((len(seqs), width), IGNORE, dtype=np.int64)
    for row, (ids, start) in enumerate(seqs):
        input_ids[row, : len(ids) - 1] = ids[:-1]
        labels[row, start - 1 : len(ids) - 1] = ids[start:]
    return {"input_ids": torch.from_numpy(input_ids), "labels": torch.from_numpy(labels)}


def pad_token(tokenizer: Tokenizer) -> int:
    return next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)


def pair_batches(
    tokenizer: Tokenizer,
    prompts: Sequence[object],
    answers: Sequence[object],
    seq_len: int,
    what: str = "pair",
    batch_size: int = 8,
) -> Iterator[tuple[dict[str, Tensor], list[Encoded]]]:
    """(prompt, answer) pairs outside a dataset (scoring, evaluation) as collated batches, in order."""
    encoder = PairEncoder(tokenizer, seq_len)
    seqs = []
    for i, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        encoded = encoder.encode(f"{what} {i}", prompt, as_answer(answer, prompt, f"{what} {i}", "answer"))
        if encoded is None:
            raise UserError(f"{what} {i}: no answer token fits within seq_len {seq_len}; raise seq_len")
        seqs.append(encoded)
    pad = pad_token(tokenizer)
    for lo in range(0, len(seqs), batch_size):
        part = seqs[lo : lo + batch_size]
        yield collate(part, pad), part


def sequence_logps(model: nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
    """Sum of each row's answer-token log-probabilities [rows] (the quantity DPO and KTO compare)."""
    per_token = model(batch["input_ids"], labels=batch["labels"], reduction="none")
    return -per_token.float().sum(dim=1)


def _given_reference(record: Mapping[str, Any], where: str) -> tuple[float, float] | None:
    """Precomputed reference log-probs in a row (TRL's `ref_chosen_logps`, `ref_rejected_logps`)."""
    if "ref_chosen_logps" not in record and "ref_rejected_logps" not in record:
        return None
    try:
        return float(record["ref_chosen_logps"]), float(record["ref_rejected_logps"])
    except (KeyError, TypeError, ValueError):
        raise UserError(
            f"{where}: give both ref_chosen_logps and ref_rejected_logps as numbers, or neither"
        ) from None


class _RatedData(StepBatches):
    """Shared by both datasets: sequences by example, a seeded order per epoch, ranks dealt
    round-robin, reference log-probs once per sequence."""

    _state_keys = ("seed", "seq_len", "batch_size")
    rows_per_example = 2
    what = "examples"

    def __init__(
        self,
        source: Records,
        tokenizer: Tokenizer,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if seq_len < 2 or batch_size < 1:
            raise UserError(f"seq_len must be >= 2 and batch_size >= 1, got {seq_len} and {batch_size}")
        self.rank, self.world_size = resolve_position(rank, world_size)
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.pad_id = pad_token(tokenizer)
        self.encoder = PairEncoder(tokenizer, seq_len)
        self.skipped: dict[str, int] = {}
        self.ref: np.ndarray | None = None  # [examples, rows_per_example] reference log-probs
        self._load(source)
        self._finish(source, len(self), self.what)

    def _load(self, source: Records) -> None:
        raise NotImplementedError

    def _finish(self, source: Records, count: int, what: str) -> None:
        if count == 0:
            raise no_examples(source, self.skipped, what)
        self.steps_per_epoch = count // (self.batch_size * self.world_size)
        if self.steps_per_epoch == 0:
            raise UserError(
                f"{count} {what} make no batch of {self.batch_size} per rank on {self.world_size} rank(s): "
                "lower batch_size or add data"
            )

    def _skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def indices(self, step: int) -> np.ndarray:
        """Example indices this rank reads at global `step`."""
        epoch, i = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self))
        order = order[: self.steps_per_epoch * self.batch_size * self.world_size][
            self.rank :: self.world_size
        ]
        return order[i * self.batch_size : (i + 1) * self.batch_size]

    def __len__(self) -> int:  # examples, not steps: StepBatches' length is steps_per_epoch
        raise NotImplementedError

    def sequences(self, indices: np.ndarray) -> list[Encoded]:
        raise NotImplementedError

    def _with_reference(self, batch: dict[str, Tensor], indices: np.ndarray) -> dict[str, Tensor]:
        if self.ref is not None:
            ref = self.ref[indices]
            if np.isnan(ref).any():
                raise UserError(
                    "this batch reads examples whose reference log-probs were not computed (the run was "
                    "set up for fewer steps); start the run again rather than extending it"
                )
            batch["ref_logps"] = torch.from_numpy(ref.T.reshape(-1).copy())
        return batch

    @torch.no_grad()
    def attach_reference(
        self,
        model: nn.Module,
        batch_size: int = 8,
        autocast: torch.dtype | None = None,
        steps: int | None = None,
    ) -> None:
        """Log-probs of the sequences under the frozen `model` (eval mode), once: of every example,
        or only of those the first `steps` batches read (a short run over a big file)."""
        n = len(self)
        if steps is None or steps >= self.steps_per_epoch:
            todo = np.arange(n)
        else:
            todo = np.unique(np.concatenate([self.indices(s) for s in range(steps)]))
        ref = np.full((n, self.rows_per_example), np.nan)
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        try:
            for lo in range(0, len(todo), batch_size):
                idx = todo[lo : lo + batch_size]
                batch = {k: v.to(device) for k, v in collate(self.sequences(idx), self.pad_id).items()}
                with torch.autocast(
                    device.type, dtype=autocast or torch.float32, enabled=autocast is not None
                ):
                    logps = sequence_logps(model, batch).double().cpu().numpy()
                ref[idx] = logps.reshape(self.rows_per_example, -1).T
        finally:
            model.train(was_training)
        self.ref = ref


class PreferenceDataset(_RatedData):
    """Pairs: batches of `input_ids`/`labels` `[2B, T]` (chosen rows, then rejected rows) and, once
    attached, `ref_logps` `[2B]`. `answer_tokens` [2B] counts each answer's tokens (IPO averages)."""

    what = "preference pairs"

    def _load(self, source: Records) -> None:
        self.pairs: list[tuple[Encoded, Encoded]] = []
        given: list[tuple[float, float] | None] = []  # reference log-probs carried by the rows
        same: list[str] = []
        for where, record in read_records(source):
            _require(record, where, ("prompt", "chosen", "rejected"))
            prompt = record["prompt"]
            chosen = as_answer(record["chosen"], prompt, where, "chosen")
            rejected = as_answer(record["rejected"], prompt, where, "rejected")
            if chosen == rejected:
                same.append(where)
                continue
            a, b = self.encoder.encode(where, prompt, chosen), self.encoder.encode(where, prompt, rejected)
            if a is None or b is None:
                self._skip("answers_cut_off_by_seq_len")
                continue
            self.pairs.append((a, b))
            given.append(_given_reference(record, where))
        if same:
            more = f" and {len(same) - 1} more" if len(same) > 1 else ""
            raise UserError(
                f"{same[0]}{more}: 'chosen' equals 'rejected', so the pair teaches nothing; "
                "remove such pairs (or fix how they were collected)"
            )
        if given and all(g is not None for g in given):
            self.ref = np.asarray(given, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.pairs)

    def sequences(self, indices: np.ndarray) -> list[Encoded]:
        return [self.pairs[i][0] for i in indices] + [self.pairs[i][1] for i in indices]

    def batch(self, step: int) -> dict[str, Tensor]:
        indices = self.indices(step)
        seqs = self.sequences(indices)
        batch = collate(seqs, self.pad_id)
        batch["answer_tokens"] = torch.tensor([len(ids) - start for ids, start in seqs], dtype=torch.float32)
        return self._with_reference(batch, indices)


class KTODataset(_RatedData):
    """Rated completions: `input_ids`/`labels` `[2B, T]` (the B completions, then B mismatched
    pairs, KTO's KL sample), `desirable` `[B]` and, once attached, `ref_logps` `[2B]`.

    TRL mismatches prompt i with completion i+1 of the same batch. Here every example has one fixed
    partner (a seeded cycle through all examples), so the mismatched sequence, and its reference
    log-prob, belong to the example and can be computed once like the others."""

    what = "rated completions"

    def _load(self, source: Records) -> None:
        if self.batch_size < 2:
            raise UserError("KTO needs batch_size >= 2: its reference point pairs prompts with other answers")
        self.rows: list[tuple[Encoded, bool]] = []
        for where, record in read_records(source):
            _require(record, where, ("prompt", "completion", "label"))
            label = record["label"]
            if not isinstance(label, bool):
                raise UserError(f"{where}: 'label' must be true (desirable) or false, got {label!r}")
            prompt = record["prompt"]
            encoded = self.encoder.encode(
                where, prompt, as_answer(record["completion"], prompt, where, "completion")
            )
            if encoded is None:
                self._skip("completions_cut_off_by_seq_len")
                continue
            self.rows.append((encoded, label))
        cycle = np.random.default_rng([self.seed, 1]).permutation(len(self.rows))
        self.partner = np.empty_like(cycle)
        self.partner[cycle] = np.roll(cycle, -1)

    def __len__(self) -> int:
        return len(self.rows)

    def _mismatched(self, i: int, j: int) -> Encoded:
        (ids_i, start_i), _ = self.rows[i]
        (ids_j, start_j), _ = self.rows[j]
        ids = np.concatenate([ids_i[:start_i], ids_j[start_j:]])[: self.seq_len + 1]
        return ids, min(start_i, len(ids) - 1)

    def sequences(self, indices: np.ndarray) -> list[Encoded]:
        return [self.rows[i][0] for i in indices] + [self._mismatched(i, self.partner[i]) for i in indices]

    def batch(self, step: int) -> dict[str, Tensor]:
        indices = self.indices(step)
        batch = collate(self.sequences(indices), self.pad_id)
        batch["desirable"] = torch.tensor([self.rows[i][1] for i in indices])
        return self._with_reference(batch, indices)
