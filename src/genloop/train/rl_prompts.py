"""Prompts for `genloop rl`: a JSONL file of rows, or one of the built-in generated tasks whose
held-out questions share nothing with the training ones (no number pair, no topic)."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from genloop.errors import UserError

TASK_REWARDS = {"addition": "exact_answer", "short": "max_words"}


def load_prompts(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a prompts JSONL file; a UserError names the file, line and problem."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"prompts file not found: {p}")
    rows = []
    for number, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{p}:{number}: not valid JSON ({exc.msg}); write one object per line") from None
        prompt = row.get("prompt") if isinstance(row, dict) else None
        ok = isinstance(prompt, str) and prompt.strip()
        ok = ok or (isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt))
        if not ok:
            raise UserError(
                f'{p}:{number}: needs a "prompt": a non-empty string or a list of chat messages '
                '[{"role": "user", "content": ...}]'
            )
        rows.append(row)
    if not rows:
        raise UserError(f"{p} holds no prompts: write one JSON object per line")
    return rows


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def addition_task(n_train: int, n_eval: int, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Two-digit addition questions with their sums; no (a, b) pair is in both sets."""
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    random.Random(seed).shuffle(pairs)
    if n_train + n_eval > len(pairs):
        raise UserError(f"the addition task has {len(pairs)} questions; ask for fewer")

    def row(a: int, b: int) -> dict[str, Any]:
        return {"prompt": _user(f"What is {a} + {b}? Reply with the number only."), "answer": str(a + b)}

    return [row(*p) for p in pairs[n_eval : n_eval + n_train]], [row(*p) for p in pairs[:n_eval]]


_TOPICS = (
    "the moon", "photosynthesis", "volcanoes", "the internet", "gravity", "democracy", "rainbows",
    "coffee", "the ocean", "electricity", "computers", "music", "the human heart", "bees", "snow",
    "libraries", "the sun", "friendship", "bicycles", "clouds", "exercise", "museums", "money", "bread",
    "forests", "the wind", "chess", "cities", "sleep", "rain", "telescopes", "history", "mathematics",
    "gardens", "deserts", "rivers", "winter", "maps", "fire", "the brain", "dogs", "trains", "tea",
    "earthquakes", "vaccines", "languages", "poetry", "recycling", "mountains", "airplanes",
)  # fmt: skip
_QUESTIONS = (
    "What is {t}?", "Describe {t}.", "Why do {t} matter?", "Tell me something about {t}.",
    "Explain {t} to a child.", "What should everyone know about {t}?", "How would you describe {t}?",
    "Give me an interesting fact about {t}.",
)  # fmt: skip


def short_task(
    n_train: int, n_eval: int, words: int, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Open questions with "Answer in at most N words."; held-out questions are about topics that no
    training question mentions, so a higher held-out reward means the habit generalized."""
    topics = list(_TOPICS)
    random.Random(seed).shuffle(topics)
    n_topics_eval = max(1, math.ceil(n_eval / len(_QUESTIONS)))
    rng = random.Random(seed + 1)

    def rows(chosen: Sequence[str], n: int) -> list[dict[str, Any]]:
        pool = [q.format(t=t) for t in chosen for q in _QUESTIONS]
        rng.shuffle(pool)
        picked = (pool * (n // len(pool) + 1))[:n]
        text = f" Answer in at most {words} words."
        return [{"prompt": _user(q + text), "max_words": words} for q in picked]

    return rows(topics[n_topics_eval:], n_train), rows(topics[:n_topics_eval], n_eval)
