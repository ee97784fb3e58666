"""`compare(a, b, tasks)`: is B better than A, task by task, beyond the noise of a finite test set?

Both models are evaluated with `evaluate` into `OUT/a` and `OUT/b` (a rerun reuses finished tasks), and
everything after that works from the per-example scores those runs cached: a paired bootstrap over the
examples gives B − A for each metric with a confidence interval (see bootstrap.py), and on generation
tasks a reward model or a judge model can rule on each pair of answers (see judging.py) for a
head-to-head win rate. Results go to compare.json, compare.md and compare.png in OUT.

Model arguments are model directories or registered names; a training checkpoint folder
(`runs/ID/checkpoints/step-N`) or a run folder is taken to mean the model directory inside it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genloop.atomic import atomic_write_text
from genloop.checkpoint import resolve
from genloop.errors import CheckpointError, UserError
from genloop.evaluate.bootstrap import (
    Statistic,
    mean_statistic,
    paired_bootstrap,
    perplexity_statistics,
    sacrebleu_statistic,
)
from genloop.evaluate.compare_report import markdown, plot
from genloop.evaluate.runner import evaluate
from genloop.evaluate.tasks import TaskSpec
from genloop.home import home

NOT_RESAMPLED = ("tokens", "bytes")
PER_TOKEN = ("perplexity", "nats_per_token")


def model_dir(name: str | Path, role: str) -> Path:
    """The model directory for a name, a model folder, a checkpoint folder or a run folder."""
    try:
        path = resolve(name).resolve()
    except CheckpointError as exc:
        raise UserError(f"{role}: {exc}") from None
    if not (path / "config.json").is_file():
        raise UserError(
            f"{role}: {path} is not a model directory (no config.json); give a model directory, "
            "a training checkpoint (runs/ID/checkpoints/step-N) or a run folder"
        )
    return path


def compare(
    a: str | Path,
    b: str | Path,
    tasks: Sequence[str | TaskSpec],
    *,
    out: str | Path | None = None,
    judge: str | Path | None = None,
    reward_model: str | Path | None = None,
    rubric: str | None = None,
    resamples: int = 1000,
    seed: int = 0,
    limit: int | None = None,
    confidence: float = 0.95,
    **eval_kwargs: Any,
) -> dict[str, Any]:
    """Evaluate A and B on `tasks` and compare them; returns what compare.json holds.

    `eval_kwargs` go to `evaluate` (batch_size, max_tokens, chat, temperature, dtype, device, progress).
    """
    if resamples < 1:
        raise UserError(f"--resamples must be at least 1, got {resamples}")
    if not 0 < confidence < 1:
        raise UserError(f"confidence must be between 0 and 1, got {confidence}")
    path_a, path_b = model_dir(a, "model A"), model_dir(b, "model B")
    judges = _judges(judge, reward_model, rubric, eval_kwargs)
    folder = Path(out).expanduser() if out else home() / "compares" / _default_name(path_a, path_b)
    run_a = evaluate(path_a, tasks, out=folder / "a", limit=limit, seed=seed, **eval_kwargs)
    run_b = evaluate(path_b, tasks, out=folder / "b", limit=limit, seed=seed, **eval_kwargs)
    examples_a, examples_b = _cached_examples(folder / "a"), _cached_examples(folder / "b")
    results: dict[str, Any] = {}
    for name, task in run_a["tasks"].items():
        ex_a, ex_b = examples_a[name], examples_b[name]
        _check_paired(name, ex_a, ex_b)
        results[name] = _compare_task(task, run_b["tasks"][name], ex_a, ex_b, resamples, seed, confidence)
        if task["kind"] == "generation" and judges:
            results[name]["head_to_head"] = _head_to_head(judges, ex_a, ex_b, resamples, seed, confidence)
    summary = {
        "a": str(path_a),
        "b": str(path_b),
        "settings": {**run_a["settings"], "resamples": resamples, "confidence": confidence},
        "judges": {kind: str(spec["path"]) for kind, spec in judges.items()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tasks": results,
        "out": str(folder),
    }
    atomic_write_text(folder / "compare.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(folder / "compare.md", markdown(summary))
    plot(summary, folder / "compare.png")
    return summary


def _default_name(a: Path, b: Path) -> str:
    def label(p: Path) -> str:
        return p.parent.name if p.name == "model" else p.name

    return f"{time.strftime('%Y%m%d-%H%M%S')}-{label(a)}-vs-{label(b)}"


def _judges(
    judge: str | Path | None, reward_model: str | Path | None, rubric: str | None, eval_kwargs: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Check the judges before any evaluation runs, so a typo costs nothing."""
    from genloop.preprocess import Tokenizer
    from genloop.train.reward_model import is_reward_model

    judges: dict[str, dict[str, Any]] = {}
    if reward_model is not None:
        path = model_dir(reward_model, "reward model")
        if not is_reward_model(path):
            raise UserError(
                f"reward model: {path} has no reward head; train one with `genloop rm MODEL --data PAIRS`"
            )
        judges["reward_model"] = {"path": path}
    if judge is not None:
        path = model_dir(judge, "judge")
        if not Tokenizer.load(path).chat_template:
            raise UserError(f"judge: {path} has no chat template; a judge must be a chat (instruct) model")
        judges["judge"] = {"path": path, "rubric": rubric}
    elif rubric is not None:
        raise UserError("--rubric needs --judge: the rubric is what the judge model is told to apply")
    device = eval_kwargs.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    for spec in judges.values():
        spec.update(
            chat=bool(eval_kwargs.get("chat")), device=device, batch_size=eval_kwargs.get("batch_size", 8)
        )
    return judges


