"""Log-likelihood scoring: multiple choice the way lm-eval does it, and perplexity / bits-per-byte.

Conventions copied from lm-eval 0.4 (`lm_eval/api/task.py`, `api/model.py`, `models/huggingface.py`),
so that the same model and task give the same accuracy in both harnesses:

- the context is the question as written; each choice becomes the continuation `" " + choice`
  (`target_delimiter` is one space); trailing whitespace of the context moves to the continuation;
- tokens: `encode(context + continuation)` with the tokenizer's own BOS policy, and the continuation is
  what follows the first `len(encode(context))` tokens (so a word boundary tokenizes as in the text);
  an empty context is replaced by the BOS token (EOS when there is none);
- a too-long pair is truncated from the left to the model's context; the score of a choice is the sum
  of its continuation tokens' log-probabilities;
- `acc`: the argmax of those sums is the gold choice; `acc_norm`: the argmax of sum / the choice's
  length in characters (lm-eval's `completion_len = len(choice)`, without the delimiter); `acc_bytes`:
  the same over UTF-8 bytes. Ties go to the first choice (numpy's argmax).

Perplexity follows lm-eval's `loglikelihood_rolling`: each document is prefixed with BOS (EOS when
there is none) and cut into disjoint windows of `seq_len` predicted tokens, each window conditioned on
the tokens before it inside the window, so every token is predicted exactly once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from genloop.evaluate.tasks import ChoiceItem, Document
from genloop.preprocess import Tokenizer

IGNORE = -100
TARGET_DELIMITER = " "
Advance = Callable[[int], None]


@dataclass(frozen=True)
class Pair:
    """One scoring request: token ids of a context and of the continuation to score after it."""

    context: list[int]
    continuation: list[int]


def prefix_token(tokenizer: Tokenizer) -> int:
    """What an empty context is conditioned on (lm-eval's `prefix_token_id`: BOS, else EOS)."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to condition on")
    return token


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> Pair:
    """lm-eval's `_encode_pair` for a causal model, and its empty-context rule."""
    if not context:
        cont = tokenizer.encode(continuation, add_special_tokens=False)
        first = prefix_token(tokenizer)
        return Pair([first], cont) if cont[:1] != [first] else Pair(cont[:1], cont[1:])
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    n_context = len(tokenizer.encode(context))
    return Pair(whole[:n_context], whole[n_context:])


@torch.inference_mode()
def continuation_logprobs(
    model: nn.Module,
    pairs: Sequence[Pair],
    max_len: int,
    batch_size: int,
    advance: Advance | None = None,
) -> list[float]:
    """Summed log-prob of each continuation given its context, in the order given.

    Rows are sorted longest first (lm-eval does the same) so each batch pads little; right padding never
    changes a causal model's earlier positions, so no attention mask is needed.
    """
    device = next(model.parameters()).device
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i].context) + len(pairs[i].continuation)))
    out = [0.0] * len(pairs)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        seqs, n_scored = [], []
        for i in rows:
            pair = pairs[i]
            if not pair.continuation:
                raise ValueError("a continuation encodes to no tokens")
            seqs.append((pair.context + pair.continuation)[-(max_len + 1) :])
            n_scored.append(min(len(pair.continuation), len(seqs[-1]) - 1))
        width = max(len(s) for s in seqs) - 1
        input_ids = torch.zeros(len(seqs), width, dtype=torch.long)
        labels = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
        for row, (seq, k) in enumerate(zip(seqs, n_scored, strict=True)):
            n = len(seq) - 1
            input_ids[row, :n] = torch.tensor(seq[:-1])
            labels[row, n - k : n] = torch.tensor(seq[-k:])
        per_token = model(input_ids.to(device), labels=labels.to(device), reduction="none")
        sums = (-per_token.float().sum(dim=1)).tolist()
        for i, value in zip(rows, sums, strict=True):
            out[i] = value
        if advance is not None:
            advance(len(rows))
    return out


