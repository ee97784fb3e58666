"""`evaluate(model, tasks)`: run each task, cache its result in the out folder, write the report.

Resumable: each finished task is written to `OUT/tasks/<name>.json` with a fingerprint of the task
(definition and data hash), the model (weights file size and time) and the settings that change scores;
a rerun into the same folder reuses a task whose fingerprint matches and runs the rest. Deterministic:
torch is seeded and each generation prompt i samples with seed + i (greedy by default needs no seed).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from genloop.atomic import atomic_write_text
from genloop.checkpoint import resolve
from genloop.data.progress import stage_progress
from genloop.errors import UserError
from genloop.evaluate import loglik
from genloop.evaluate.metrics import example_scores, score_generations
from genloop.evaluate.perplexity import documents_perplexity, shards_perplexity
from genloop.evaluate.report import write_report
from genloop.evaluate.tasks import (
    TaskSpec,
    check_rows,
    load_choices,
    load_documents,
    load_generations,
    parse_tasks,
)
from genloop.home import home
from genloop.preprocess import Tokenizer

T = TypeVar("T")
MAX_PPL_WINDOW = 2048  # longer contexts cost quadratic attention on CPU and change perplexity little


class _Run:
    """The model is loaded at most once for scoring and once (as an Engine) for generation."""

    def __init__(
        self, path: Path, settings: dict[str, Any], batch_size: int, device: str, generates: bool = False
    ) -> None:
        self.path, self.settings, self.batch_size, self.device = path, settings, batch_size, device
        self.tokenizer = Tokenizer.load(path)
        self._model: nn.Module | None = None
        self._engine: Any = None
        # on CPU, a suite that also generates scores on the engine's thread (see `score`)
        self._score_on_engine = generates and device == "cpu"

    def score(self, fn: Callable[[], T]) -> T:
        """Run scoring work (model loading included) on the engine's thread when the suite generates:
        two threads that each ran a parallel op hold two OpenMP teams, and then libgomp stops
        spin-waiting and every kernel of both waits on a futex (~1.5x slower on two cores)."""
        return self.engine.call(fn) if self._score_on_engine else fn()

    @property
    def model(self) -> nn.Module:
        if self._model is None:
            from genloop.generate.loading import load_for_inference
            from genloop.model import DecoderLM

            model = load_for_inference(self.path, self.settings["dtype"])
            if not isinstance(model, DecoderLM):
                raise UserError(
                    f"{self.path} is not a decoder-only model; scoring needs a GPT or Llama style one"
                )
            self._model = model.to(self.device)
        return self._model

    @property
    def engine(self) -> Any:
        if self._engine is None:
            from genloop.generate import Engine

            self._engine = Engine(self.path, dtype=self.settings["dtype"], max_batch=self.batch_size)
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()


def evaluate(
    model: str | Path,
    tasks: Sequence[str | TaskSpec],
    *,
    limit: int | None = None,
    out: str | Path | None = None,
    seed: int = 0,
    batch_size: int = 16,
    max_tokens: int = 256,
    chat: bool = False,
    temperature: float = 0.0,
    dtype: str = "float32",
    device: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Score `model` (a directory or registered name) on `tasks`; returns what results.json holds.

    float32 is the default dtype because an evaluation measures the model itself: quantized weights
    (the engine's fast default) shift log-probs and would make scores disagree with other harnesses.
    """
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    if batch_size < 1 or max_tokens < 1:
        raise UserError("--batch-size and --max-tokens must be at least 1")
    path = resolve(model)
    specs = parse_tasks(tasks)
    for spec in specs:
        check_rows(spec, limit)
    folder = (
        Path(out).expanduser() if out else home() / "evals" / f"{time.strftime('%Y%m%d-%H%M%S')}-{path.name}"
    )
    (folder / "tasks").mkdir(parents=True, exist_ok=True)
    settings = {
        "limit": limit,
        "seed": seed,
        "max_tokens": max_tokens,
        "chat": chat,
        "temperature": temperature,
        "dtype": dtype,
    }
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    run = _Run(path, settings, batch_size, device, generates=any(s.kind in _GENERATING for s in specs))
    results: dict[str, Any] = {}
    try:
        with stage_progress(progress, unit="items") as bar:
            for spec in specs:
                results[spec.name] = _cached_or_run(run, spec, folder, bar)
    finally:
        run.close()
    summary = {
        "model": str(path),
        "settings": settings,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tasks": {name: {k: v for k, v in r.items() if k != "examples"} for name, r in results.items()},
        "out": str(folder),
    }
    write_report(folder, summary)
    return summary