def _cached_examples(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """Per-example scores by task name, from the task caches `evaluate` wrote."""
    out = {}
    for path in sorted((folder / "tasks").glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        out[data["name"]] = data["examples"]
    return out


def _check_paired(name: str, a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    """A paired bootstrap needs the same items in the same order for both models."""
    if len(a) != len(b):
        raise UserError(
            f"task {name}: A was scored on {len(a)} items and B on {len(b)}; a paired comparison needs the "
            "same items (for a shard folder, fix the window with `seq_len:` in a task YAML)"
        )
    for key in ("prompt", "gold"):
        if any(x.get(key) != y.get(key) for x, y in zip(a, b, strict=True)):
            raise UserError(f"task {name}: A's and B's items differ ({key}); they must be the same rows")


def _compare_task(
    task_a: dict[str, Any],
    task_b: dict[str, Any],
    ex_a: list[dict[str, Any]],
    ex_b: list[dict[str, Any]],
    resamples: int,
    seed: int,
    confidence: float,
) -> dict[str, Any]:
    stats_a, notes = _statistics(task_a, ex_a)
    stats_b, notes_b = _statistics(task_b, ex_b)
    notes.update(notes_b)
    verdicts = dict.fromkeys(notes, "not resampled")
    if task_a["kind"] == "perplexity" and sum(e["tokens"] for e in ex_a) != sum(e["tokens"] for e in ex_b):
        for metric in PER_TOKEN:
            stats_a.pop(metric, None)
            notes[metric] = "A and B tokenize differently: compare bits_per_byte, not per-token scores"
            verdicts[metric] = "not comparable"
    pairs = {m: (stats_a[m], stats_b[m]) for m in stats_a if m in stats_b}
    deltas = paired_bootstrap(pairs, len(ex_a), resamples=resamples, seed=seed, confidence=confidence)
    metrics = {name: delta.as_dict() for name, delta in deltas.items()}
    for metric, why in notes.items():
        a, b = task_a["metrics"].get(metric), task_b["metrics"].get(metric)
        if metric not in metrics and a is not None and b is not None:
            metrics[metric] = {"a": a, "b": b, "delta": b - a, "ci": None, "verdict": verdicts[metric]}
        if metric in metrics:
            metrics[metric]["note"] = why
    return {"kind": task_a["kind"], "n": len(ex_a), "metrics": metrics}


def _statistics(task: dict[str, Any], examples: list[dict[str, Any]]) -> tuple[dict[str, Statistic], dict]:
    """Each reported metric as a resampleable statistic, and a note for each one that is not."""
    names = [m for m in task["metrics"] if m not in NOT_RESAMPLED]
    stats: dict[str, Statistic] = {}
    notes: dict[str, str] = {}
    if task["kind"] == "perplexity":
        tokens = [float(e["tokens"]) for e in examples]
        if all("bytes" in e for e in examples):
            nbytes = [float(e["bytes"]) for e in examples]
        else:  # shard windows record no bytes: share the split's decoded bytes out by tokens
            per_token = task["metrics"]["bytes"] / max(sum(tokens), 1.0)
            nbytes = [t * per_token for t in tokens]
            notes["bits_per_byte"] = "window bytes apportioned by tokens (shard windows record no bytes)"
        computed = perplexity_statistics([e["nats"] for e in examples], tokens, nbytes)
        stats = {m: computed[m] for m in names if m in computed}
    else:
        predictions = [str(e.get("prediction", "")) for e in examples]
        references = [list(e.get("references", [])) for e in examples]
        for metric in names:
            if all(isinstance(e.get(metric), int | float) for e in examples):
                stats[metric] = mean_statistic([e[metric] for e in examples])
            elif metric in ("bleu", "chrf") and task["kind"] == "generation":
                stats[metric] = sacrebleu_statistic(metric, predictions, references)
            elif metric.startswith("rouge") and task["kind"] == "generation":
                stats[metric] = mean_statistic(_rouge_each(metric, predictions, references))
    for metric in names:
        if metric not in stats:
            notes.setdefault(metric, "no per-example scores to resample")
    return stats, notes


def _rouge_each(kind: str, predictions: list[str], references: list[list[str]]) -> list[float]:
    from genloop.evaluate.metrics import rouge

    return [rouge([p], [r])[kind] for p, r in zip(predictions, references, strict=True)]


def _head_to_head(
    judges: dict[str, dict[str, Any]],
    ex_a: list[dict[str, Any]],
    ex_b: list[dict[str, Any]],
    resamples: int,
    seed: int,
    confidence: float,
) -> dict[str, Any]:
    from genloop.evaluate.judging import Judge, reward_model_outcomes, summarize_outcomes

    prompts = [str(e["prompt"]) for e in ex_a]
    answers_a, answers_b = [str(e["prediction"]) for e in ex_a], [str(e["prediction"]) for e in ex_b]
    out = {}
    for kind, spec in judges.items():
        if kind == "reward_model":
            outcomes, details = reward_model_outcomes(
                spec["path"], prompts, answers_a, answers_b, chat=spec["chat"]
            )
        else:
            if "loaded" not in spec:
                spec["loaded"] = Judge(spec["path"], spec["rubric"], spec["device"], spec["batch_size"])
            outcomes, details = spec["loaded"].outcomes(prompts, answers_a, answers_b)
        summary = summarize_outcomes(outcomes, resamples=resamples, seed=seed, confidence=confidence)
        out[kind] = {"model": str(spec["path"]), **summary, "per_prompt": _per_prompt(outcomes, details)}
        if kind == "judge":
            out[kind]["rubric"] = spec["loaded"].rubric
    return out


def _per_prompt(outcomes: np.ndarray, details: list[dict[str, Any]]) -> list[dict[str, Any]]:
    words = {1: "B", 0: "tie", -1: "A"}
    return [{"winner": words[int(o)], **d} for o, d in zip(outcomes.tolist(), details, strict=True)]
