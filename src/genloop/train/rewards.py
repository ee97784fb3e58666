"""Verifiable rewards for RL: functions `(prompt, completion, **row) -> float` that check a completion
against a rule or the row's own data, so no learned judge can be fooled into paying for nonsense.

Each reward is a small class with `__call__` for one completion and `batch` for many (the trainer
scores a whole rollout at once; a learned reward model needs batches, see `CallableReward`). The
registry names them so a CLI flag or a YAML key can say `reward: max_words` with options; a reward
that needs a field of the prompt row (`answer`, `tests`) says so in `required_fields`, and
`check_rows` turns a missing one into a UserError before any training starts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

from genloop.errors import UserError
from genloop.sandbox import run_tests

BatchScorer = Callable[[list[str], list[str]], list[float]]
"""(prompts, completions) -> one score each: the shape of a reward model's scoring function."""


class Reward:
    """A reward: `reward(prompt, completion, **row)` for one completion, `batch(...)` for many."""

    name: ClassVar[str] = ""
    required_fields: tuple[str, ...] = ()

    def __call__(self, prompt: str, completion: str, **row: Any) -> float:
        raise NotImplementedError

    def batch(
        self, prompts: Sequence[str], completions: Sequence[str], rows: Sequence[Mapping[str, Any]]
    ) -> list[float]:
        return [float(self(p, c, **fields(r))) for p, c, r in zip(prompts, completions, rows, strict=True)]


