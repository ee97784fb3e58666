"""`genloop data build`: sources -> curated documents -> tokenizer -> tokenized shards + report.

Three stages, each resumable. Curation writes committed *parts* (JSONL of kept documents plus their
dedup keys and signatures) under `<output>/.work/` and records in `state.json` how many input
documents each source has consumed; an interrupted build skips that many and rebuilds its dedup
index from the parts. The tokenizer and the shards are derived from the parts, and the manifest,
written last, is what marks a build complete: a second run with the same config and inputs only
checks and says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genloop.atomic import atomic_write_text
from genloop.data.build_config import (
    BuildConfig,
    check_writable,
    find_tokenizer_dir,
    load_build_config,
    resolve_paths,
)
from genloop.data.curate import CurateSettings, CurateWorkers
from genloop.data.dedup import Deduplicator
from genloop.data.filters import DEFAULT_FILTERS, build_filters
from genloop.data.parts import PartReader, PartWriter, split_of
from genloop.data.pii import PII_KINDS
from genloop.data.progress import stage_progress
from genloop.data.recipes import get_recipe
from genloop.data.report import write_report
from genloop.data.shard_stage import write_shards
from genloop.data.sources import LocalFiles
from genloop.errors import UserError
from genloop.preprocess.normalize import Pipeline
from genloop.preprocess.tokenizer import Tokenizer

WORK = ".work"
STATE = "state.json"
PART_DOCS = 5000
PART_BYTES = 32_000_000
BATCH_DOCS = 64
BATCH_BYTES = 1_000_000


@dataclass
class Source:
    """A config source made concrete: how to open a fresh reader, and what identifies its data."""

    label: str
    kind: str  # "path" or "recipe"
    where: str
    licence: str | None
    fingerprint: str
    path: Path | None = None
    extensions: list[str] | None = None
    text_field: str = "text"
    max_file_mb: float = 16.0
    options: dict[str, Any] | None = None

    def reader(self) -> tuple[Iterator[Any], Counter[str]]:
        """A fresh stream of documents and the counter of files it skipped (and why)."""
        if self.kind == "path":
            assert self.path is not None
            files = LocalFiles(
                self.path, self.label, self.extensions, self.text_field, self.max_file_mb, self.licence
            )
            return iter(files), files.skipped
        return get_recipe(self.where).documents(**(self.options or {})), Counter()


@dataclass
class BuildResult:
    output: Path
    manifest: dict[str, Any]
    seconds: float
    up_to_date: bool


def prepare(
    config: BuildConfig, base: Path, stem: str
) -> tuple[Path, list[Source], dict[str, dict[str, Any]]]:
    """Every check that can fail on bad input, before anything is written."""
    Pipeline.from_names(config.normalize)
    output, paths = resolve_paths(config, base, stem)
    filters: dict[str, dict[str, Any]] = {}
    base_filters = DEFAULT_FILTERS if config.filters is None else config.filters
    for spec in config.sources:
        merged = {**base_filters, **spec.filters}
        build_filters(merged)  # unknown filter or bad option: fail now, naming it
        filters[spec.label] = merged
        if spec.recipe is not None:
            recipe = get_recipe(spec.recipe)
            if not recipe.has_text:
                raise UserError(
                    f"recipe '{spec.recipe}' gives training examples, not text: use it with "
                    "`genloop data sft`, or pick a text recipe (`genloop data recipes`)"
                )
        elif not paths[spec.label].exists():
            raise UserError(
                f"source '{spec.label}': path not found: {paths[spec.label]} "
                "(paths are relative to the config file)"
            )
    if isinstance(config.pii, list):
        unknown = sorted(set(config.pii) - set(PII_KINDS))
        if unknown:
            raise UserError(f"unknown PII kind '{unknown[0]}' (known: {', '.join(PII_KINDS)})")
    if config.tokenizer.model is not None:
        find_tokenizer_dir(config.tokenizer.model, base)
    check_writable(output)
    sources = []
    for spec in config.sources:
        if spec.recipe is not None:
            recipe = get_recipe(spec.recipe)
            fingerprint = recipe.fingerprint(**spec.options)
            sources.append(
                Source(spec.label, "recipe", spec.recipe, recipe.licence, fingerprint, options=spec.options)
            )
        else:
            files = LocalFiles(
                paths[spec.label], spec.label, spec.extensions, spec.text_field, spec.max_file_mb
            )
            where = paths[spec.label]
            sources.append(
                Source(
                    spec.label,
                    "path",
                    str(where),
                    spec.licence,
                    files.fingerprint(),
                    where,
                    spec.extensions,
                    spec.text_field,
                    spec.max_file_mb,
                )
            )
    return output, sources, filters


def build(
    config_path: str | os.PathLike[str],
    overrides: list[str] | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> BuildResult:
    """Run (or resume, or confirm) the build a YAML config describes."""
    started = time.perf_counter()
    path = Path(config_path)
    config = load_build_config(path, overrides)
    output, sources, filters = prepare(config, path.parent.resolve(), path.stem)
    key = _build_key(config, sources)
    work = output / WORK
    state = _load_state(work)
    if state.get("key") != key:
        shutil.rmtree(work, ignore_errors=True)
        (output / "manifest.json").unlink(missing_ok=True)
        state = {"key": key, "sources": {}, "tokenizer": False, "complete": False}
    elif state.get("complete") and (output / "manifest.json").is_file():
        manifest = json.loads((output / "manifest.json").read_text(encoding="utf-8"))
        return BuildResult(output, manifest, time.perf_counter() - started, up_to_date=True)
    work.mkdir(parents=True, exist_ok=True)
    (output / "manifest.json").unlink(missing_ok=True)

    kinds = tuple(PII_KINDS) if config.pii is True else tuple(config.pii or ())
    settings = CurateSettings(
        tuple(config.normalize), filters, kinds, config.dedup.near, config.dedup.num_perm, config.dedup.ngram
    )
    deduper = Deduplicator(
        config.dedup.exact, config.dedup.near, config.dedup.threshold, config.dedup.num_perm
    )
    timings = state.setdefault("seconds", {})
    tick = time.perf_counter()
    with CurateWorkers(settings, workers or os.cpu_count() or 1) as pool, stage_progress(progress) as bar:
        for index, source in enumerate(sources):
            _curate_source(index, source, config, state, work, deduper, pool, bar)
    timings["curate"] = timings.get("curate", 0.0) + time.perf_counter() - tick
    tick = time.perf_counter()
    tokenizer = _tokenizer(config, path.parent.resolve(), output, work, state, sources, progress)
    timings["tokenizer"] = time.perf_counter() - tick
    manifest = write_shards(output, work, sources, state, tokenizer, config, progress)
    write_report(output, manifest)
    state["complete"] = True
    _save_state(work, state)
    return BuildResult(output, manifest, time.perf_counter() - started, up_to_date=False)


def _curate_source(
    index: int,
    source: Source,
    config: BuildConfig,
    state: dict[str, Any],
    work: Path,
    deduper: Deduplicator,
    pool: CurateWorkers,
    bar: Any,
) -> None:
    entry = state["sources"].setdefault(source.label, {"consumed": 0, "parts": 0, "done": False, "stats": {}})
    folder = work / f"{index:03d}"
    for part in PartReader(folder, entry["parts"]).signatures():
        for k, sig in part:
            deduper.remember(k, sig)  # a resumed build knows every document kept before
    if entry["done"]:
        return
    stats: Counter[str] = Counter(entry["stats"])
    task = bar.add_task(f"curate {source.label}", total=None)
    docs, skipped = source.reader()
    for _ in range(entry["consumed"]):  # resume: these were decided and committed before
        if next(docs, None) is None:
            break
        bar.advance(task)
    writer = PartWriter(folder, entry["parts"])

    def batches() -> Iterator[tuple[list[Any], list[tuple[str, str, str | None]]]]:
        batch: list[Any] = []
        size = 0
        for doc in docs:
            batch.append(doc)
            size += len(doc.text)
            if len(batch) >= BATCH_DOCS or size >= BATCH_BYTES:
                yield batch, [(source.label, d.text, d.meta.get("format")) for d in batch]
                batch, size = [], 0
        if batch:
            yield batch, [(source.label, d.text, d.meta.get("format")) for d in batch]

    def commit() -> None:
        writer.commit()
        stats.update({k: 0 for k in list(stats) if k.startswith("read:")})
        for reason, n in skipped.items():
            stats[f"read:{reason}"] = n
        entry.update(parts=writer.index, stats=dict(stats))
        _save_state(work, state)

    try:
        _decide(pool.map(batches()), source, config, stats, entry, deduper, writer, bar, task, commit)
        commit()
    finally:
        writer.close()
    entry["done"] = True
    _save_state(work, state)
    bar.update(task, description=f"curated {source.label}")


def _decide(
    results: Iterator[tuple[list[Any], list[Any]]],
    source: Source,
    config: BuildConfig,
    stats: Counter[str],
    entry: dict[str, Any],
    deduper: Deduplicator,
    writer: PartWriter,
    bar: Any,
    task: Any,
    commit: Any,
) -> None:
    """The main process's share of curation, in corpus order: duplicates, split, counts, commits."""
    for batch, outcomes in results:
        for doc, out in zip(batch, outcomes, strict=True):
            stats["documents"] += 1
            stats["chars_in"] += len(doc.text)
            reason = out.reason or deduper.check(out.key, out.sig)
            if reason is not None:
                stats[reason] += 1
                continue
            split = split_of(out.key, config.validation, config.seed)
            writer.add({"text": out.text, "origin": doc.origin, "split": split}, out.key, out.sig)
            stats["kept"] += 1
            stats["chars_kept"] += len(out.text)
            for kind, n in (out.pii or {}).items():
                stats[f"pii:{kind}"] += n
        entry["consumed"] += len(batch)
        bar.advance(task, len(batch))
        if writer.docs >= PART_DOCS or writer.bytes >= PART_BYTES:
            commit()


