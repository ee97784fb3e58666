"""Admission and prefill for the engine's continuous batch. A mixin of `Engine`.

Waiting sequences are admitted in groups: as many whole prompts as fit one prefill budget run as one
right-padded forward, so a burst of requests costs one compute-bound pass rather than one small pass
per request with a growing decode batch beside each (32 chat prompts at once: one forward instead of
32 steps). The budget counts the tokens a step computes: a prompt's beginning shared with the
group's first one (below) is not computed again, so it does not count. A prompt longer than the
budget, or than GROUP_MAX_TOKENS, is admitted alone and prefilled in chunks, one chunk per step, so
running streams keep decoding meanwhile. Groups stay narrow so that a row's padded width never
crosses the point where quantized layers change kernels (DENSE_TOKENS, 256): a prompt then takes the
same arithmetic alone or grouped, and its text does not depend on its company.

Prompts of one group that begin alike (a chat template's system prompt; 27 of SmolLM2's ~37 tokens
for a short question) have the common part prefilled once, in the first row's slot, and copied to
the others', so the group's forward runs only what differs. Rows stay independent: the int4
kernels give a row the same bits in any batch, and a key past a row's length is masked, so a prompt
takes the same arithmetic shared or alone (tested: batched greedy equals one-at-a-time greedy).

Invariant (kept by `Engine._finish`): slots 0.._n_decoding-1 decode; after them sits at most one
sequence whose chunked prefill spans steps. A group never outlives its step: it becomes decoding
before anything can finish.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

GROUP_MAX_TOKENS = 128  # longer prompts are prefilled alone
SHARED_PREFIX_MIN = 16  # tokens a group's prompts must share to have them prefilled once

if TYPE_CHECKING:
    from genloop.generate.kv_cache import PrefixCache, SlotCache
    from genloop.generate.request import Request
    from genloop.generate.request import Sequence as Seq


def _common(a: list[int], b: list[int]) -> int:
    """Length of the common beginning of two token lists."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


