"""The last stage of a build: curated parts -> token ids -> shards, then the manifest.

Documents are encoded in batches (the `tokenizers` library spreads a batch over the cores) and
joined by the end-of-text id, nanoGPT style, so a reader can cut documents apart again.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from genloop.atomic import atomic_write_text
from genloop.data.parts import PartReader
from genloop.data.progress import stage_progress
from genloop.data.shards import FORMAT, MANIFEST, ShardWriter, token_dtype
from genloop.preprocess.tokenizer import Tokenizer

if TYPE_CHECKING:
    from genloop.data.build import Source
    from genloop.data.build_config import BuildConfig

SPLITS = ("train", "validation")
ENCODE_BATCH = 256


def clear_shards(output: Path) -> None:
    """Remove shards of an earlier build (and any half-written one) before writing new ones."""
    for pattern in ("train-*.bin", "validation-*.bin", ".train-*.bin.tmp", ".validation-*.bin.tmp"):
        for old in output.glob(pattern):
            old.unlink()


def tokenizer_hash(folder: Path) -> str:
    return hashlib.sha256((folder / "tokenizer.json").read_bytes()).hexdigest()


def write_shards(
    output: Path,
    work: Path,
    sources: list[Source],
    state: dict[str, Any],
    tokenizer: Tokenizer,
    config: BuildConfig,
    progress: bool,
) -> dict[str, Any]:
    clear_shards(output)
    dtype = token_dtype(tokenizer.vocab_size)
    eos = tokenizer.eos_token_id
    assert eos is not None
    writers = {split: ShardWriter(output, split, dtype, config.tokens_per_shard) for split in SPLITS}
    tokens: Counter[tuple[str, str]] = Counter()
    docs: Counter[tuple[str, str]] = Counter()
    total = sum(state["sources"][s.label]["stats"].get("kept", 0) for s in sources)
    started = time.perf_counter()
    try:
        with stage_progress(progress) as bar:
            task = bar.add_task("tokenize", total=total)
            for index, source in enumerate(sources):
                parts = PartReader(work / f"{index:03d}", state["sources"][source.label]["parts"])
                batch: list[dict[str, Any]] = []
                for record in parts.records():
                    batch.append(record)
                    if len(batch) == ENCODE_BATCH:
                        _encode(batch, tokenizer, eos, dtype, writers, source.label, tokens, docs)
                        bar.advance(task, len(batch))
                        batch = []
                if batch:
                    _encode(batch, tokenizer, eos, dtype, writers, source.label, tokens, docs)
                    bar.advance(task, len(batch))
        shards = {split: writer.close() for split, writer in writers.items()}
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    seconds = time.perf_counter() - started
    manifest = _manifest(output, sources, state, tokenizer, config, dtype, shards, tokens, docs, seconds)
    atomic_write_text(output / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False))
    return manifest


def _encode(
    batch: list[dict[str, Any]],
    tokenizer: Tokenizer,
    eos: int,
    dtype: np.dtype,
    writers: dict[str, ShardWriter],
    label: str,
    tokens: Counter[tuple[str, str]],
    docs: Counter[tuple[str, str]],
) -> None:
    ids = tokenizer.encode_batch([r["text"] for r in batch], add_special_tokens=False)
    separator = (eos,)
    for split in SPLITS:
        chosen = [row for r, row in zip(batch, ids, strict=True) if r["split"] == split]
        if not chosen:
            continue
        pieces: list[Any] = []
        for row in chosen:
            pieces += (row, separator)
        flat = np.fromiter(chain.from_iterable(pieces), dtype=dtype, count=sum(len(r) + 1 for r in chosen))
        writers[split].add(flat)
        tokens[label, split] += flat.size
        docs[label, split] += len(chosen)


def _manifest(
    output: Path,
    sources: list[Source],
    state: dict[str, Any],
    tokenizer: Tokenizer,
    config: BuildConfig,
    dtype: np.dtype,
    shards: dict[str, list[dict[str, Any]]],
    tokens: Counter[tuple[str, str]],
    docs: Counter[tuple[str, str]],
    seconds: float,
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "dtype": dtype.name,
        "tokenizer": {
            "path": "tokenizer",
            "sha256": tokenizer_hash(output / "tokenizer"),
            "vocab_size": tokenizer.vocab_size,
            "eos_token_id": tokenizer.eos_token_id,
        },
        "separator": "eos",
        "splits": {
            split: {
                "tokens": sum(s["tokens"] for s in shards[split]),
                "documents": sum(n for (_, sp), n in docs.items() if sp == split),
                "shards": shards[split],
            }
            for split in SPLITS
        },
        "sources": [
            {
                "name": s.label,
                "kind": s.kind,
                "where": s.where,
                "licence": s.licence,
                "fingerprint": s.fingerprint,
                "tokens": {split: tokens[s.label, split] for split in SPLITS},
                "documents": {split: docs[s.label, split] for split in SPLITS},
                "stages": state["sources"][s.label]["stats"],
            }
            for s in sources
        ],
        "seconds": {
            **{k: round(v, 2) for k, v in state.get("seconds", {}).items()},
            "shards": round(seconds, 2),
        },
        "config": config.model_dump(mode="json"),
    }