def fields(row: Mapping[str, Any]) -> dict[str, Any]:
    """A prompt row as a reward's keyword arguments: everything but the prompt (and any completion)."""
    return {k: v for k, v in row.items() if k not in ("prompt", "completion")}


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def last_number(text: str) -> float | None:
    """The last number written in `text` ("1,234", "-5", "3.50"), or None when there is none."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


class ExactAnswer(Reward):
    """1 if the completion's answer equals the row's `answer` field, else 0.

    match="last_number": the last number in the completion equals the answer as a number (the GSM8K
    convention: reasoning may come first, the final figure counts). match="exact": the stripped
    completion equals the answer's text, ignoring case. match="contains": the answer's text appears.
    """

    name = "exact_answer"

    def __init__(self, field: str = "answer", match: str = "last_number") -> None:
        if match not in ("last_number", "exact", "contains"):
            raise UserError(f"exact_answer: match={match!r}; use last_number, exact or contains")
        self.field, self.match = field, match
        self.required_fields = (field,)

    def __call__(self, prompt: str, completion: str, **row: Any) -> float:
        answer = row[self.field]
        if self.match == "last_number":
            got, want = last_number(completion), last_number(str(answer))
            return float(got is not None and want is not None and math.isclose(got, want, abs_tol=1e-9))
        text, want_text = completion.strip().lower(), str(answer).strip().lower()
        return float(text == want_text if self.match == "exact" else want_text in text)


def count_words(text: str) -> int:
    return len(text.split())


class MaxWords(Reward):
    """1 if the completion has between `min_words` and N words (whitespace-separated), else 0.

    N is the row's `max_words` field when it has one (a prompt that says "in at most 5 words"), else
    `n`. `min_words` (default 1) keeps an empty answer from winning. soft=True pays partial credit
    past the limit, 1 - (words - N) / N down to 0: a denser signal for a model that starts far off.
    """

    name = "max_words"

    def __init__(self, n: int = 10, min_words: int = 1, soft: bool = False) -> None:
        if n < 1 or min_words < 0 or min_words > n:
            raise UserError(
                f"max_words: need 0 <= min_words <= n and n >= 1 (got n={n}, min_words={min_words})"
            )
        self.n, self.min_words, self.soft = n, min_words, soft

    def __call__(self, prompt: str, completion: str, **row: Any) -> float:
        limit = int(row.get("max_words") or self.n)
        words = count_words(completion)
        if words < self.min_words:
            return 0.0
        if words <= limit:
            return 1.0
        return max(0.0, 1.0 - (words - limit) / limit) if self.soft else 0.0


class RegexMatch(Reward):
    """1 if `pattern` matches the completion (re.search; full=True: the whole stripped completion)."""

    name = "regex"

    def __init__(self, pattern: str = "", full: bool = False, flags: str = "") -> None:
        bits = {"i": re.IGNORECASE, "s": re.DOTALL, "m": re.MULTILINE}
        unknown = set(flags) - set(bits)
        if unknown:
            raise UserError(f"regex: unknown flag(s) {''.join(sorted(unknown))}; use i, s, m")
        if not pattern:
            raise UserError("regex: give the pattern to match (e.g. --pattern '^Answer: \\d+$')")
        try:
            self.regex = re.compile(pattern, sum((bits[f] for f in flags), 0))
        except re.error as exc:
            raise UserError(f"regex: {pattern!r} is not a valid regular expression ({exc})") from None
        self.full = full

    def __call__(self, prompt: str, completion: str, **row: Any) -> float:
        text = completion.strip()
        found = self.regex.fullmatch(text) if self.full else self.regex.search(text)
        return float(found is not None)


_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(completion: str) -> str:
    """The code of a completion: its first ```python fenced block, or the whole text when unfenced."""
    found = _FENCE.search(completion)
    return found.group(1) if found else completion


class UnitTests(Reward):
    """The share of the row's tests that pass against the completion's code (1.0 = all pass).

    `tests` is a string of Python (one test: asserts that must all hold) or a list of strings (each a
    test). The code runs in `genloop.sandbox`: a fresh `python -I` subprocess in a scratch directory
    with a wall-clock `timeout`, CPU-time and address-space limits (`memory_mb`), a file-size limit and
    no network; a crash, a timeout or an out-of-memory is simply 0 for the tests not yet passed.
    Completions are checked `workers` at a time.
    """

    name = "unit_tests"

    def __init__(
        self, field: str = "tests", timeout: float = 5.0, memory_mb: int = 512, workers: int = 2
    ) -> None:
        if timeout <= 0 or memory_mb < 64 or workers < 1:
            raise UserError("unit_tests: need timeout > 0, memory_mb >= 64 and workers >= 1")
        self.field, self.timeout, self.memory_mb, self.workers = field, timeout, memory_mb, workers
        self.required_fields = (field,)

    def __call__(self, prompt: str, completion: str, **row: Any) -> float:
        tests = row[self.field]
        tests = [tests] if isinstance(tests, str) else list(tests)
        if not tests:
            return 0.0
        return run_tests(extract_code(completion), tests, self.timeout, self.memory_mb) / len(tests)

    def batch(
        self, prompts: Sequence[str], completions: Sequence[str], rows: Sequence[Mapping[str, Any]]
    ) -> list[float]:
        with ThreadPoolExecutor(self.workers) as pool:
            triples = zip(prompts, completions, rows, strict=True)
            jobs = [pool.submit(self, p, c, **fields(r)) for p, c, r in triples]
            return [j.result() for j in jobs]


class CallableReward(Reward):
    """Any batch scorer as a reward, e.g. a reward model's `score(prompts, completions)`.

    `scale` and `shift` map its scores (a reward model's logits) onto the range the run wants.
    """

    name = "callable"

    def __init__(self, scorer: BatchScorer, scale: float = 1.0, shift: float = 0.0) -> None:
        self.scorer, self.scale, self.shift = scorer, scale, shift

    def __call__(self, prompt: str, completion: str, **row: Any) -> float:
        return self.batch([prompt], [completion], [row])[0]

    def batch(
        self, prompts: Sequence[str], completions: Sequence[str], rows: Sequence[Mapping[str, Any]]
    ) -> list[float]:
        scores = list(self.scorer(list(prompts), list(completions)))
        if len(scores) != len(completions):
            raise ValueError(
                f"the reward scorer returned {len(scores)} scores for {len(completions)} completions"
            )
        return [float(s) * self.scale + self.shift for s in scores]


class RewardModelScore(CallableReward):
    """The score of a reward model trained with `genloop rm` (a directory with reward_head.safetensors),
    on the prompt text and the completion, as the reward."""

    name = "reward_model"

    def __init__(self, path: str = "", scale: float = 1.0, shift: float = 0.0) -> None:
        if not path:
            raise UserError("the reward_model reward needs the model: --reward-model DIR (from `genloop rm`)")
        from genloop.preprocess.tokenizer import Tokenizer
        from genloop.train.reward_model import RewardModel, score_texts

        model = RewardModel.load(path)
        tokenizer = Tokenizer.load(Path(path).expanduser())
        super().__init__(lambda ps, cs: score_texts(model, tokenizer, ps, cs), scale, shift)


class FunctionReward(Reward):
    """A plain `(prompt, completion, **row) -> float` function as a Reward."""

    def __init__(self, fn: Callable[..., float], required_fields: Sequence[str] = ()) -> None:
        self.fn, self.required_fields = fn, tuple(required_fields)
        self.name = getattr(fn, "__name__", "function")  # type: ignore[misc]

    def __call__(self, prompt: str, completion: str, **row: Any) -> float:
        return float(self.fn(prompt, completion, **row))


REWARDS: dict[str, type[Reward]] = {
    r.name: r for r in (ExactAnswer, MaxWords, RegexMatch, UnitTests, RewardModelScore)
}


def make_reward(name: str, **options: Any) -> Reward:
    """The registered reward `name` built with `options` (its constructor's keywords)."""
    cls = REWARDS.get(name)
    if cls is None:
        raise UserError(f"unknown reward '{name}'; choose from {', '.join(sorted(REWARDS))}")
    import inspect

    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    extra = sorted(set(options) - accepted)
    if extra:
        raise UserError(
            f"reward '{name}' has no option '{extra[0]}'; "
            f"its options are {', '.join(sorted(accepted)) or 'none'}"
        )
    return cls(**options)


def as_reward(reward: Reward | str | Callable[..., float], **options: Any) -> Reward:
    """A Reward from a registry name, a Reward, or a plain per-completion function."""
    if isinstance(reward, Reward):
        return reward
    if isinstance(reward, str):
        return make_reward(reward, **options)
    return FunctionReward(reward)


def check_rows(reward: Reward, rows: Sequence[Mapping[str, Any]], where: str = "prompts") -> None:
    """UserError naming the first row that lacks a field the reward needs."""
    for i, row in enumerate(rows):
        for field in reward.required_fields:
            if row.get(field) is None:
                raise UserError(
                    f"{where}: row {i + 1} has no '{field}' field, which reward '{reward.name}' needs; "
                    f'add "{field}" to every row'
                )