class Prefill:
    model: Any
    cache: SlotCache | None
    prefix: PrefixCache
    stats: dict[str, int]
    max_batch: int
    prefill_chunk: int
    share_prefixes: bool
    _cond: Any
    _waiting: deque[Seq]
    _slots: list[Seq]
    _n_decoding: int
    # provided by Engine and SingleRequestPaths (annotations only: a stub here would shadow them)
    _beam_search: Callable[[Request], None]
    _sample: Callable[[list[Seq], torch.Tensor], None]
    _fail_request: Callable[[Request, BaseException], None]

    def _budget(self) -> int:
        """Prompt tokens one step may compute: a sixteenth while streams decode (at least 64), so each
        of their tokens waits at most that much prefill; all of prefill_chunk when none does."""
        return self.prefill_chunk if not self._n_decoding else max(64, self.prefill_chunk // 16)

    def _admit(self) -> None:
        """Move waiting sequences into free slots: one (beam search, or a prompt over the budget) or a
        group of whole prompts that fit the budget together."""
        assert self.cache is not None
        budget, tokens, first = self._budget(), 0, None
        while True:
            with self._cond:
                if len(self._slots) > self._n_decoding and tokens == 0:
                    return  # a chunked prefill is in progress
                if not self._waiting or len(self._slots) >= self.max_batch:
                    return
                seq = self._waiting[0]
                beams = seq.request.params.num_beams > 1
                alone = beams or len(seq.prompt) > GROUP_MAX_TOKENS
                shared = _common(first.prompt, seq.prompt) if first and self.share_prefixes else 0
                cost = len(seq.prompt) - shared
                if tokens and (alone or tokens + cost > budget):
                    return
                self._waiting.popleft()
                if beams:  # beam search runs on its own, outside the batch, for all n of the request
                    self._waiting = deque(s for s in self._waiting if s.request is not seq.request)
            if beams:
                try:
                    self._beam_search(seq.request)
                except Exception as exc:  # its sequences sit in no slot: _fail_all would not reach them
                    self._fail_request(seq.request, exc)
                return
            seq.slot = len(self._slots)
            self._slots.append(seq)
            self.cache.lengths[seq.slot] = 0
            hit, k, v = self.prefix.lookup(seq.prompt)
            if hit and k is not None and v is not None:
                self.cache.write_prefix(seq.slot, k, v)
                seq.prefilled = hit
                self.stats["prefix_hit_tokens"] += hit
            first = first or seq
            tokens += min(cost, len(seq.prompt) - seq.prefilled)
            if alone or tokens > budget:  # alone: chunked
                return

    def _prefill(self) -> None:
        pending = self._slots[self._n_decoding :]
        if len(pending) > 1:
            self._prefill_group(pending)
        elif pending:
            self._prefill_chunk(pending[0])

    def _prefill_chunk(self, seq: Seq) -> None:
        assert self.cache is not None
        todo = seq.prompt[seq.prefilled : seq.prefilled + self._budget()]
        view = self.cache.view(seq.slot, seq.slot + 1, len(todo))
        logits = self.model(torch.tensor([todo]), cache=view, logits_to_keep=1)[:, -1]
        view.commit()
        seq.prefilled += len(todo)
        if seq.prefilled < len(seq.prompt):
            return
        self._start_decoding([seq], logits)

    def _prefill_group(self, seqs: list[Seq]) -> None:
        """Whole prompts (after any cached prefix) in one right-padded forward. A row's padding writes
        K/V past its length: never attended (each key is masked beyond the row's own position) and
        overwritten by its next tokens. The head runs on each row's last real position only."""
        assert self.cache is not None
        self._share_prefix(seqs)
        todo = [s.prompt[s.prefilled :] for s in seqs]
        width = max(map(len, todo))
        ids = torch.tensor([t + [0] * (width - len(t)) for t in todo])
        start = seqs[0].slot
        view = self.cache.view(start, start + len(seqs), width)
        hidden = self.model.hidden_states(ids, cache=view)
        last = torch.tensor([len(t) - 1 for t in todo])
        logits = self.model.lm_head(hidden[torch.arange(len(seqs)), last])
        for seq, t in zip(seqs, todo, strict=True):
            self.cache.lengths[seq.slot] = seq.prefilled + len(t)
            seq.prefilled = len(seq.prompt)
        self._start_decoding(seqs, logits)

    def _share_prefix(self, seqs: list[Seq]) -> None:
        """The group's common beginning (past any cached prefix they all have) prefilled once in the
        first row's slot and copied to the other rows' slots; each row keeps at least a token to run."""
        assert self.cache is not None
        done = seqs[0].prefilled
        if not self.share_prefixes or any(s.prefilled != done for s in seqs):
            return
        first = seqs[0].prompt
        common = min(len(first) - 1, *(min(len(s.prompt) - 1, _common(first, s.prompt)) for s in seqs[1:]))
        if common - done < SHARED_PREFIX_MIN:
            return
        view = self.cache.view(seqs[0].slot, seqs[0].slot + 1, common - done)
        self.model.hidden_states(torch.tensor([first[done:common]]), cache=view)
        view.commit()
        for seq in seqs[1:]:
            self.cache.move(seqs[0].slot, seq.slot)  # positions 0..common-1, and the slot's length
        for seq in seqs:
            seq.prefilled = common
        self.stats["shared_prefix_tokens"] += (len(seqs) - 1) * (common - done)

    def _start_decoding(self, seqs: list[Seq], logits: torch.Tensor) -> None:
        """Prefilled sequences sit right after the decoding ones: they become decoding ones."""
        for seq in seqs:
            self.prefix.store(seq.prompt, self.cache, seq.slot)  # type: ignore[arg-type]
        self._n_decoding += len(seqs)
        self._sample(seqs, logits)
