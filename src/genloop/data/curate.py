"""The per-document work of a build, run in worker processes: boilerplate removal for HTML,
normalization, quality filters, PII scrubbing, and the dedup key and MinHash signature.

Workers get their settings once (at start) and batches of texts after; they return, per document,
either the reason it was dropped or the cleaned text with its dedup key and signature. Decisions
that need the whole corpus (duplicates, the split) are made by the main process, in order.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from genloop.data import dedup, pii
from genloop.data.filters import build_filters
from genloop.preprocess.normalize import Pipeline


@dataclass(frozen=True)
class CurateSettings:
    """What a worker needs: plain data, so it pickles to a spawned process."""

    normalize: tuple[str, ...]
    filters: dict[str, dict[str, Any]]  # source label -> filter spec (build's merged with the source's)
    pii: tuple[str, ...]
    near: bool
    num_perm: int
    ngram: int


@dataclass(slots=True)
class Outcome:
    """A document's fate: `reason` set means dropped (and the text is not sent back)."""

    reason: str | None
    text: str = ""
    key: bytes = b""
    sig: np.ndarray | None = None
    pii: dict[str, int] | None = None


class Curator:
    """The worker-side stages for every source, built once per process."""

    def __init__(self, settings: CurateSettings) -> None:
        self.settings = settings
        self.normalize = Pipeline.from_names(settings.normalize)
        self.filters = {label: build_filters(spec) for label, spec in settings.filters.items()}

    def __call__(self, source: str, text: str, fmt: str | None) -> Outcome:
        if fmt == "html":
            text = extract_html(text)
            if not text.strip():
                return Outcome("extract:no_text")
        text = self.normalize(text)
        for check in self.filters[source]:
            reason = check(text)
            if reason is not None:
                return Outcome(f"filter:{reason}")
        counts: dict[str, int] = {}
        if self.settings.pii:
            text, counts = pii.scrub(text, self.settings.pii)
        s = self.settings
        sig = dedup.signature(text, s.num_perm, s.ngram) if s.near else None
        return Outcome(None, text, dedup.exact_key(text), sig, counts)


def extract_html(html: str) -> str:
    """Main text of a web page without navigation, ads and footers (trafilatura)."""
    import trafilatura  # lazy: heavy import, only needed when a source holds HTML

    return trafilatura.extract(html, include_comments=False, include_tables=True) or ""


_CURATOR: Curator | None = None


def _init_worker(settings: CurateSettings) -> None:
    global _CURATOR
    _CURATOR = Curator(settings)


def _curate_batch(batch: list[tuple[str, str, str | None]]) -> list[Outcome]:
    assert _CURATOR is not None, "worker not initialised"
    return [_CURATOR(*item) for item in batch]


class CurateWorkers:
    """`workers` processes (spawned: no inherited threads or locks), or the main process for 1."""

    def __init__(self, settings: CurateSettings, workers: int) -> None:
        self.workers = max(1, workers)
        self.pool = None
        if self.workers > 1:
            ctx = multiprocessing.get_context("spawn")
            self.pool = ctx.Pool(self.workers, initializer=_init_worker, initargs=(settings,))
        else:
            _init_worker(settings)

    def map(
        self, batches: Iterable[tuple[T, list[tuple[str, str, str | None]]]]
    ) -> Iterator[tuple[T, list[Outcome]]]:
        """Results in input order, at most a few batches in flight per worker, so the corpus streams
        through without piling up in memory."""
        yield from ordered_map(self.pool, _curate_batch, batches, window=3 * self.workers)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None

    def __enter__(self) -> CurateWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


T = TypeVar("T")
A = TypeVar("A")
R = TypeVar("R")


def ordered_map(
    pool: Any, fn: Callable[[A], R], items: Iterable[tuple[T, A]], window: int
) -> Iterator[tuple[T, R]]:
    """`(tag, fn(arg))` in order, with at most `window` calls in flight (Pool.imap reads its whole
    input ahead, which for a corpus means all of it in memory)."""
    if pool is None:
        for tag, arg in items:
            yield tag, fn(arg)
        return
    pending: deque[tuple[T, Any]] = deque()
    for tag, arg in items:
        pending.append((tag, pool.apply_async(fn, (arg,))))
        if len(pending) >= window:
            head, result = pending.popleft()
            yield head, result.get()
    while pending:
        head, result = pending.popleft()
        yield head, result.get()
