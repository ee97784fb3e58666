"""The gate of a feedback round: does the candidate satisfy held-out feedback better than the served
model, without getting worse at general text?

Held-out feedback is scored by log-probabilities, the quantity the training moved:
- preference pairs: each pair's margin log p(chosen) - log p(rejected); the candidate's gain is the
  change of that margin against the current model, and its win rate the share of pairs it widened;
- thumbs (KTO rows): per-token log-prob change of liked answers minus that of disliked ones;
- SFT rows: per-token loss on the answers.
The guard is perplexity on general text that feedback never touches, so a round cannot buy its
gain with the model's general ability.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from genloop.errors import UserError
from genloop.preprocess.tokenizer import Tokenizer
from genloop.train.preference_data import pair_batches, sequence_logps
from genloop.train.sft_data import SFTDataset

Row = Mapping[str, Any]


@torch.no_grad()
def answer_logps(
    model: nn.Module, tokenizer: Tokenizer, prompts: Sequence[object], answers: Sequence[object], seq_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """Summed log-prob of each answer after its prompt, and its token count."""
    logps, tokens = [], []
    for batch, part in pair_batches(tokenizer, prompts, answers, seq_len, "held-out row"):
        logps.append(sequence_logps(model, batch).double().numpy())
        tokens.extend(len(ids) - start for ids, start in part)
    return np.concatenate(logps) if logps else np.zeros(0), np.asarray(tokens, dtype=np.float64)


def preference_margins(
    model: nn.Module, tokenizer: Tokenizer, rows: Sequence[Row], seq_len: int
) -> np.ndarray:
    prompts = [r["prompt"] for r in rows]
    chosen, _ = answer_logps(model, tokenizer, prompts, [r["chosen"] for r in rows], seq_len)
    rejected, _ = answer_logps(model, tokenizer, prompts, [r["rejected"] for r in rows], seq_len)
    return chosen - rejected


def kto_token_logps(model: nn.Module, tokenizer: Tokenizer, rows: Sequence[Row], seq_len: int) -> np.ndarray:
    prompts = [r["prompt"] for r in rows]
    logps, tokens = answer_logps(model, tokenizer, prompts, [r["completion"] for r in rows], seq_len)
    return logps / np.maximum(tokens, 1)


@torch.no_grad()
def sft_loss(model: nn.Module, tokenizer: Tokenizer, rows: Sequence[Row], seq_len: int) -> float:
    data = SFTDataset(list(rows), tokenizer, seq_len, 1, seed=0, rank=0, world_size=1, packing=False)
    total = count = 0.0
    for i in range(len(data.lengths)):
        ids, labels = data.example(i)
        n = int((labels != -100).sum())
        if n:
            loss = model(torch.from_numpy(ids)[None], labels=torch.from_numpy(labels)[None])
            total, count = total + float(loss) * n, count + n
    return total / max(count, 1)


def guard_tokens(path: Path, tokenizer: Tokenizer, limit: int) -> list[int]:
    """Token ids of general text: a plain text file, or JSONL with a "text" field per line."""
    if not path.is_file():
        raise UserError(f"gate.guard_data {path} not found: give a text or JSONL file of general text")
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".jsonl":
        texts = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    texts.append(str(json.loads(line)["text"]))
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise UserError(f"{path}:{number}: expected a JSON object with a 'text' field") from None
        text = "\n\n".join(texts)
    ids = tokenizer.encode(text, add_special_tokens=False)[:limit]
    if len(ids) < 16:
        raise UserError(f"gate.guard_data {path} holds {len(ids)} tokens; give at least a paragraph of text")
    return ids


@torch.no_grad()
def perplexity(model: nn.Module, ids: Sequence[int], seq_len: int) -> float:
    """exp(mean next-token loss) over consecutive windows of `seq_len`."""
    total = count = 0.0
    for lo in range(0, len(ids) - 1, seq_len):
        window = torch.tensor(ids[lo : lo + seq_len + 1])
        if window.numel() < 2:
            break
        loss = model(window[:-1][None], labels=window[1:][None])
        n = window.numel() - 1
        total, count = total + float(loss) * n, count + n
    return math.exp(total / max(count, 1))


@dataclass
class Verdict:
    promote: bool
    reasons: list[str]
    metrics: dict[str, dict[str, float]]  # name -> {"current": x, "candidate": y, ...}


def judge(
    current: nn.Module,
    candidate: nn.Module,
    tokenizer: Tokenizer,
    held: Mapping[str, Sequence[Row]],
    method: str,
    seq_len: int,
    min_gain: float,
    guard: Sequence[int] | None,
    max_regression: float,
) -> Verdict:
    """Score both models on the held-out feedback and the guard text, and decide."""
    current.eval()
    candidate.eval()
    metrics: dict[str, dict[str, float]] = {}
    reasons: list[str] = []
    ok = True
    if held.get("preference"):
        before = preference_margins(current, tokenizer, held["preference"], seq_len)
        after = preference_margins(candidate, tokenizer, held["preference"], seq_len)
        gain = after - before
        metrics["preference margin"] = {
            "current": float(before.mean()), "candidate": float(after.mean()),
            "gain": float(gain.mean()), "win_rate": float((gain > 0).mean()), "pairs": float(len(gain)),
        }  # fmt: skip
    if held.get("kto"):
        rows = held["kto"]
        liked = np.array([bool(r["label"]) for r in rows])
        change = kto_token_logps(candidate, tokenizer, rows, seq_len) - kto_token_logps(
            current, tokenizer, rows, seq_len
        )
        score = (change[liked].mean() if liked.any() else 0.0) - (
            change[~liked].mean() if (~liked).any() else 0.0
        )
        metrics["thumbs separation"] = {"current": 0.0, "candidate": float(score), "gain": float(score)}
    if held.get("sft"):
        a, b = (
            sft_loss(current, tokenizer, held["sft"], seq_len),
            sft_loss(candidate, tokenizer, held["sft"], seq_len),
        )
        metrics["answer loss"] = {"current": a, "candidate": b, "gain": a - b}
    primary = {"dpo": "preference margin", "kto": "thumbs separation", "sft": "answer loss"}[method]
    main = metrics.get(primary)
    if main is None:
        ok = False
        reasons.append(f"no held-out {primary} examples to judge the candidate by")
    elif main["gain"] <= min_gain:
        ok = False
        reasons.append(
            f"held-out {primary} gain {main['gain']:+.4f} is not above the required {min_gain:+.4f}"
        )
    elif "win_rate" in main and main["win_rate"] <= 0.5:
        ok = False
        reasons.append(
            f"the candidate widened only {100 * main['win_rate']:.0f}% of held-out pairs (needs > 50%)"
        )
    else:
        reasons.append(f"held-out {primary} improved by {main['gain']:+.4f}")
    if guard is not None:
        a, b = perplexity(current, guard, seq_len), perplexity(candidate, guard, seq_len)
        rise = b / a - 1
        metrics["guard perplexity"] = {"current": a, "candidate": b, "gain": -rise}
        if rise > max_regression:
            ok = False
            reasons.append(
                f"general-text perplexity rose {100 * rise:.1f}% ({a:.2f} -> {b:.2f}), "
                f"over the allowed {100 * max_regression:.1f}%"
            )
        else:
            reasons.append(
                f"general-text perplexity {a:.2f} -> {b:.2f} ({100 * rise:+.1f}%, "
                f"allowed +{100 * max_regression:.1f}%)"
            )
    else:
        reasons.append("no gate.guard_data configured: general-text perplexity not checked")
    return Verdict(ok, reasons, metrics)
