"""Feedback to training rows, in TRL's conversational field names (the formats its trainers read as-is).

- sft:        {"messages": [...]}: corrections and upvoted answers
- preference: {"prompt": [...], "chosen": [...], "rejected": [...]}: regenerate-and-pick, correction
  vs original
- kto:        {"prompt": [...], "completion": [...], "label": bool}: single thumbs up / down

Several feedback rows on one answer (a changed mind, a double click) count once: the latest rating
and the latest correction win; identical rows are written once. An answer that did not complete is
never used as a good example, nor is a filtered one (a filter blocked or masked it), even upvoted: in
kto it is labelled false, and the store can add every filtered answer as a kto negative.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from genloop.serve.store_models import Feedback, Message, walk_up

Row = dict[str, Any]


def _turn(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def _prompt(messages: dict[str, Message], answer: Message) -> list[dict[str, str]]:
    """The thread the answer replied to, root first, as {"role","content"} turns."""
    if answer.parent_id is None:
        return []
    return [_turn(m.role, m.content) for m in walk_up(messages, answer.parent_id)]


class _Verdict:
    """The latest state of the feedback on one answer inside the export window."""

    def __init__(self) -> None:
        self.rating: int | None = None
        self.correction: str | None = None
        self.preferred_over: dict[str, None] = {}  # ordered set of losing siblings

    def add(self, f: Feedback) -> None:
        if f.rating is not None:
            self.rating = f.rating
        if f.correction is not None:
            self.correction = f.correction
        if f.preferred_over:
            self.preferred_over[f.preferred_over] = None


def _verdicts(feedback: Sequence[Feedback], messages: dict[str, Message]) -> dict[str, _Verdict]:
    """Feedback folded per answer, in order of each answer's first feedback (oldest first)."""
    out: dict[str, _Verdict] = {}
    for f in feedback:
        if f.message_id in messages:
            out.setdefault(f.message_id, _Verdict()).add(f)
    return out


def _complete(m: Message) -> bool:
    return m.status == "complete" and bool(m.content.strip())


def sft(verdicts: dict[str, _Verdict], messages: dict[str, Message], filtered: frozenset[str]) -> list[Row]:
    rows = []
    for mid, v in verdicts.items():
        answer = messages[mid]
        prompt = _prompt(messages, answer)
        if not prompt:
            continue
        if v.correction is not None:
            rows.append({"messages": [*prompt, _turn("assistant", v.correction)]})
        elif v.rating == 1 and _complete(answer) and mid not in filtered:
            rows.append({"messages": [*prompt, _turn("assistant", answer.content)]})
    return rows


def preference(
    verdicts: dict[str, _Verdict], messages: dict[str, Message], filtered: frozenset[str]
) -> list[Row]:
    rows: list[Row] = []
    picked: dict[frozenset[str], int] = {}  # a later pick between the same two answers replaces the earlier
    for mid, v in verdicts.items():
        answer = messages[mid]
        prompt = _prompt(messages, answer)
        if not prompt:
            continue
        for other_id in v.preferred_over:
            other = messages.get(other_id)
            if other is None or not _complete(answer) or mid in filtered or not other.content.strip():
                continue
            row = {
                "prompt": prompt,
                "chosen": [_turn("assistant", answer.content)],
                "rejected": [_turn("assistant", other.content)],
            }
            key = frozenset((mid, other_id))
            if key in picked:
                rows[picked[key]] = row
            else:
                picked[key] = len(rows)
                rows.append(row)
        if v.correction is not None and answer.content.strip() and v.correction != answer.content:
            rows.append(
                {
                    "prompt": prompt,
                    "chosen": [_turn("assistant", v.correction)],
                    "rejected": [_turn("assistant", answer.content)],
                }
            )
    return rows


def kto(verdicts: dict[str, _Verdict], messages: dict[str, Message], filtered: frozenset[str]) -> list[Row]:
    rows = []
    for mid, v in verdicts.items():
        answer = messages[mid]
        prompt = _prompt(messages, answer)
        if v.rating is None or not prompt or not answer.content.strip():
            continue
        good = v.rating == 1 and mid not in filtered  # a filter's verdict outranks a thumbs up
        if good and not _complete(answer):
            continue  # a cut-off answer is no example of a good one
        rows.append({"prompt": prompt, "completion": [_turn("assistant", answer.content)], "label": good})
    return rows


def filtered_kto(negatives: Sequence[str], messages: dict[str, Message]) -> list[Row]:
    """Filtered answers as undesirable kto examples (what the model wrote, as the store holds it)."""
    rows = []
    for mid in negatives:
        answer = messages.get(mid)
        prompt = _prompt(messages, answer) if answer is not None else []
        if answer is not None and prompt and answer.content.strip():
            rows.append(
                {"prompt": prompt, "completion": [_turn("assistant", answer.content)], "label": False}
            )
    return rows


Exporter = Callable[[dict[str, _Verdict], dict[str, Message], frozenset[str]], list[Row]]
EXPORTERS: dict[str, Exporter] = {
    "sft": sft,
    "preference": preference,
    "kto": kto,
}


def export_rows(
    kind: str,
    feedback: Sequence[Feedback],
    messages: dict[str, Message],
    filtered: frozenset[str] = frozenset(),
    negatives: Sequence[str] = (),
) -> list[Row]:
    """`feedback` oldest first; `messages` every message of the conversations it touches; `filtered` the
    ids of every filtered answer; `negatives` those to add as kto rows (label false). Identical rows
    (a pick and a correction saying the same thing, a downvoted answer that a filter also stopped) are
    written once: duplicates only reweight training."""
    seen: set[str] = set()
    rows = []
    extra = filtered_kto(negatives, messages) if kind == "kto" else []
    for row in EXPORTERS[kind](_verdicts(feedback, messages), messages, filtered) + extra:
        key = json.dumps(row, sort_keys=True)
        if key not in seen:
            seen.add(key)
            rows.append(row)
    return rows
