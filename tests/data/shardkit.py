"""Shard folders for loader tests, written with the real ShardWriter and a real manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from genloop.data.shards import FORMAT, MANIFEST, ShardWriter


def write_stream(folder: Path, stream: np.ndarray, tokens_per_shard: int, split: str = "train") -> Path:
    """One split holding `stream` (uint32), cut into shards of `tokens_per_shard` tokens."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(folder, split, np.dtype(np.uint32), tokens_per_shard)
    writer.add(stream)
    shards = writer.close()
    manifest = {
        "format": FORMAT,
        "version": 1,
        "dtype": "uint32",
        "tokenizer": {"path": "tokenizer", "eos_token_id": None, "vocab_size": int(stream.max()) + 1},
        "splits": {split: {"tokens": int(stream.size), "documents": 1, "shards": shards}},
        "sources": [],
    }
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return folder
