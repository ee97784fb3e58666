"""Paired bootstrap over examples: the confidence interval of B − A for any metric, corpus ones included.

Every metric is written as a `Statistic`: a matrix of per-example sufficient statistics (rows are
examples) and a function from column sums to the metric. A resample is a count vector (how often each
example was drawn), so the resampled statistic is `finish(counts @ stats)`. This is what makes corpus
metrics come out right: perplexity is exp(Σnats / Σtokens) of the drawn windows, not a mean of
per-window perplexities, and BLEU/chrF are sacrebleu's corpus scores of the drawn sentences (sacrebleu
sums the same per-sentence n-gram statistics inside `corpus_score`, and its own `--paired-bs` test
resamples them this way). A and B see the same counts, so the interval is of a paired difference.

The resample indices are `numpy.random.default_rng(seed).integers(0, n, (resamples, n))`, drawn in
chunks of rows to bound memory; the interval is the percentile interval (Efron's), 95 % by default.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

LOWER_IS_BETTER = frozenset({"perplexity", "bits_per_byte", "nats_per_token"})
_CHUNK_CELLS = 4_000_000  # counts matrix cells per chunk: about 32 MB of float64


@dataclass(frozen=True)
class Statistic:
    """Per-example sufficient statistics [n, k] and how column sums [r, k] become metric values [r]."""

    stats: np.ndarray
    finish: Callable[[np.ndarray], np.ndarray]

    def value(self) -> float:
        """The metric on all examples (what the evaluation itself reported)."""
        return float(self.finish(self.stats.sum(axis=0, keepdims=True))[0])


def mean_statistic(values: Sequence[float]) -> Statistic:
    """Accuracy, exact match, F1, ROUGE: the mean of per-example scores."""
    column = np.asarray(values, dtype=np.float64).reshape(-1, 1)
    n = len(column)
    return Statistic(column, lambda sums: sums[:, 0] / n)


def perplexity_statistics(
    nats: Sequence[float], tokens: Sequence[float], nbytes: Sequence[float]
) -> dict[str, Statistic]:
    """perplexity, bits_per_byte and nats_per_token from summed nats, tokens and bytes (lm-eval's)."""
    stats = np.column_stack([np.asarray(x, dtype=np.float64) for x in (nats, tokens, nbytes)])
    return {
        "perplexity": Statistic(stats, lambda s: np.exp(s[:, 0] / s[:, 1])),
        "bits_per_byte": Statistic(stats, lambda s: s[:, 0] / math.log(2) / s[:, 2]),
        "nats_per_token": Statistic(stats, lambda s: s[:, 0] / s[:, 1]),
    }


def sacrebleu_statistic(
    name: str, predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> Statistic:
    """BLEU or chrF (sacrebleu's defaults, 0-100) of resampled sentences from their summed statistics."""
    import sacrebleu

    metric: Any = sacrebleu.BLEU() if name == "bleu" else sacrebleu.CHRF()
    width = max((len(r) for r in references), default=0)
    streams = [[refs[i] if i < len(refs) else None for refs in references] for i in range(width)]
    stats = np.asarray(metric._extract_corpus_statistics(list(predictions), streams), dtype=np.float64)

    def finish(sums: np.ndarray) -> np.ndarray:
        return np.array([metric._compute_score_from_stats(row).score for row in sums])

    return Statistic(stats, finish)


@dataclass(frozen=True)
class Delta:
    """A's and B's value, delta = B − A, its interval, and which model the interval says is better."""

    a: float
    b: float
    delta: float
    low: float
    high: float
    lower_is_better: bool

    @property
    def verdict(self) -> str:
        """Names the better model only when the interval excludes 0 on that side."""
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            return "no clear difference"
        if self.low > 0 or self.high < 0:
            b_higher = self.low > 0
            return "B better" if b_higher != self.lower_is_better else "A better"
        return "no clear difference"

    def improvement(self) -> tuple[float, float, float]:
        """(delta, low, high) signed so that positive always means B is better."""
        if self.lower_is_better:
            return -self.delta, -self.high, -self.low
        return self.delta, self.low, self.high

    def as_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "delta": self.delta,
            "ci": [self.low, self.high],
            "better": "lower" if self.lower_is_better else "higher",
            "verdict": self.verdict,
        }


def resample_counts(n: int, resamples: int, seed: int) -> Any:
    """Count matrices [rows, n] (how often each example is drawn), chunk by chunk, reproducibly."""
    rng = np.random.default_rng(seed)
    rows_per_chunk = max(1, _CHUNK_CELLS // max(n, 1))
    done = 0
    while done < resamples:
        rows = min(rows_per_chunk, resamples - done)
        idx = rng.integers(0, n, size=(rows, n))
        flat = (idx + np.arange(rows)[:, None] * n).ravel()
        yield np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(np.float64)
        done += rows


def paired_bootstrap(
    pairs: dict[str, tuple[Statistic, Statistic]],
    n: int,
    *,
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Delta]:
    """For each metric name: (A's statistic, B's statistic) → Delta; all metrics share the resamples."""
    if n < 1 or resamples < 1:
        raise ValueError("paired_bootstrap needs at least one example and one resample")
    deltas: dict[str, list[np.ndarray]] = {name: [] for name in pairs}
    for counts in resample_counts(n, resamples, seed):
        for name, (sa, sb) in pairs.items():
            deltas[name].append(sb.finish(counts @ sb.stats) - sa.finish(counts @ sa.stats))
    tail = 100 * (1 - confidence) / 2
    out = {}
    for name, (sa, sb) in pairs.items():
        spread = np.concatenate(deltas[name])
        spread = spread[np.isfinite(spread)]
        low, high = np.percentile(spread, [tail, 100 - tail]) if spread.size else (math.nan, math.nan)
        a, b = sa.value(), sb.value()
        out[name] = Delta(a, b, b - a, float(low), float(high), name in LOWER_IS_BETTER)
    return out


def bootstrap_interval(
    values: Sequence[float], *, resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of a mean (the win rate of B over prompts)."""
    stat = mean_statistic(values)
    counts = resample_counts(len(values), resamples, seed)
    spread = np.concatenate([stat.finish(c @ stat.stats) for c in counts])
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(spread, [tail, 100 - tail])
    return float(low), float(high)