def _cached_or_run(run: _Run, spec: TaskSpec, folder: Path, bar: Any) -> dict[str, Any]:
    fingerprint = hashlib.sha256(
        json.dumps([spec.fingerprint(), _model_identity(run.path), run.settings], sort_keys=True).encode()
    ).hexdigest()[:16]
    cache = folder / "tasks" / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', spec.name)}.json"
    if cache.is_file():
        try:
            cached = json.loads(cache.read_text(encoding="utf-8"))
            if cached.get("fingerprint") == fingerprint:
                cached["cached"] = True
                return dict(cached)
        except ValueError:
            pass  # a damaged cache is recomputed, never trusted
    torch.manual_seed(run.settings["seed"])
    bar_id = bar.add_task(spec.name, total=None)

    def start(total: int) -> None:
        bar.update(bar_id, total=total)

    def advance(n: int) -> None:
        bar.advance(bar_id, n)

    started = time.perf_counter()
    runner = _RUNNERS[spec.kind]
    if spec.kind in _GENERATING:
        metrics, examples, n = runner(run, spec, start, advance)
    else:
        metrics, examples, n = run.score(lambda: runner(run, spec, start, advance))
    result = {
        "name": spec.name,
        "kind": spec.kind,
        "path": str(spec.path),
        "n": n,
        "metrics": metrics,
        "seconds": round(time.perf_counter() - started, 3),
        "fingerprint": fingerprint,
        "examples": examples,
    }
    atomic_write_text(cache, json.dumps(result, indent=1))
    return {**result, "cached": False}


def _model_identity(path: Path) -> list[Any]:
    weights = sorted(path.glob("*.safetensors"))
    return [str(path.resolve()), [(w.name, w.stat().st_size, w.stat().st_mtime_ns) for w in weights]]


def _multiple_choice(run: _Run, spec: TaskSpec, start: Any, advance: Any) -> tuple[dict, list, int]:
    items = load_choices(spec.path, run.settings["limit"])
    pairs = loglik.choice_pairs(run.tokenizer, items)
    start(len(pairs))
    max_len = run.model.config.max_seq_len
    lls = loglik.continuation_logprobs(run.model, pairs, max_len, run.batch_size, advance)
    examples = loglik.score_choices(items, lls)
    metrics = {k: sum(e[k] for e in examples) / len(examples) for k in ("acc", "acc_norm", "acc_bytes")}
    return metrics, examples, len(items)


def _perplexity(run: _Run, spec: TaskSpec, start: Any, advance: Any) -> tuple[dict, list, int]:
    seq_len = spec.seq_len or min(run.model.config.max_seq_len, MAX_PPL_WINDOW)
    if seq_len > run.model.config.max_seq_len:
        raise UserError(
            f"task {spec.name}: seq_len {seq_len} exceeds the model's context {run.model.config.max_seq_len}"
        )
    limit = run.settings["limit"]
    if spec.path.is_dir():
        metrics, examples = shards_perplexity(
            run.model, run.path, spec.path, spec.split, seq_len, run.batch_size, limit, start, advance
        )
    else:
        docs = load_documents(spec.path, limit)
        metrics, examples = documents_perplexity(
            run.model, run.tokenizer, docs, seq_len, run.batch_size, start, advance
        )
    return metrics, examples, len(examples)


def _generation(run: _Run, spec: TaskSpec, start: Any, advance: Any) -> tuple[dict, list, int]:
    from genloop.generate.sampling import SamplingParams

    items = load_generations(spec.path, run.settings["limit"])
    chat, seed = run.settings["chat"], run.settings["seed"]
    if chat and not run.tokenizer.chat_template:
        raise UserError(f"{run.path} has no chat template; drop --chat or add one to tokenizer_config.json")
    start(len(items))
    requests = []
    for i, item in enumerate(items):
        prompt: Any = item.prompt
        if item.messages:
            if not run.tokenizer.chat_template:
                raise UserError(f"task {spec.name} holds chats, and {run.path} has no chat template")
            prompt = item.messages
        elif chat:
            system = [{"role": "system", "content": item.system}] if item.system else []
            prompt = [*system, {"role": "user", "content": item.prompt}]
        params = SamplingParams(
            max_tokens=spec.max_tokens or run.settings["max_tokens"],
            temperature=run.settings["temperature"],
            stop=list(spec.stop),
            seed=seed + i,
        )
        try:
            requests.append(run.engine.submit(prompt, params))
        except ValueError as exc:
            raise UserError(f"{spec.path} row {i + 1}: {exc}") from None
    predictions = []
    for request in requests:
        request.done.wait()
        if request.error is not None:
            raise request.error
        predictions.append(request.output().text.strip())
        advance(1)
    references = [item.references for item in items]
    metrics = score_generations(spec.metrics, predictions, references)
    examples = [
        {
            "prompt": it.prompt,
            "prediction": p,
            "references": it.references,
            **example_scores(p, it.references),
        }
        for it, p in zip(items, predictions, strict=True)
    ]
    return metrics, examples, len(items)


def _humaneval(run: _Run, spec: TaskSpec, start: Any, advance: Any) -> tuple[dict, list, int]:
    from genloop.evaluate.humaneval import humaneval_task

    return humaneval_task(run, spec, start, advance)


_GENERATING = ("generation", "humaneval")  # kinds that run on the Engine
_RUNNERS = {
    "multiple_choice": _multiple_choice,
    "perplexity": _perplexity,
    "generation": _generation,
    "humaneval": _humaneval,
}
