"""One round of the feedback loop: feedback since the last round -> training sets -> a candidate ->
the gate -> promotion (a new registered version, and the running server switched to it) -> report.

State lives in GENLOOP_HOME/loop/<model>/: `state.json` (the version now served, the feedback
window already used, one line per round) and `round-NNN/` (its data, training run, report.md,
report.png and round.json). A promoted version is registered as `<model>-rN` with its parent and
round in genloop.json, so every served answer's `model_version` traces back through the rounds.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from genloop.atomic import atomic_write_text
from genloop.errors import UserError
from genloop.feedback.config import LoopConfig
from genloop.home import home, models_dir

KINDS = ("sft", "preference", "kto")
METHOD_DATA = {"dpo": "preference", "kto": "kto", "sft": "sft"}


@dataclass
class RoundResult:
    round: int
    model: str
    started: str
    exported: dict[str, int]
    train_rows: dict[str, int] = field(default_factory=dict)
    held_rows: dict[str, int] = field(default_factory=dict)
    method: str | None = None
    candidate: str | None = None
    promoted: bool = False
    new_version: str | None = None
    server: str | None = None
    reasons: list[str] = field(default_factory=list)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    minutes: float = 0.0
    dry_run: bool = False
    directory: str | None = None


def loop_dir(model: str) -> Path:
    return home() / "loop" / model


def read_state(folder: Path) -> dict[str, Any]:
    path = folder / "state.json"
    if not path.is_file():
        return {"current": None, "since": None, "rounds": []}
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(
            f"{path} is unreadable ({exc}); restore it or delete it to start the loop afresh"
        ) from None


def _held_out(row: Mapping[str, Any], share: float) -> bool:
    """A fixed, content-based split: the same example lands on the same side in every round."""
    digest = hashlib.sha256(json.dumps(row, sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def split(rows: Sequence[Mapping[str, Any]], share: float) -> tuple[list[Any], list[Any]]:
    train, held = [], []
    for row in rows:
        (held if _held_out(row, share) else train).append(row)
    if rows and not held:  # a tiny round still needs something to judge by
        held.append(train.pop())
    return train, held


def choose_method(requested: str, counts: Mapping[str, int], minimum: int) -> str | None:
    """dpo on preference pairs, kto on thumbs, sft on corrections/upvotes: the first with enough rows."""
    if requested != "auto":
        return requested if counts.get(METHOD_DATA[requested], 0) >= minimum else None
    for method in ("dpo", "kto", "sft"):
        if counts.get(METHOD_DATA[method], 0) >= minimum:
            return method
    return None


def _export(cfg: LoopConfig, since: datetime | None) -> dict[str, list[dict[str, Any]]]:
    from genloop.cli.feedback_cmd import open_store

    with open_store(cfg.db) as store:
        return {kind: store.export(kind, since) for kind in KINDS}


def _write_jsonl(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def _train(cfg: LoopConfig, method: str, current: Path, data: Path, out: Path, progress: bool) -> Path:
    """Train the candidate from the current version; LoRA adapters are merged into a full model."""
    from genloop.config import RunConfig, validate
    from genloop.train.run import run_training

    t = cfg.train
    objective = {"dpo": "dpo", "kto": "kto", "sft": "sft"}[method]
    train: dict[str, Any] = {
        "objective": objective, "init_from": str(current), "max_steps": t.steps,
        "learning_rate": t.learning_rate, "batch_size": t.batch_size, "warmup_steps": min(10, t.steps // 10),
        "eval_every": 10**6, "save_every": 10**6, "log_every": max(1, t.steps // 20), "dtype": t.dtype,
        "seed": t.seed, "compile": False, "preference": {"beta": t.beta},
    }  # fmt: skip
    if t.lora is not None:
        train["lora"] = t.lora
    run_config = validate(
        RunConfig, {"data": {"train_file": str(data), "seq_len": t.seq_len}, "train": train}
    )
    result = run_training(run_config, out / "run", progress=progress, label=f"loop-{method}")
    trained = result.run_dir / "model"
    if t.lora is None:
        return trained
    from genloop.checkpoint import load_generation_config, load_model, save_model
    from genloop.checkpoint.adapter import load_adapter
    from genloop.model.lora import merge_lora
    from genloop.preprocess.tokenizer import Tokenizer

    model = load_model(current)
    load_adapter(model, trained)
    merge_lora(model)
    merged = out / "candidate"
    save_model(model, merged, tokenizer=Tokenizer.load(current), generation=load_generation_config(current))
    return merged


def _promote(cfg: LoopConfig, candidate: Path, parent: str, number: int) -> str:
    """Register the candidate as `<model>-r<N>`, recording its parent and round."""
    name = f"{cfg.model}-r{number}"
    target = models_dir() / name
    staging = models_dir() / f".{name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(candidate, staging)
    meta_path = staging / "genloop.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    meta.update({"version": name, "parent": parent, "round": number, "loop": cfg.model})
    atomic_write_text(meta_path, json.dumps(meta, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return name


def switch_server(url: str, model: str, api_key: str | None, timeout: float = 600.0) -> str:
    """Ask a running `genloop serve` to serve `model` (it loads it, then switches without downtime)."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        reply = httpx.post(
            f"{url.rstrip('/')}/v1/admin/model", json={"model": model}, headers=headers, timeout=timeout
        )
    except httpx.HTTPError as exc:
        why = f"{type(exc).__name__}: {exc}"
        return f"server {url} not switched ({why}); restart it with `genloop serve {model}`"
    if reply.status_code != 200:
        try:
            message = reply.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = reply.text[:200]
        return f"server {url} refused the switch ({reply.status_code}: {message})"
    return f"server {url} now serves {model}"


