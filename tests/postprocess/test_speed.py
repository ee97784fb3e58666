"""Throughput of `process` and of a stream on 100 kB, printed (chars/s). The stream's cost per piece
is the held window, not the answer: it must not be quadratic."""

from __future__ import annotations

import random
import sys
import time

from genloop.postprocess import load_postprocess

WORDS = [
    "the",
    "model",
    "answers",
    "quickly",
    "and",
    "with",
    "care,",
    "see",
    "docs.",
    "x = 1",
    "\n",
    "café",
    "日本",
]


def _text(n: int) -> str:
    rnd = random.Random(0)
    parts, size = [], 0
    while size < n:
        w = rnd.choice(WORDS) if rnd.random() > 0.01 else "mail bob@example.com or call +44 20 7946 0958"
        parts.append(w)
        size += len(w) + 1
    return " ".join(parts)[:n]


def test_throughput_on_100_kb() -> None:
    text = _text(100_000)
    pipeline = load_postprocess({"filter": {"blocklist": ["darn", "heck", "kill yourself"]}})
    t0 = time.perf_counter()
    whole = pipeline.process(text).text
    t_whole = time.perf_counter() - t0
    state = pipeline.stream()
    t0 = time.perf_counter()
    out = "".join(state.feed(text[i : i + 4]) for i in range(0, len(text), 4)) + state.finish()
    t_stream = time.perf_counter() - t0
    assert out == whole
    print(
        f"\npostprocess on {len(text)} chars: process {len(text) / t_whole:,.0f} chars/s, "
        f"stream (4-char pieces) {len(text) / t_stream:,.0f} chars/s "
        f"({t_stream / (len(text) / 4) * 1e6:.1f} us per piece)",
        file=sys.__stderr__,
    )
    assert len(text) / t_stream > 50_000  # far above any model's token rate (~4 chars a token)
