"""Document quality filters: cheap statistics that tell prose from menus, tables, spam and boilerplate.

Each filter is a small picklable object, `f(text) -> None` (keep) or a short, stable reason key (drop)
that the pipeline's report counts per source. Filters are named in configs, so they live in a registry
and are built from a spec (`build_filters`); a typo or a bad option is a `UserError`, never a silent
no-op. The default thresholds are the Gopher / MassiveText rules (Rae et al. 2021, "Scaling Language
Models: Methods, Analysis & Insights from Training Gopher", appendix A.1.1 and table A1), tuned for
English prose: other languages or code need a per-source override.

Words are whitespace-separated tokens unless a filter says otherwise. Everything runs per document
in worker processes over ~100 MB of text, so the statistics use str methods, regexes and numpy rather
than Python loops over characters.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from genloop.errors import UserError

if TYPE_CHECKING:
    from py3langid.langid import LanguageIdentifier


class FilterOptions(BaseModel):
    """Base of every filter's options: unknown keys are errors (a typo must not disable a check)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_range(low: float | None, high: float | None, what: str) -> None:
    if low is not None and high is not None and low > high:
        raise ValueError(f"min_{what} ({low}) must not exceed max_{what} ({high})")


class Filter:
    """A quality check. Subclasses set `name`, `reasons` (every key `__call__` can return) and
    `options_model`, and implement `__call__`. Construction validates options and raises UserError.
    Instances hold only plain attributes (options, word sets), so they pickle to worker processes."""

    name: ClassVar[str]
    reasons: ClassVar[tuple[str, ...]]
    options_model: ClassVar[type[FilterOptions]]

    def __init__(self, /, **options: Any) -> None:
        try:
            self.options = self.options_model.model_validate(options)
        except ValidationError as exc:
            raise UserError(_validation_message(self.name, self.options_model, exc)) from None

    def __call__(self, text: str) -> str | None:
        """None to keep the document, else the reason key for dropping it."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """The effective options, JSON-ready: what a manifest records about how data was filtered."""
        return self.options.model_dump(mode="json")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.options.model_dump().items())
        return f"{type(self).__name__}({args})"


FILTERS: dict[str, type[Filter]] = {}


def register(cls: type[Filter]) -> type[Filter]:
    """Make a filter class available to configs under its `name`."""
    if cls.name in FILTERS:
        raise ValueError(f"filter '{cls.name}' is already registered")
    FILTERS[cls.name] = cls
    return cls


# One-entry cache of the whitespace split: several filters need the words of the same text in a row,
# and splitting 100 MB once instead of five times matters. Identity (`is`) makes the check O(1); the
# tuple is swapped in one assignment, so a reader never sees a text paired with another's words.
_split_cache: tuple[str, list[str]] = ("", [])


def _words(text: str) -> list[str]:
    global _split_cache
    cached = _split_cache
    if cached[0] is text:
        return cached[1]
    words = text.split()
    _split_cache = (text, words)
    return words


# ---------------------------------------------------------------------------------------------------
# Simple statistics


class LengthOptions(FilterOptions):
    min_chars: int = Field(0, ge=0, description="Drop texts with fewer characters (0: no minimum).")
    max_chars: int | None = Field(None, ge=1, description="Drop texts longer than this (None: no maximum).")
    min_words: int = Field(50, ge=0, description="Drop texts with fewer words (Gopher: 50).")
    max_words: int | None = Field(100_000, ge=1, description="Drop texts with more words (Gopher: 100,000).")

    @model_validator(mode="after")
    def _ranges(self) -> LengthOptions:
        _check_range(self.min_chars, self.max_chars, "chars")
        _check_range(self.min_words, self.max_words, "words")
        return self


@register
class LengthFilter(Filter):
    """Too short to teach anything (titles, stubs), or too long to be one real document (dumps)."""

    name = "length"
    reasons = ("too_short", "too_long")
    options_model = LengthOptions
    options: LengthOptions

    def __call__(self, text: str) -> str | None:
        o = self.options
        if len(text) < o.min_chars:
            return "too_short"
        if o.max_chars is not None and len(text) > o.max_chars:
            return "too_long"
        n = len(_words(text))
        if n < o.min_words:
            return "too_short"
        if o.max_words is not None and n > o.max_words:
            return "too_long"
        return None


class MeanWordLengthOptions(FilterOptions):
    min_length: float = Field(3.0, ge=0, description="Minimum mean word length in characters (Gopher: 3).")
    max_length: float = Field(10.0, gt=0, description="Maximum mean word length in characters (Gopher: 10).")

    @model_validator(mode="after")
    def _ranges(self) -> MeanWordLengthOptions:
        _check_range(self.min_length, self.max_length, "length")
        return self


@register
class MeanWordLengthFilter(Filter):
    """Very short words mean symbol or number soup; very long ones mean URLs, base64 or glued text.
    Word length counts punctuation attached to the word, as a whitespace split gives it."""

    name = "mean_word_length"
    reasons = ("mean_word_length",)
    options_model = MeanWordLengthOptions
    options: MeanWordLengthOptions

    def __call__(self, text: str) -> str | None:
        words = _words(text)
        if not words:
            return "mean_word_length"
        mean = sum(map(len, words)) / len(words)
        if mean < self.options.min_length or mean > self.options.max_length:
            return "mean_word_length"
        return None


class SymbolRatioOptions(FilterOptions):
    max_ratio: float = Field(0.1, ge=0, description="Maximum symbols per word (Gopher: 0.1).")
    symbols: tuple[str, ...] = Field(
        ("#", "...", "…"), min_length=1, description="Strings counted as symbols (each occurrence)."
    )

    @field_validator("symbols")
    @classmethod
    def _non_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not s for s in value):
            raise ValueError("symbols must be non-empty strings")
        return value


@register
class SymbolRatioFilter(Filter):
    """Hash tags and ellipses in bulk mark tag clouds, truncated snippets and link lists."""

    name = "symbol_ratio"
    reasons = ("symbol_ratio",)
    options_model = SymbolRatioOptions
    options: SymbolRatioOptions

    def __call__(self, text: str) -> str | None:
        symbols = sum(map(text.count, self.options.symbols))
        if symbols == 0:
            return None
        words = len(_words(text))
        if words == 0 or symbols / words > self.options.max_ratio:
            return "symbol_ratio"
        return None


class DigitRatioOptions(FilterOptions):
    max_ratio: float = Field(
        0.25, ge=0, le=1, description="Maximum fraction of non-space characters that are ASCII digits."
    )


@register
class DigitRatioFilter(Filter):
    """Tables of figures, logs and ID lists. Not a Gopher rule; 0.25 leaves prose with dates alone.
    Only ASCII digits count: counting ten characters is a C loop, other scripts' digits are rare."""

    name = "digit_ratio"
    reasons = ("digit_ratio",)
    options_model = DigitRatioOptions
    options: DigitRatioOptions

    def __call__(self, text: str) -> str | None:
        digits = sum(map(text.count, "0123456789"))
        if digits == 0:
            return None
        chars = sum(map(len, _words(text)))
        if digits / chars > self.options.max_ratio:
            return "digit_ratio"
        return None


