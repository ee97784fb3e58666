"""`genloop data inspect`: what is in a shard folder, without reading it all into memory.

Counts come from the manifest; sample documents are cut out of the token stream at end-of-text ids
and decoded; the histograms (document lengths, most frequent tokens) are computed over the memmaps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from genloop.data.shards import Shards
from genloop.preprocess.tokenizer import Tokenizer


@dataclass
class Inspection:
    manifest: dict[str, Any]
    samples: list[str]
    doc_lengths: np.ndarray
    top_tokens: list[tuple[str, int]]


def document_lengths(stream: np.ndarray, eos: int) -> np.ndarray:
    """Token counts of the documents in a stream (separator included)."""
    ends = np.flatnonzero(stream == eos)
    return np.diff(np.concatenate([[-1], ends])) if ends.size else np.array([stream.size])


def inspect_shards(
    folder: str | Path, split: str = "train", samples: int = 3, seed: int = 0, top: int = 20
) -> Inspection:
    shards = Shards.open(Path(folder))
    tokenizer = Tokenizer.load(shards.directory / shards.manifest["tokenizer"]["path"])
    eos = shards.eos_token_id
    arrays = shards.arrays(split)
    lengths = [document_lengths(a, eos) for a in arrays] if eos is not None else []
    counts = np.zeros(max(tokenizer.vocab_size, 1), dtype=np.int64)
    for a in arrays:
        counts += np.bincount(a, minlength=counts.size)[: counts.size]
    order = np.argsort(counts)[::-1][:top]
    top_tokens = [(tokenizer.decode([int(i)]), int(counts[i])) for i in order if counts[i]]
    rng = np.random.default_rng(seed)
    texts: list[str] = []
    for _ in range(samples if arrays else 0):
        a = arrays[int(rng.integers(len(arrays)))]
        ends = np.flatnonzero(a == eos) if eos is not None else np.array([a.size - 1])
        if not ends.size:
            break
        k = int(rng.integers(ends.size))
        start = int(ends[k - 1]) + 1 if k else 0
        texts.append(tokenizer.decode(a[start : int(ends[k])].tolist()))
    return Inspection(shards.manifest, texts, np.concatenate(lengths) if lengths else np.zeros(0), top_tokens)


def plot_inspection(path: Path, result: Inspection) -> None:
    """Document-length histogram and most frequent tokens, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    if result.doc_lengths.size:
        left.hist(result.doc_lengths, bins=np.logspace(0, np.log10(result.doc_lengths.max() + 1), 40))
        left.set_xscale("log")
    left.set_xlabel("tokens per document")
    left.set_ylabel("documents")
    left.set_title("Document lengths")
    labels = [repr(t)[1:-1] or "''" for t, _ in result.top_tokens][::-1]
    right.barh(labels, [n for _, n in result.top_tokens][::-1], color="#1565c0")
    right.set_title("Most frequent tokens")
    right.set_xlabel("count")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
