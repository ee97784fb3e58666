"""Repetition filters (Gopher's rules): repeated lines and paragraphs, and repeated n-grams.

Registered into `genloop.data.filters.FILTERS` on import; `filters` imports this module, so a config
names them like every other filter.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from pydantic import Field, field_validator

from genloop.data.filters import Filter, FilterOptions, register

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
_BULLETS = ("•", "●", "○", "◦", "▪", "▫", "■", "□", "‣", "⁃", "∙", "·", "-", "–", "—", "*", "+", ">")


def _duplicates(parts: Sequence[str]) -> tuple[int, int]:
    """How many parts repeat an earlier one, and their characters (the first copy is not counted)."""
    seen: set[str] = set()
    count = chars = 0
    for part in parts:
        if part in seen:
            count += 1
            chars += len(part)
        else:
            seen.add(part)
    return count, chars


class LineRepetitionOptions(FilterOptions):
    max_duplicate_lines: float = Field(
        0.3, ge=0, le=1, description="Max fraction of lines repeating an earlier line (Gopher: 0.3)."
    )
    max_duplicate_line_chars: float = Field(
        0.2, ge=0, le=1, description="Max fraction of characters in repeated lines (Gopher: 0.2)."
    )
    max_duplicate_paragraphs: float = Field(
        0.3, ge=0, le=1, description="Max fraction of paragraphs repeating an earlier one (Gopher: 0.3)."
    )
    max_duplicate_paragraph_chars: float = Field(
        0.2, ge=0, le=1, description="Max fraction of characters in repeated paragraphs (Gopher: 0.2)."
    )
    max_bullet_lines: float = Field(
        0.9, ge=0, le=1, description="Max fraction of lines starting with a bullet point (Gopher: 0.9)."
    )
    max_ellipsis_lines: float = Field(
        0.3, ge=0, le=1, description="Max fraction of lines ending with '...' or '…' (Gopher: 0.3)."
    )
    bullets: tuple[str, ...] = Field(_BULLETS, description="Line prefixes that count as bullet points.")


@register
class LineRepetitionFilter(Filter):
    """Repeated lines and paragraphs are boilerplate (headers, footers, cookie notices); pages made
    of bullets are menus; lines ending in an ellipsis are truncated teasers. Lines are compared
    stripped; blank lines are ignored; paragraphs are separated by blank lines."""

    name = "line_repetition"
    reasons = (
        "duplicate_lines",
        "duplicate_line_chars",
        "duplicate_paragraphs",
        "duplicate_paragraph_chars",
        "bullet_lines",
        "ellipsis_lines",
    )
    options_model = LineRepetitionOptions
    options: LineRepetitionOptions

    def __call__(self, text: str) -> str | None:
        o = self.options
        lines = [s for s in (line.strip() for line in text.split("\n")) if s]
        if not lines:
            return None
        total_chars = sum(map(len, lines))
        dup, dup_chars = _duplicates(lines)
        if dup / len(lines) > o.max_duplicate_lines:
            return "duplicate_lines"
        if dup_chars / total_chars > o.max_duplicate_line_chars:
            return "duplicate_line_chars"
        if o.bullets and sum(1 for s in lines if s.startswith(o.bullets)) / len(lines) > o.max_bullet_lines:
            return "bullet_lines"
        if sum(1 for s in lines if s.endswith(("...", "…"))) / len(lines) > o.max_ellipsis_lines:
            return "ellipsis_lines"
        if dup:  # no repeated line means no repeated paragraph either: skip the second split
            paragraphs = [p for p in (q.strip() for q in _PARAGRAPH_BREAK.split(text)) if p]
            dup, dup_chars = _duplicates(paragraphs)
            if dup / len(paragraphs) > o.max_duplicate_paragraphs:
                return "duplicate_paragraphs"
            if dup_chars / sum(map(len, paragraphs)) > o.max_duplicate_paragraph_chars:
                return "duplicate_paragraph_chars"
        return None


_NGRAM_WORD = re.compile(r"\w+")
_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant: a polynomial hash of word ids, mod 2**64
_SCRAMBLE = np.uint64(0xBF58476D1CE4E5B9)  # spreads small word ids over 64 bits before mixing


class NgramRepetitionOptions(FilterOptions):
    max_top_ngram_chars: dict[int, float] = Field(
        {2: 0.20, 3: 0.18, 4: 0.16},
        description="n -> max fraction of word characters covered by the most frequent n-gram "
        "(Gopher: 2: 0.20, 3: 0.18, 4: 0.16).",
    )
    max_duplicate_ngram_chars: dict[int, float] = Field(
        {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
        description="n -> max fraction of word characters inside repeats of an earlier n-gram "
        "(Gopher: 5: 0.15 down to 10: 0.10).",
    )

    @field_validator("max_top_ngram_chars", "max_duplicate_ngram_chars")
    @classmethod
    def _sizes(cls, value: dict[int, float]) -> dict[int, float]:
        for n, limit in value.items():
            if not 1 <= n <= 64:
                raise ValueError(f"n-gram size {n} is out of range 1..64")
            if limit < 0:
                raise ValueError(f"the limit for n={n} must be >= 0, got {limit}")
        return dict(sorted(value.items()))


@register
class NgramRepetitionFilter(Filter):
    """Repeated phrases within a document: spam, keyword stuffing, generated filler. Words are
    lowercased `\\w+` runs; characters are those of the words (no spaces, no punctuation). N-grams
    are compared by a 64-bit rolling hash of the words, so all the counting is numpy."""

    name = "ngram_repetition"
    reasons = ("top_ngram", "duplicate_ngram")
    options_model = NgramRepetitionOptions
    options: NgramRepetitionOptions

    def __call__(self, text: str) -> str | None:
        words = _NGRAM_WORD.findall(text.lower())
        count = len(words)
        if count < 2:
            return None
        # word ids by first appearance, not hash(): str hashes differ per process, and a tie between
        # equally frequent n-grams must break the same way in every worker
        index: dict[str, int] = {}
        first_seen = np.fromiter(
            (index.setdefault(w, len(index)) for w in words), dtype=np.uint64, count=count
        )
        ids = (first_seen + np.uint64(1)) * _SCRAMBLE
        lengths = np.fromiter(map(len, words), dtype=np.int64, count=count)
        cumulative = np.concatenate(([0], np.cumsum(lengths)))
        total = float(cumulative[-1])
        top, dup = self.options.max_top_ngram_chars, self.options.max_duplicate_ngram_chars
        last_top = max(top, default=0)
        hashes = ids
        for n in range(1, min(max([*top, *dup], default=0), count) + 1):
            if n > 1:
                hashes = hashes[:-1] * _MIX + ids[n - 1 :]
            if n in top and _top_fraction(hashes, cumulative, n, total) > top[n]:
                return "top_ngram"
            if n in dup:
                fraction = _duplicate_fraction(hashes, lengths, n, total)
                if fraction > dup[n]:
                    return "duplicate_ngram"
                # A repeated (n+1)-gram covers words that repeated n-grams cover already, so the
                # fraction never grows with n: under every later limit, no later n can fail.
                if n >= last_top and all(fraction <= limit for m, limit in dup.items() if m > n):
                    return None
        return None


def _top_fraction(hashes: np.ndarray, cumulative: np.ndarray, n: int, total: float) -> float:
    """Characters in all occurrences of the most frequent n-gram, over all word characters."""
    _, first, counts = np.unique(hashes, return_index=True, return_counts=True)
    most = counts.max()
    if most < 2:
        return 0.0
    starts = first[counts == most]  # ties: the longest of the most frequent n-grams counts
    chars = cumulative[starts + n] - cumulative[starts]
    return float(most) * float(chars.max()) / total


def _duplicate_fraction(hashes: np.ndarray, lengths: np.ndarray, n: int, total: float) -> float:
    """Characters of the words covered by repeats of an earlier n-gram, each word counted once. The
    first occurrence is not a duplicate: a phrase said twice in a long text is normal prose."""
    _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    repeated = first[inverse] != np.arange(len(hashes))
    if not repeated.any():
        return 0.0
    covered = np.zeros(len(lengths), dtype=bool)
    for k in range(n):
        covered[k : k + len(repeated)] |= repeated
    return float(lengths[covered].sum()) / total