_HAS_LETTER = re.compile(r"[^\W\d_]")


class AlphaWordsOptions(FilterOptions):
    min_ratio: float = Field(
        0.8, ge=0, le=1, description="Minimum fraction of words with an alphabetic character (Gopher: 0.8)."
    )


@register
class AlphaWordsFilter(Filter):
    """Prose is mostly words with letters; numbers, symbols and markup are not."""

    name = "alpha_words"
    reasons = ("alpha_words",)
    options_model = AlphaWordsOptions
    options: AlphaWordsOptions

    def __call__(self, text: str) -> str | None:
        words = _words(text)
        if not words:
            return "alpha_words"
        without = sum(1 for w in words if not _HAS_LETTER.search(w))
        if (len(words) - without) / len(words) < self.options.min_ratio:
            return "alpha_words"
        return None


class StopWordsOptions(FilterOptions):
    words: tuple[str, ...] = Field(
        ("the", "be", "to", "of", "and", "that", "have", "with"),
        min_length=1,
        description="Function words of the language kept (Gopher's English list); replace them for another.",
    )
    min_count: int = Field(2, ge=0, description="Minimum number of distinct stop words present (Gopher: 2).")


@register
class StopWordsFilter(Filter):
    """Running text needs function words; keyword lists, tables and navigation do not have them.
    English by default: a config that keeps another language must give that language's words."""

    name = "stop_words"
    reasons = ("stop_words",)
    options_model = StopWordsOptions
    options: StopWordsOptions

    def __init__(self, /, **options: Any) -> None:
        super().__init__(**options)
        alternatives = "|".join(re.escape(w) for w in sorted(set(self.options.words), key=len, reverse=True))
        self._pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)

    def __call__(self, text: str) -> str | None:
        need = self.options.min_count
        if need == 0:
            return None
        found: set[str] = set()
        for match in self._pattern.finditer(text):  # stops as soon as enough are seen: prose is cheap
            found.add(match.group(0).lower())
            if len(found) >= need:
                return None
        return "stop_words"


