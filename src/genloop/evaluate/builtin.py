"""Built-in evaluation tasks on the real data of the data pipeline, named on the command line by name:
`genloop eval MODEL --tasks summarization translation conversation humaneval`.

- summarization: a Debian package's long description -> its one-line synopsis (ROUGE, BLEU, chrF);
- translation: English -> German example sentences of the Ding dictionary (BLEU, chrF);
- conversation: a fact the user states in the first turn of a real chit-chat conversation, asked for
  again after the rest of it (does the model keep track of what it was told?), scored by whether the
  reply contains the fact;
- humaneval: the 164 HumanEval problems (genloop.evaluate.humaneval), pass@k by running the code.

The first three read only their recipe's held-out split (`genloop.data.heldout`), which training data
built from the same recipes leaves out, and take its first `size` items: a fixed test set. Each is
written once as a task file under the cache, named by the recipe data's fingerprint, so a rerun reads
exactly the same rows and a changed package makes a new file rather than silently different scores.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genloop.atomic import atomic_write_text
from genloop.data.document import Example
from genloop.home import cache_dir

REVISION = 2  # bump when a builder changes what the same recipe data gives


@dataclass(frozen=True)
class Builtin:
    name: str
    description: str
    recipe: str
    size: int
    metrics: tuple[str, ...]
    max_tokens: int
    stop: tuple[str, ...] = ("\n",)
    options: dict[str, Any] = field(default_factory=dict)
    rows: Callable[[Iterable[Example], int], Iterator[dict[str, Any]]] = field(default=lambda e, n: iter(()))

    def materialize(self, progress: bool = False) -> Path:
        """The task file for this recipe data: written on first use (fetching the recipe if needed)."""
        from genloop.data.recipes import get_recipe

        recipe = get_recipe(self.recipe)
        fingerprint = recipe.fingerprint(split="heldout", **self.options)
        path = cache_dir() / "eval-tasks" / f"{self.name}-r{REVISION}-{fingerprint[:12]}.jsonl"
        if not path.is_file():
            examples = recipe.examples(progress, split="heldout", **self.options)
            lines = [json.dumps(row, ensure_ascii=False) for row in self.rows(examples, self.size)]
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, "\n".join(lines) + "\n")
        return path


def _pairs(examples: Iterable[Example], size: int) -> Iterator[dict[str, Any]]:
    """The recipe's own prompt and completion as prompt and reference."""
    for count, example in enumerate(examples):
        if count == size:
            return
        yield {"prompt": example.record["prompt"], "reference": example.record["completion"]}


# Facts a user might mention, each with the question that asks for it again and values to draw from.
FACTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("By the way, my name is {}.", "What is my name?", ("Maria", "Tobias", "Aiko", "Rahul", "Fatima")),
    ("My dog is called {}.", "What is my dog called?", ("Biscuit", "Rex", "Pepper", "Luna", "Bruno")),
    ("I live in {}.", "Which city do I live in?", ("Lisbon", "Nairobi", "Oslo", "Toronto", "Osaka")),
    ("My favourite colour is {}.", "What is my favourite colour?", ("green", "purple", "orange", "teal")),
    ("I work as a {}.", "What is my job?", ("nurse", "carpenter", "pilot", "librarian", "chef", "plumber")),
    ("My locker code is {}.", "What is my locker code?", ("4721", "9035", "1188", "6502", "3349", "8270")),
)  # fmt: skip
MIN_TURNS, MAX_TURNS, MAX_CHARS = 6, 10, 2000  # the fact is 5-9 turns back; the chat fits any context


def _conversations(examples: Iterable[Example], size: int) -> Iterator[dict[str, Any]]:
    """A fact stated in the first user turn, the rest of a real conversation, then the question.

    The fact and its value are drawn from a generator seeded by the conversation's origin, so the task
    is the same on every machine. A conversation is cut after MAX_TURNS turns; one with fewer than
    MIN_TURNS (the fact must be several turns back) or longer than MAX_CHARS is skipped."""
    count = 0
    for example in examples:
        turns = example.record["messages"][:MAX_TURNS]
        if len(turns) < MIN_TURNS or sum(len(t["content"]) for t in turns) > MAX_CHARS:
            continue
        rng = random.Random(hashlib.sha256(example.origin.encode()).digest())
        statement, question, values = rng.choice(FACTS)
        value = rng.choice(values)
        first = {"role": "user", "content": f"{statement.format(value)} {turns[0]['content']}"}
        ask = {"role": "user", "content": f"Quick question before we go on: {question}"}
        yield {"messages": [first, *turns[1:], ask], "reference": value, "turns_back": len(turns)}
        count += 1
        if count == size:
            return


BUILTINS: dict[str, Builtin] = {
    b.name: b
    for b in (
        Builtin(
            "summarization",
            "Debian long description -> one-line synopsis (held-out packages), ROUGE/BLEU/chrF",
            "debian-summaries",
            100,
            ("rouge", "bleu", "chrf"),
            48,
            rows=_pairs,
        ),
        Builtin(
            "translation",
            "English -> German dictionary example sentences (held-out pairs), BLEU/chrF",
            "trans-de-en",
            100,
            ("bleu", "chrf"),
            96,
            options={"direction": "en-de"},
            rows=_pairs,
        ),
        Builtin(
            "conversation",
            "recall a fact from the first turn of a real multi-turn chat (held-out chats), contains",
            "chitchat",
            60,
            ("contains", "exact_match", "f1"),
            48,
            rows=_conversations,
        ),
    )
}
