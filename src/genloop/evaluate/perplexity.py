"""Perplexity and bits-per-byte of a model on documents (text / JSONL) or on a shard folder's split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from genloop.data.shard_stage import tokenizer_hash
from genloop.data.shards import Shards
from genloop.errors import UserError
from genloop.evaluate.loglik import Advance, document_windows, summarize, window_nats
from genloop.evaluate.tasks import Document
from genloop.preprocess import Tokenizer

SPLIT_PREFERENCE = ("validation", "val", "test")


def documents_perplexity(
    model: nn.Module,
    tokenizer: Tokenizer,
    docs: list[Document],
    seq_len: int,
    batch_size: int,
    start: Any = None,
    advance: Advance | None = None,
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Corpus scores and per-document (nats, tokens, bytes); bytes are the documents' own UTF-8."""
    windows, counts, tokens, nbytes = document_windows(tokenizer, docs, seq_len)
    if start is not None:
        start(len(windows))
    nats = window_nats(model, windows, batch_size, advance)
    examples, at = [], 0
    for count, n_tokens, n_bytes in zip(counts, tokens, nbytes, strict=True):
        examples.append({"nats": float(sum(nats[at : at + count])), "tokens": n_tokens, "bytes": n_bytes})
        at += count
    return summarize(sum(nats), sum(tokens), sum(nbytes)), examples


def shards_perplexity(
    model: nn.Module,
    model_dir: Path,
    folder: Path,
    split: str | None,
    seq_len: int,
    batch_size: int,
    limit: int | None,
    start: Any = None,
    advance: Advance | None = None,
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Scores over the split's first `limit` windows (all when None), read in order from the shards.

    The stream holds EOS separators between documents: predicting them counts in the nats (the model
    must know where a document ends) but they add no bytes, since the bytes are the decoded text.
    """
    shards = Shards.open(folder)
    theirs, ours = folder / "tokenizer", model_dir
    same_files = (theirs / "tokenizer.json").is_file() and (ours / "tokenizer.json").is_file()
    if same_files and tokenizer_hash(theirs) != tokenizer_hash(ours):
        raise UserError(
            f"{folder} was tokenized with a different tokenizer than {model_dir}; "
            "rebuild the shards with `tokenizer: {model: MODEL}` to evaluate this model on them"
        )
    split = split or next((s for s in SPLIT_PREFERENCE if s in shards.splits()), None)
    if split is None:
        raise UserError(f"{folder} has no validation split; set `split:` in a task YAML ({shards.splits()})")
    arrays = shards.arrays(split)
    total = sum(a.size for a in arrays)
    n_windows = (total - 1) // seq_len if total > 1 else 0
    if limit is not None:
        n_windows = min(n_windows, limit)
    if n_windows == 0:
        raise UserError(
            f"split '{split}' of {folder} has {total} tokens: too few for one window of {seq_len}"
        )
    stream = _first_tokens(arrays, n_windows * seq_len + 1)
    windows = [
        (stream[i * seq_len : (i + 1) * seq_len], stream[i * seq_len + 1 : (i + 1) * seq_len + 1])
        for i in range(n_windows)
    ]
    if start is not None:
        start(len(windows))
    nats = window_nats(model, windows, batch_size, advance)
    tokenizer = (
        Tokenizer.load(folder / "tokenizer") if (folder / "tokenizer").is_dir() else Tokenizer.load(model_dir)
    )
    text = tokenizer.decode(stream[1:].tolist(), skip_special_tokens=True)
    n_tokens = n_windows * seq_len
    examples = [{"nats": float(n), "tokens": seq_len} for n in nats]
    return summarize(sum(nats), n_tokens, len(text.encode("utf-8"))), examples


def _first_tokens(arrays: list[np.memmap], count: int) -> np.ndarray:
    """The first `count` tokens of the split's stream, reading no more of the memmaps than needed."""
    parts, need = [], count
    for array in arrays:
        if need <= 0:
            break
        parts.append(np.asarray(array[:need], dtype=np.int64))
        need -= parts[-1].size
    return np.concatenate(parts)
