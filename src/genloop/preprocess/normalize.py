"""Text normalization steps, named so a config can list them and a pipeline can chain them.

Every step is a plain `str -> str` callable: easy to test on its own, to reorder, and to run in a
worker process. Steps are registered by name because configs (`data.normalize`,
`tokenizer.normalize`) refer to them as strings; a typo there must fail loudly with a suggestion, not
silently skip a step and change the data.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

import ftfy

from genloop.errors import UserError

if TYPE_CHECKING:
    from spellchecker import SpellChecker

Step = Callable[[str], str]

STEPS: dict[str, Step] = {}


def register_step(name: str) -> Callable[[Step], Step]:
    """Make a step available to `Pipeline.from_names` under `name` (names are what configs store)."""

    def add(fn: Step) -> Step:
        if name in STEPS:
            raise ValueError(f"normalization step '{name}' is already registered")
        STEPS[name] = fn
        return fn

    return add


@register_step("nfkc")
def nfkc(text: str) -> str:
    """Unicode NFKC: folds compatibility forms (ligatures, full-width letters, superscripts) so the
    same word is always the same code points, and the tokenizer does not learn duplicates."""
    return unicodedata.normalize("NFKC", text)


@register_step("fix_mojibake")
def fix_mojibake(text: str) -> str:
    """Repair text decoded with the wrong codec ("cafÃ©" -> "café") with ftfy.

    Curly quotes are kept: ftfy would straighten them by default, which changes correct text, and
    that is a different decision from repairing broken text.
    """
    return ftfy.fix_text(text, uncurl_quotes=False)


_CR = re.compile(r"\r\n?")
_BLANKS = re.compile(r"[ \t]+")
_TRAILING = re.compile(r" +\n")
_MANY_NEWLINES = re.compile(r"\n{3,}")


@register_step("clean_whitespace")
def clean_whitespace(text: str) -> str:
    """Make whitespace canonical: one newline style, single spaces, no trailing spaces, at most one
    blank line in a row, no leading/trailing whitespace. Scraped text varies mostly in exactly these
    ways, and each variant would otherwise cost its own tokens."""
    text = _CR.sub("\n", text)
    text = _BLANKS.sub(" ", text)
    text = _TRAILING.sub("\n", text)
    text = _MANY_NEWLINES.sub("\n\n", text)
    return text.strip()


@register_step("remove_control")
def remove_control(text: str) -> str:
    """Drop control and format characters (categories Cc, Cf) except newline and tab: they are
    invisible, carry no meaning for a language model, and often come from broken extraction."""
    return "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf"))


@register_step("lowercase")
def lowercase(text: str) -> str:
    """Lowercase everything (for classifiers and retrieval; generative models usually keep case)."""
    return text.lower()


@register_step("remove_punctuation")
def remove_punctuation(text: str) -> str:
    """Drop every Unicode punctuation character (categories P*), in any script, not just ASCII."""
    return "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))


# ASCII words not glued to other word characters or apostrophes: the English dictionary only knows
# such words, and touching "café", "don't", "x86" or "snake_case" would only damage them.
_WORD = re.compile(r"(?<![\w'’])[A-Za-z]+(?![\w'’])")


@lru_cache(maxsize=4)
def _spell_checker(language: str, distance: int) -> SpellChecker:
    """Loading the word-frequency dictionary takes ~0.4 s; do it once per process."""
    from spellchecker import SpellChecker

    return SpellChecker(language=language, distance=distance)


def make_spell_corrector(language: str = "en", distance: int = 2) -> Step:
    """A spell-correction step for `language` (a dictionary pyspellchecker ships with).

    Slow: each unknown word costs an edit-distance search (up to ~0.4 s for a long nonsense word),
    so use it on small curated sets, not on a pretraining corpus. Results are memoized per word.
    Only lowercase and Capitalized words are touched; ALL-CAPS and mIxEd words are likely acronyms
    or names. The corrected word keeps the original's capitalization.
    """

    @lru_cache(maxsize=65536)
    def correct_word(lower: str) -> str | None:
        checker = _spell_checker(language, distance)
        if lower in checker:
            return None
        return checker.correction(lower)

    def replace(match: re.Match[str]) -> str:
        word = match.group(0)
        if not (word.islower() or (word[0].isupper() and word[1:].islower())):
            return word
        fixed = correct_word(word.lower())
        if not fixed or fixed == word.lower():
            return word
        return fixed.capitalize() if word[0].isupper() else fixed

    def spell_correct(text: str) -> str:
        return _WORD.sub(replace, text)

    spell_correct.__doc__ = make_spell_corrector.__doc__
    return spell_correct


spell_correct: Step = register_step("spell_correct")(make_spell_corrector())


def unknown_step_error(name: str) -> UserError:
    """One line naming the bad step, the nearest valid one, and all valid ones."""
    valid = sorted(STEPS)
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return UserError(f"unknown normalization step '{name}'{hint} (valid steps: {', '.join(valid)})")


class Pipeline:
    """Normalization steps applied in order; an empty pipeline returns text unchanged.

    Order matters (fix mojibake before NFKC, whitespace last), so the pipeline keeps the order given.
    """

    def __init__(self, steps: Sequence[tuple[str, Step]] = ()) -> None:
        self.steps: tuple[tuple[str, Step], ...] = tuple(steps)

    @classmethod
    def from_names(cls, names: Iterable[str]) -> Pipeline:
        """Build from registered step names; an unknown name raises UserError with a suggestion."""
        steps = []
        for name in names:
            if name not in STEPS:
                raise unknown_step_error(name)
            steps.append((name, STEPS[name]))
        return cls(steps)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.steps]

    def __call__(self, text: str) -> str:
        for _, step in self.steps:
            text = step(text)
        return text

    def map(self, texts: Iterable[str]) -> Iterator[str]:
        """Lazily normalize a stream, so a corpus never has to fit in memory."""
        for text in texts:
            yield self(text)

    def __len__(self) -> int:
        return len(self.steps)

    def __repr__(self) -> str:
        return f"Pipeline({self.names!r})"