def run_round(cfg: LoopConfig, dry_run: bool = False, progress: bool = True) -> RoundResult:
    from genloop.checkpoint import load_model, resolve
    from genloop.feedback import gate
    from genloop.preprocess.tokenizer import Tokenizer

    start = time.monotonic()
    folder = loop_dir(cfg.model)
    state = read_state(folder)
    current_name = state["current"] or cfg.model
    current = resolve(current_name)
    number = len(state["rounds"]) + 1
    since = datetime.fromisoformat(state["since"]) if state["since"] else None
    until = datetime.now(UTC)
    exported = _export(cfg, since)
    result = RoundResult(
        number, current_name, until.isoformat(timespec="seconds"), {k: len(v) for k, v in exported.items()}
    )
    result.dry_run = dry_run
    parts = {kind: split(rows, cfg.gate.holdout) for kind, rows in exported.items()}
    result.train_rows = {k: len(v[0]) for k, v in parts.items()}
    result.held_rows = {k: len(v[1]) for k, v in parts.items()}
    method = choose_method(cfg.train.method, result.train_rows, cfg.gate.min_examples)
    result.method = method
    if method is None:
        need = cfg.train.method if cfg.train.method != "auto" else "any kind"
        result.reasons.append(
            f"not enough new feedback to train: {result.train_rows} training rows, "
            f"{cfg.gate.min_examples} of {need} needed; nothing trained, "
            "the window stays open for the next round"
        )
        return result
    if dry_run:
        result.reasons.append(
            f"would train {method} on {result.train_rows[METHOD_DATA[method]]} rows from {current_name}, "
            f"judge on {sum(result.held_rows.values())} held-out rows, "
            f"and promote as {cfg.model}-r{number} if it wins"
        )
        return result
    round_dir = folder / f"round-{number:03d}"
    round_dir.mkdir(parents=True, exist_ok=True)
    result.directory = str(round_dir)
    for kind, (train_rows, held_rows) in parts.items():
        _write_jsonl(round_dir / f"{kind}.train.jsonl", train_rows)
        _write_jsonl(round_dir / f"{kind}.heldout.jsonl", held_rows)
    candidate = _train(
        cfg, method, current, round_dir / f"{METHOD_DATA[method]}.train.jsonl", round_dir, progress
    )
    result.candidate = str(candidate)
    tokenizer = Tokenizer.load(current)
    guard_path = cfg.guard_path()
    guard = gate.guard_tokens(guard_path, tokenizer, cfg.gate.guard_tokens) if guard_path else None
    verdict = gate.judge(
        load_model(current), load_model(candidate), tokenizer, {k: v[1] for k, v in parts.items()}, method,
        cfg.train.seq_len, cfg.gate.min_gain, guard, cfg.gate.max_regression,
    )  # fmt: skip
    result.metrics, result.reasons = verdict.metrics, list(verdict.reasons)
    result.promoted = verdict.promote
    if verdict.promote:
        result.new_version = _promote(cfg, candidate, current_name, number)
        state["current"] = result.new_version
        if cfg.server:
            result.server = switch_server(cfg.server, result.new_version, cfg.api_key)
    state["since"] = until.isoformat()
    result.minutes = (time.monotonic() - start) / 60
    state["rounds"].append(
        {
            "round": number,
            "promoted": result.promoted,
            "version": result.new_version,
            "method": method,
            "at": result.started,
        }
    )
    from genloop.feedback.report import write_report

    write_report(result, round_dir)
    atomic_write_text(round_dir / "round.json", json.dumps(asdict(result), indent=2))
    atomic_write_text(folder / "state.json", json.dumps(state, indent=2))
    return result
