"""Text metrics for generation tasks, each taken from the library the field already trusts.

BLEU and chrF are sacrebleu's corpus scores (0-100, sacrebleu's defaults: 13a tokenizer, chrF with
character order 6 and beta 2), so a number here equals the number a paper computed with sacrebleu.
ROUGE-1/2/L are rouge-score's F-measures (with its Porter stemmer, as Hugging Face `evaluate` runs it),
averaged over examples. Exact match and token F1 follow the SQuAD v1.1 script: lower-case, drop
punctuation and the articles a/an/the, collapse whitespace; with several references an example scores
its best match. Every score except BLEU/chrF is a fraction in [0, 1].
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

from genloop.errors import UserError

GENERATION_METRICS = ("exact_match", "f1", "bleu", "chrf", "rouge")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalization, so that "The Cat." and "cat" count as the same answer."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 when the normalized prediction equals any normalized reference."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(r) for r in references))


def contains(prediction: str, references: Sequence[str]) -> float:
    """1.0 when a normalized reference appears, on word boundaries, in the normalized prediction: a
    chat reply may wrap the answer in a sentence ("Your dog is called Rex!")."""
    pred = f" {normalize_answer(prediction)} "
    return float(any(ref and f" {ref} " in pred for ref in map(normalize_answer, references)))


def token_f1(prediction: str, references: Sequence[str]) -> float:
    """SQuAD token F1 against the best reference: overlap of normalized bags of words."""
    return max((_f1(prediction, r) for r in references), default=0.0)


def _f1(prediction: str, reference: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:  # SQuAD: two empty answers agree, one empty answer scores 0
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _reference_streams(references: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """sacrebleu wants one stream per reference position; None pads examples with fewer references."""
    width = max((len(r) for r in references), default=0)
    return [[refs[i] if i < len(refs) else None for refs in references] for i in range(width)]


def bleu(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """sacrebleu corpus BLEU (0-100) of the predictions against one or more references each."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(predictions), _reference_streams(references)).score)


def chrf(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """sacrebleu corpus chrF (0-100)."""
    import sacrebleu

    return float(sacrebleu.corpus_chrf(list(predictions), _reference_streams(references)).score)


def rouge(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean rouge1/rouge2/rougeL F-measure; each example takes its best reference (score_multi)."""
    from rouge_score import rouge_scorer

    kinds = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(kinds), use_stemmer=True)
    totals = dict.fromkeys(kinds, 0.0)
    for pred, refs in zip(predictions, references, strict=True):
        scores = scorer.score_multi(list(refs), pred)
        for kind in kinds:
            totals[kind] += scores[kind].fmeasure
    n = max(len(predictions), 1)
    return {kind: total / n for kind, total in totals.items()}


def _mean(
    fn: Callable[[str, Sequence[str]], float],
) -> Callable[[Sequence[str], Sequence[Sequence[str]]], float]:
    def corpus(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
        scores = [fn(p, r) for p, r in zip(predictions, references, strict=True)]
        return sum(scores) / len(scores) if scores else 0.0

    return corpus


_CORPUS: dict[str, Callable[[Sequence[str], Sequence[Sequence[str]]], float | dict[str, float]]] = {
    "exact_match": _mean(exact_match),
    "f1": _mean(token_f1),
    "contains": _mean(contains),
    "bleu": bleu,
    "chrf": chrf,
    "rouge": rouge,
}


def check_metrics(names: Sequence[str], where: str) -> list[str]:
    """The metric names, validated: an unknown one is a UserError listing the known ones."""
    unknown = [n for n in names if n not in _CORPUS]
    if unknown or not names:
        raise UserError(
            f"{where}: unknown metric {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(_CORPUS)}"
        )
    return list(names)


def score_generations(
    names: Sequence[str], predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> dict[str, float]:
    """Corpus scores for each metric named; `rouge` expands to rouge1, rouge2 and rougeL."""
    out: dict[str, float] = {}
    for name in names:
        value = _CORPUS[name](predictions, references)
        out.update(value if isinstance(value, dict) else {name: value})
    return out


def example_scores(prediction: str, references: Sequence[str]) -> dict[str, float]:
    """The per-example scores that average to the corpus score (kept for bootstrap comparisons)."""
    return {
        "exact_match": exact_match(prediction, references),
        "f1": token_f1(prediction, references),
        "contains": contains(prediction, references),
    }