def choice_pairs(tokenizer: Tokenizer, items: Sequence[ChoiceItem]) -> list[Pair]:
    """Every (question, choice) request, item by item, choice by choice."""
    return [encode_pair(tokenizer, it.question, TARGET_DELIMITER + c) for it in items for c in it.choices]


def score_choices(items: Sequence[ChoiceItem], logprobs: Sequence[float]) -> list[dict[str, Any]]:
    """Per item: acc, acc_norm, acc_bytes, the prediction and the choices' log-probs."""
    results, at = [], 0
    for item in items:
        lls = np.array(logprobs[at : at + len(item.choices)])
        at += len(item.choices)
        chars = np.array([float(len(c)) for c in item.choices])
        nbytes = np.array([float(len(c.encode("utf-8"))) for c in item.choices])
        pred, pred_norm, pred_bytes = (
            int(np.argmax(lls)),
            int(np.argmax(lls / chars)),
            int(np.argmax(lls / nbytes)),
        )
        results.append(
            {
                "acc": float(pred == item.gold),
                "acc_norm": float(pred_norm == item.gold),
                "acc_bytes": float(pred_bytes == item.gold),
                "pred": pred,
                "gold": item.gold,
                "logprobs": [float(x) for x in lls],
            }
        )
    return results


# -------------------------------------------------------------------------------- perplexity


def rolling_windows(tokens: Sequence[int], first: int, seq_len: int) -> list[tuple[list[int], list[int]]]:
    """(inputs, targets) windows that predict every token once: `[first] + tokens` cut every seq_len."""
    seq = [first, *tokens]
    return [(seq[i : i + seq_len], seq[i + 1 : i + seq_len + 1]) for i in range(0, len(tokens), seq_len)]


@torch.inference_mode()
def window_nats(
    model: nn.Module,
    windows: Sequence[tuple[Sequence[int], Sequence[int]]],
    batch_size: int,
    advance: Advance | None = None,
) -> list[float]:
    """Total negative log-likelihood (nats) of each window's targets."""
    device = next(model.parameters()).device
    out: list[float] = []
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        width = max(len(inp) for inp, _ in chunk)
        input_ids = torch.zeros(len(chunk), width, dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE, dtype=torch.long)
        for row, (inp, tgt) in enumerate(chunk):
            input_ids[row, : len(inp)] = torch.as_tensor(np.asarray(inp, dtype=np.int64))
            labels[row, : len(tgt)] = torch.as_tensor(np.asarray(tgt, dtype=np.int64))
        per_token = model(input_ids.to(device), labels=labels.to(device), reduction="none")
        out.extend(per_token.float().sum(dim=1).tolist())
        if advance is not None:
            advance(len(chunk))
    return out


def document_windows(
    tokenizer: Tokenizer, docs: Sequence[Document], seq_len: int
) -> tuple[list[tuple[list[int], list[int]]], list[int], list[int], list[int]]:
    """All windows of all documents, and per document: its window count, token count and byte count."""
    first = prefix_token(tokenizer)
    windows, counts, tokens, nbytes = [], [], [], []
    for doc in docs:
        ids = tokenizer.encode(doc.text, add_special_tokens=False)
        doc_windows = rolling_windows(ids, first, seq_len)
        windows.extend(doc_windows)
        counts.append(len(doc_windows))
        tokens.append(len(ids))
        nbytes.append(len(doc.text.encode("utf-8")))
    return windows, counts, tokens, nbytes


def summarize(nats: float, tokens: int, nbytes: int) -> dict[str, float]:
    """perplexity = exp(nats / tokens); bits_per_byte = nats / ln 2 / bytes (lm-eval's definition)."""
    return {
        "perplexity": math.exp(nats / tokens) if tokens else float("nan"),
        "bits_per_byte": nats / math.log(2) / nbytes if nbytes else float("nan"),
        "nats_per_token": nats / tokens if tokens else float("nan"),
        "tokens": float(tokens),
        "bytes": float(nbytes),
    }
