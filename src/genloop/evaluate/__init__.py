"""Evaluation & testing: metrics, task files and the harness behind `genloop eval`.

`evaluate(model, tasks)` scores a model on multiple-choice (log-likelihood, lm-eval's conventions),
generation (BLEU, chrF, ROUGE, exact match, F1) and perplexity / bits-per-byte tasks, and writes
results.json, report.md and a PNG chart into its out folder.
"""

from __future__ import annotations

from genloop.evaluate.metrics import bleu, chrf, exact_match, rouge, score_generations, token_f1
from genloop.evaluate.runner import evaluate
from genloop.evaluate.tasks import KINDS, TaskSpec, parse_tasks

__all__ = [
    "KINDS",
    "TaskSpec",
    "bleu",
    "chrf",
    "evaluate",
    "exact_match",
    "parse_tasks",
    "rouge",
    "score_generations",
    "token_f1",
]