# ---------------------------------------------------------------------------------------------------
# Language and content


@lru_cache(maxsize=1)
def language_identifier() -> LanguageIdentifier:
    """py3langid's model, loaded once per process (~0.7 s) on first use, never pickled with a filter;
    normalized probabilities make `min_score` a confidence between 0 and 1."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


class LanguageOptions(FilterOptions):
    keep: tuple[str, ...] = Field(("en",), min_length=1, description="ISO 639 codes of the languages kept.")
    min_score: float = Field(
        0.5, ge=0, le=1, description="Minimum probability of the best language (py3langid, normalized)."
    )
    max_chars: int = Field(
        2000, ge=50, description="Classify only this prefix: language rarely changes mid-document."
    )

    @field_validator("keep")
    @classmethod
    def _known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        labels = set(language_identifier().labels)
        for code in value:
            if code not in labels:
                close = difflib.get_close_matches(code, sorted(labels), n=1, cutoff=0.5)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ValueError(
                    f"'{code}' is not a language py3langid knows{hint}; use ISO 639 codes such as en, de, fr"
                )
        return value


@register
class LanguageFilter(Filter):
    """Keep documents in the configured languages, judged on a prefix of the text. The reason key is
    always "language", whatever the language found, so that the report has a bounded set of keys."""

    name = "language"
    reasons = ("language",)
    options_model = LanguageOptions
    options: LanguageOptions

    def __init__(self, /, **options: Any) -> None:
        super().__init__(**options)
        self._keep = frozenset(self.options.keep)

    def __call__(self, text: str) -> str | None:
        language, score = language_identifier().classify(text[: self.options.max_chars])
        if language not in self._keep or score < self.options.min_score:
            return "language"
        return None


_BAD_WORDS = (
    "arsehole", "asshole", "bellend", "blowjob", "bollocks", "bukkake", "bullshit", "clit",
    "cocksucker", "cumshot", "cunt", "deepthroat", "dickhead", "dildo", "ejaculate", "fellatio", "fuck",
    "fucked", "fucker", "fuckers", "fucking", "fucks", "gangbang", "handjob", "hentai", "horny", "jizz",
    "milf", "motherfucker", "motherfucking", "nsfw", "orgasm", "porn", "porno", "pornhub", "pussy",
    "rimjob", "shit", "shits", "shitty", "slut", "sluts", "twat", "wank", "wanker", "whore", "whores",
)  # fmt: skip
"""Profanity and pornography terms, the commonest signals of spam pages; not a hate-speech list
(give one with `words_file`). A ratio rather than presence keeps literature and discussions about
language: one swear word in a long text is fine."""

_BAD_WORD_TOKEN = re.compile(r"[^\W\d_]+")


class BadWordsOptions(FilterOptions):
    max_ratio: float = Field(0.01, ge=0, le=1, description="Maximum fraction of words found in the list.")
    words: tuple[str, ...] | None = Field(
        None, description="Inline word list; with neither this nor words_file the built-in English list."
    )
    words_file: Path | None = Field(None, description="A UTF-8 file with one word per line ('#' comments).")


@register
class BadWordsFilter(Filter):
    """Pages dense in profanity or pornography vocabulary. Words are lowercased letter runs, so a
    list entry must be a single word; both inline words and the file are used when both are given."""

    name = "bad_words"
    reasons = ("bad_words",)
    options_model = BadWordsOptions
    options: BadWordsOptions

    def __init__(self, /, **options: Any) -> None:
        super().__init__(**options)
        o = self.options
        words: set[str] = set()
        if o.words is None and o.words_file is None:
            words.update(_BAD_WORDS)
        words.update(w.strip().lower() for w in o.words or ())
        if o.words_file is not None:
            words.update(_read_word_list(o.words_file))
        words.discard("")
        self.words = frozenset(words)

    def __call__(self, text: str) -> str | None:
        tokens = _BAD_WORD_TOKEN.findall(text.lower())
        if not tokens or self.words.isdisjoint(tokens):
            return None
        counts = Counter(tokens)
        hits = sum(counts[w] for w in self.words.intersection(counts))
        if hits / len(tokens) > self.options.max_ratio:
            return "bad_words"
        return None


def _read_word_list(path: Path) -> list[str]:
    try:
        lines = path.expanduser().read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"filter 'bad_words': words_file {path} does not exist; fix the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"filter 'bad_words': cannot read words_file {path} ({exc})") from None
    return [line.strip().lower() for line in lines if line.strip() and not line.lstrip().startswith("#")]


# ---------------------------------------------------------------------------------------------------
# Building from a config


DEFAULT_FILTERS: dict[str, dict[str, Any]] = {
    "length": {},
    "symbol_ratio": {},
    "digit_ratio": {},
    "alpha_words": {},
    "mean_word_length": {},
    "line_repetition": {},
    "ngram_repetition": {},
    "language": {},
    "stop_words": {},
    "bad_words": {},
}
"""The spec used when a config names no filters: every filter with its Gopher-like defaults (see each
options model), cheapest first. The order is the order of checks, so it decides which reason a document
that fails several rules is counted under."""


def build_filters(spec: Mapping[str, Mapping[str, Any] | bool | None]) -> list[Filter]:
    """Filters in the spec's order. A value is the filter's options; `true` or `{}` means defaults,
    `false` or null disables it (so a per-source override can switch one off)."""
    if not isinstance(spec, Mapping):
        raise UserError(
            f"filters must be a mapping of filter name to options, got {type(spec).__name__} "
            f"(known filters: {', '.join(FILTERS)})"
        )
    filters: list[Filter] = []
    for name, options in spec.items():
        cls = FILTERS.get(name)
        if cls is None:
            raise unknown_filter_error(str(name))
        if options is None or options is False:
            continue
        if options is True:
            options = {}
        if not isinstance(options, Mapping):
            raise UserError(
                f"filter '{name}': expected a mapping of options, true or false, got {options!r} "
                f"(options: {', '.join(cls.options_model.model_fields)})"
            )
        filters.append(cls(**{str(k): v for k, v in options.items()}))
    return filters


def check(filters: Sequence[Filter], text: str) -> str | None:
    """The first filter's reason to drop `text`, or None when every filter keeps it."""
    for f in filters:
        reason = f(text)
        if reason is not None:
            return reason
    return None


def unknown_filter_error(name: str) -> UserError:
    valid = list(FILTERS)
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return UserError(f"unknown filter '{name}'{hint} (known filters: {', '.join(valid)})")


def _validation_message(name: str, model: type[FilterOptions], exc: ValidationError) -> str:
    """One line per problem, naming the filter, the option and what it wants."""
    problems = []
    for err in exc.errors():
        option = ".".join(str(p) for p in err["loc"] if p != "[key]")
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(option, list(model.model_fields), n=1, cutoff=0.5)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(f"unknown option '{option}'{hint}; options: {', '.join(model.model_fields)}")
        elif option:
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"option '{option}': {msg} (got {err.get('input')!r})")
        else:
            problems.append(err["msg"].removeprefix("Value error, "))
    return f"filter '{name}': " + "; ".join(problems)


from genloop.data import repetition  # noqa: E402, F401  (registers its filters)