def _tokenizer(
    config: BuildConfig,
    base: Path,
    output: Path,
    work: Path,
    state: dict[str, Any],
    sources: list[Source],
    progress: bool,
) -> Tokenizer:
    target = output / "tokenizer"
    if state.get("tokenizer") and (target / "tokenizer.json").is_file():
        tokenizer = Tokenizer.load(target)
    elif config.tokenizer.model is not None:
        tokenizer = Tokenizer.load(find_tokenizer_dir(config.tokenizer.model, base))
        tokenizer.save(target)
    else:
        assert config.tokenizer.train is not None
        budget = int(config.tokenizer.max_train_mb * 1_000_000)

        def texts() -> Iterator[str]:
            used = 0
            for index, source in enumerate(sources):
                folder = work / f"{index:03d}"
                for record in PartReader(folder, state["sources"][source.label]["parts"]).records():
                    if record["split"] != "train":
                        continue
                    yield record["text"]
                    used += len(record["text"])
                    if used >= budget:
                        return

        tokenizer = Tokenizer.train(texts(), config.tokenizer.train, progress=progress)
        tokenizer.save(target)
    if tokenizer.eos_token_id is None:
        raise UserError(
            "the tokenizer has no end-of-text token to separate documents: set `tokenizer.train.eos_token` "
            "or use a model whose tokenizer has one"
        )
    state["tokenizer"] = True
    _save_state(work, state)
    return tokenizer


def _build_key(config: BuildConfig, sources: list[Source]) -> str:
    """Identity of what a build would produce: the config (less `output`) and each source's data."""
    body = config.model_dump(mode="json", exclude={"output"})
    body["_sources"] = [(s.label, s.fingerprint) for s in sources]
    body["_format"] = 1
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _load_state(work: Path) -> dict[str, Any]:
    try:
        return json.loads((work / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _save_state(work: Path, state: dict[str, Any]) -> None:
    atomic_write_text(work / STATE, json.dumps(state))
