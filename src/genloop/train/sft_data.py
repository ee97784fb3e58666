"""`SFTDataset`: chat conversations (or prompt/completion pairs) as training batches, loss on the
assistant's tokens only, several conversations packed into each row.

Labels cover what the model must learn to say: each assistant turn's content and its end-of-turn
token (TRL's `assistant_only_loss`); a prompt/completion pair is trained on the completion only.
Assistant spans are found by rendering the conversation up to each turn and diffing token ids, so
any chat template works, not only ones whose markers we could search for in the text.

Packing follows the contract of `genloop.data.loader.PackedDataset` (batches are a pure function of
seed, step and rank). Each epoch shuffles the examples with `[seed, epoch]` and packs them best-fit
into rows of `seq_len` positions; a block-diagonal causal mask and position ids that restart at 0
keep packed examples from seeing each other, so a packed row computes exactly what each example
would alone. Rows are dealt to ranks round-robin, so ranks never share an example.

The number of rows a packing yields varies by a fraction of a percent between epochs, but steps per
epoch must be one number. So every epoch uses the rows that any packing is guaranteed to produce
(`max(ceil(tokens / seq_len), examples longer than seq_len / 2)`, rounded down to whole batches);
the rest of that epoch's rows (typically 0.5-2% on chat data) wait for the next epoch, whose new
order gives them their turn. `epoch_stats()` reports how many were left out.
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genloop.data.document import Example
from genloop.data.loader import StepBatches, resolve_position
from genloop.errors import UserError
from genloop.preprocess.tokenizer import Tokenizer

IGNORE = -100
ROLES = ("system", "user", "assistant")
Records = str | os.PathLike[str] | Iterable[Mapping[str, Any] | Example]


# ---- shared by the JSONL datasets ------------------------------------------------------------------


def read_records(source: Records) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(where, record) for each JSONL line of a file, or each record/Example of an iterable.

    `where` is `file:line` (or `record N`, or an Example's origin) so that every error about the
    data can say exactly which example to fix. Blank lines are not examples and are passed over.
    """
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.is_file():
            raise UserError(f"dataset file not found: {path} (give a JSONL file, one example per line)")
        with path.open(encoding="utf-8", errors="strict") as fh:
            try:
                for number, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as exc:
                        msg = f"{path}:{number}: not valid JSON ({exc.msg}); fix that line"
                        raise UserError(msg) from None
                    if not isinstance(record, dict):
                        raise UserError(
                            f"{path}:{number}: expected a JSON object, got {type(record).__name__}; "
                            "write one object per line"
                        )
                    yield f"{path}:{number}", record
            except UnicodeDecodeError:
                raise UserError(f"{path}: not UTF-8 text; convert the file to UTF-8") from None
        return
    for index, item in enumerate(source):
        where = f"record {index}"
        if isinstance(item, Example):
            where, item = f"record {index} ({item.origin})", item.record
        if not isinstance(item, Mapping):
            raise UserError(f"{where}: expected a mapping, got {type(item).__name__}")
        yield where, item


def no_examples(source: Records, skipped: Mapping[str, int], what: str) -> UserError:
    """The error for a dataset left empty, with the reasons examples were skipped."""
    name = source if isinstance(source, str | os.PathLike) else "the records given"
    why = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in skipped.items()) or "it is empty"
    return UserError(f"{name} holds no usable {what} ({why}); check the file and seq_len")


# ---- conversations to token ids and targets ---------------------------------------------------------


def _messages(value: object, where: str, field: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise UserError(f"{where}: '{field}' must be a non-empty list of {{'role', 'content'}} objects")
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise UserError(f"{where}: {field}[{i}] needs 'role' and 'content'")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            known = ", ".join(ROLES)
            raise UserError(f"{where}: {field}[{i}] has role {role!r}; roles must be one of {known}")
        if not isinstance(content, str):
            raise UserError(f"{where}: {field}[{i}] content must be a string, got {type(content).__name__}")
        out.append({"role": role, "content": content})
    return out


class _Plan:
    """One example before tokenizing: the texts to encode and how to turn their ids into targets."""

    def __init__(self, where: str, messages: list[dict[str, str]] | None, first: int = 0) -> None:
        self.where, self.messages, self.first = where, messages, first
        self.prompt_completion: tuple[str, str] | None = None

    @property
    def plain(self) -> bool:
        """A plain-text prompt/completion pair rather than a rendered conversation."""
        return self.prompt_completion is not None


def _plan(where: str, record: Mapping[str, Any]) -> _Plan:
    """Check a record's shape (TRL's field names) and say which turns carry the loss."""
    if "messages" in record:
        messages = _messages(record["messages"], where, "messages")
        if not any(m["role"] == "assistant" for m in messages):
            raise UserError(f"{where}: the conversation has no assistant turn, so nothing to learn")
        return _Plan(where, messages)
    if "prompt" not in record or "completion" not in record:
        raise UserError(f"{where}: needs 'messages', or 'prompt' and 'completion' (got {', '.join(record)})")
    prompt, completion = record["prompt"], record["completion"]
    if isinstance(prompt, str) and isinstance(completion, str):
        plan = _Plan(where, None)
        plan.prompt_completion = (prompt, completion)
        return plan
    if isinstance(prompt, list) and isinstance(completion, list):
        head, tail = _messages(prompt, where, "prompt"), _messages(completion, where, "completion")
        if not any(m["role"] == "assistant" for m in tail):
            raise UserError(f"{where}: the completion has no assistant turn, so nothing to learn")
        return _Plan(where, head + tail, first=len(head))
    raise UserError(
        f"{where}: 'prompt' and 'completion' must both be strings, or both lists of messages "
        f"(got {type(prompt).__name__} and {type(completion).__name__})"
    )


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class ChatEncoder:
    """Token ids plus a per-token "learn this" flag for conversations and prompt/completion pairs."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        added = tokenizer.backend.get_added_tokens_decoder()
        self.special = {i for i, t in added.items() if t.special}
        self.eos = tokenizer.eos_token_id

    def _render(self, plan: _Plan, messages: list[dict[str, str]], generation: bool) -> str:
        try:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=generation)
        except UserError as exc:
            raise UserError(f"{plan.where}: {exc}") from None
        assert isinstance(text, str)
        return text

    def texts(self, plan: _Plan) -> list[str]:
        """Everything to encode for one example: the whole conversation, then per learned turn the
        conversation up to its generation prompt and up to its end."""
        if plan.prompt_completion is not None:
            prompt, completion = plan.prompt_completion
            return [prompt + completion, prompt]
        assert plan.messages is not None
        texts = [self._render(plan, plan.messages, False)]
        for i in self._learned_turns(plan):
            texts.append(self._render(plan, plan.messages[:i], True))
            texts.append(self._render(plan, plan.messages[: i + 1], False))
        return texts

    @staticmethod
    def _learned_turns(plan: _Plan) -> list[int]:
        assert plan.messages is not None
        return [i for i, m in enumerate(plan.messages) if i >= plan.first and m["role"] == "assistant"]

    def targets(self, plan: _Plan, encoded: list[list[int]]) -> tuple[list[int], np.ndarray]:
        """(ids, flags) from `texts(plan)` encoded: flags mark the tokens the loss is taken on."""
        if plan.prompt_completion is not None:
            full, prompt = encoded
            if self.eos is not None and (not full or full[-1] != self.eos):
                full = [*full, self.eos]  # the model must learn where a completion stops
            flags = np.zeros(len(full), dtype=bool)
            flags[_common_prefix(prompt, full) :] = True
            return full, flags
        full = encoded[0]
        flags = np.zeros(len(full), dtype=bool)
        for k, turn in enumerate(self._learned_turns(plan)):
            before, through = encoded[1 + 2 * k], encoded[2 + 2 * k]
            if full[: len(through)] != through:
                raise UserError(
                    f"{plan.where}: the chat template renders turn {turn} differently once later turns "
                    "follow, so its tokens cannot be located; split the conversation at that turn"
                )
            start = min(len(before), _common_prefix(before, through))
            end = len(through)
            last_special = [j for j in range(start, end) if through[j] in self.special]
            if last_special:  # keep the end-of-turn token, not the newline a template writes after it
                end = last_special[-1] + 1
            flags[start:end] = True
        return full, flags


# ---- packing ----------------------------------------------------------------------------------------


def best_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Pack items (indices into `lengths`, taken in order) into rows of `capacity`, each into the row
    with the least room that still holds it; a new row when none does."""
    rooms: list[tuple[int, int]] = []  # (room left, row), sorted
    rows: list[list[int]] = []
    for item, length in enumerate(lengths):
        k = bisect.bisect_left(rooms, (length, -1))
        if k < len(rooms):
            room, row = rooms.pop(k)
            rows[row].append(item)
        else:
            room, row = capacity, len(rows)
            rows.append([item])
        if room - length > 0:
            bisect.insort(rooms, (room - length, row))
    return rows


def rows_at_least(lengths: np.ndarray, capacity: int) -> int:
    """Rows any packing needs: all tokens must fit, and no two items over half a row can share."""
    return max(-(-int(lengths.sum()) // capacity), int((lengths > capacity // 2).sum()))


class SFTDataset(StepBatches):
    """Batches of `input_ids`, `labels` (already shifted; -100 where nothing is learned),
    `position_ids` `[B, T]` and a boolean `attention_mask` `[B, 1, T, T]`, by global step."""

    _state_keys = ("seed", "seq_len", "batch_size", "packing")

    def __init__(
        self,
        path_or_records: Records,
        tokenizer: Tokenizer,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        packing: bool = True,
    ) -> None:
        if seq_len < 1 or batch_size < 1:
            raise UserError(f"seq_len and batch_size must be positive, got {seq_len} and {batch_size}")
        self.rank, self.world_size = resolve_position(rank, world_size)
        self.seq_len, self.batch_size, self.seed, self.packing = seq_len, batch_size, seed, packing
        self.pad_id = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)
        self.skipped: dict[str, int] = {}
        self.truncated = 0
        self._load(path_or_records, tokenizer)
        if self.packing:
            self.rows_per_epoch = rows_at_least(self.lengths, seq_len)
        else:
            self.rows_per_epoch = len(self.lengths)
        self.steps_per_epoch = self.rows_per_epoch // (self.world_size * batch_size)
        if self.steps_per_epoch == 0:
            raise UserError(
                f"{len(self.lengths)} examples ({self.num_tokens:,} tokens) fill too few rows for one "
                f"batch of {batch_size} x {seq_len} per rank on {self.world_size} rank(s); "
                f"lower batch_size{' or seq_len, turn packing off,' if packing else ','} or add examples"
            )
        self.step = 0
        self._epoch: int | None = None
        self._rows: list[np.ndarray] = []
        self._packed_rows = self._left_out = 0

    def _load(self, source: Records, tokenizer: Tokenizer) -> None:
        encoder = ChatEncoder(tokenizer)
        plans = [_plan(where, record) for where, record in read_records(source)]
        texts = [encoder.texts(plan) for plan in plans]
        # a rendered chat holds the special tokens its template wants; plain text gets BOS (when the
        # tokenizer adds one) as it would anywhere else
        encoded: dict[bool, Iterator[list[int]]] = {}
        for plain in (False, True):
            group = [t for plan, ts in zip(plans, texts, strict=True) if plan.plain == plain for t in ts]
            encoded[plain] = iter(tokenizer.encode_batch(group, add_special_tokens=plain))
        ids_parts, flag_parts, lengths = [], [], []
        for plan, group in zip(plans, texts, strict=True):
            ids, flags = encoder.targets(plan, [next(encoded[plan.plain]) for _ in group])
            if len(ids) > self.seq_len + 1:  # inputs are ids[:-1], so seq_len + 1 ids fill a row
                self.truncated += 1
                ids, flags = ids[: self.seq_len + 1], flags[: self.seq_len + 1]
            if not flags[1:].any():
                reason = "without_learned_tokens_within_seq_len" if len(ids) > 1 else "too_short"
                self.skipped[reason] = self.skipped.get(reason, 0) + 1
                continue
            ids_parts.append(np.asarray(ids, dtype=np.int32))  # half the memory; every vocabulary fits
            flag_parts.append(flags)
            lengths.append(len(ids) - 1)
        if not lengths:
            raise no_examples(source, self.skipped, "examples")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths + 1)])
        self.ids = np.concatenate(ids_parts)
        self.flags = np.concatenate(flag_parts)
        self.num_tokens = int(self.lengths.sum())
        self.num_target_tokens = int(sum(f[1:].sum() for f in flag_parts))

    def __repr__(self) -> str:
        return (
            f"SFTDataset({len(self.lengths)} examples, {self.num_tokens:,} tokens, "
            f"{self.num_target_tokens:,} learned, truncated={self.truncated}, skipped={self.skipped})"
        )

    def rows(self, epoch: int) -> list[np.ndarray]:
        """This rank's rows for `epoch`, in reading order; each row is an array of example indices."""
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(len(self.lengths))
            if self.packing:
                packed = [order[row] for row in best_fit(self.lengths[order].tolist(), self.seq_len)]
            else:
                packed = [order[i : i + 1] for i in range(len(order))]
            self._packed_rows = len(packed)
            used = self.steps_per_epoch * self.batch_size * self.world_size
            kept = [packed[i] for i in rng.permutation(used)]  # the first rows made, in a new order
            self._left_out = len(order) - sum(len(row) for row in kept)
            self._rows, self._epoch = kept[self.rank :: self.world_size], epoch
        return self._rows

    def epoch_stats(self, epoch: int) -> dict[str, int]:
        """How much of the data `epoch` reads (all ranks together): rows packed, rows used, and the
        examples left out of this epoch (they come round in later epochs' orders)."""
        self.rows(epoch)
        used = self.steps_per_epoch * self.batch_size * self.world_size
        return {"rows_packed": self._packed_rows, "rows_used": used, "examples_left_out": self._left_out}

    def example(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(input ids, shifted labels) of one example as a row would hold it."""
        lo, hi = int(self.offsets[index]), int(self.offsets[index + 1])
        ids, flags = self.ids[lo:hi].astype(np.int64), self.flags[lo:hi]
        return ids[:-1], np.where(flags[1:], ids[1:], IGNORE)

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        """The batch this rank reads at global `step` (epochs follow one another)."""
        epoch, i = divmod(step, self.steps_per_epoch)
        rows = self.rows(epoch)[i * self.batch_size : (i + 1) * self.batch_size]
        width = self.seq_len if self.packing else max(int(self.lengths[r].sum()) for r in rows)
        return self._collate(rows, width)

    def _collate(self, rows: Sequence[np.ndarray], width: int) -> dict[str, torch.Tensor]:
        n = len(rows)
        input_ids = np.full((n, width), self.pad_id, dtype=np.int64)
        labels = np.full((n, width), IGNORE, dtype=np.int64)
        positions = np.zeros((n, width), dtype=np.int64)
        # which sequence each position belongs to; every padding position is its own sequence, so it
        # sees only itself (a query seeing nothing would make NaN, and NaN leaks into gradients)
        segment = np.tile(-1 - np.arange(width, dtype=np.int64), (n, 1))
        for b, row in enumerate(rows):
            at = 0
            for s, index in enumerate(row):
                ids, lab = self.example(int(index))
                end = at + len(ids)
                input_ids[b, at:end], labels[b, at:end] = ids, lab
                positions[b, at:end] = np.arange(len(ids))
                segment[b, at:end] = s
                at = end
        seg = torch.from_numpy(segment)
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        mask = (seg[:, :, None] == seg[:, None, :]) & causal
        return {
            "input_ids": torch.from_numpy(input_ids),
            "labels": torch.from_numpy(labels),
            "position_ids": torch.from_numpy(positions),
            "attention_mask": mask[:, None],
        }
