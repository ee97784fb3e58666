"""Tiny shard folders and run configs for trainer tests, built with the real data pipeline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from genloop.data.build import build
from tests.data.corpuskit import Prose

RUN = """
preset: tiny
model: {{n_layers: 2, d_model: 64, n_heads: 4, d_ff: 128, max_seq_len: 128}}
data: {{shards: {shards}, seq_len: 64}}
train:
  objective: causal_lm
  max_steps: {steps}
  batch_size: 8
  learning_rate: 3.0e-3
  warmup_steps: 5
  eval_every: 1000
  eval_batches: 4
  save_every: 10
  log_every: 1
  dtype: float32
  seed: 0
"""


def prose_shards(
    root: Path, start: int = 0, words: int = 200, docs: int = 30, tokenizer: str | None = None
) -> Path:
    corpus = root / "corpus"
    corpus.mkdir(parents=True)
    prose = Prose(start=start)
    for i in range(docs):
        (corpus / f"d{i}.txt").write_text(prose.take(words))
    tok = f"{{model: {tokenizer}}}" if tokenizer else "{train: {vocab_size: 512}}"
    config = root / "build.yaml"
    config.write_text(
        "sources:\n  - {path: corpus, filters: {ngram_repetition: false, line_repetition: false}}\n"
        f"validation: 0.15\ntokenizer: {tok}\noutput: shards\n"
    )
    return build(config, workers=1, progress=False).output


def code_shards(root: Path, tokenizer: str) -> Path:
    """Python source (a different domain from the prose) tokenized with the prose shards' tokenizer."""
    corpus = root / "code"
    corpus.mkdir(parents=True)
    src = Path(__file__).resolve().parents[2] / "src" / "genloop"
    for i, path in enumerate(sorted(src.rglob("*.py"))[:40]):
        (corpus / f"m{i}.py").write_text(path.read_text())
    config = root / "code.yaml"
    off = "{language: false, stop_words: false, symbol_ratio: false, mean_word_length: false, alpha_words: false, line_repetition: false, ngram_repetition: false, length: {min_words: 5}}"  # noqa: E501
    config.write_text(
        f"sources:\n  - {{path: code, filters: {off}}}\nvalidation: 0.15\n"
        f"tokenizer: {{model: {tokenizer}}}\noutput: code_shards\n"
    )
    return build(config, workers=1, progress=False).output


def run_config(path: Path, shards: Path, steps: int, **extra: str) -> Path:
    text = RUN.format(shards=shards, steps=steps)
    path.write_text(text)
    return path


def genloop(*args: str | Path, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "genloop", *map(str, args)], capture_output=True, text=True,
        env={**os.environ, **(env or {})}, **kw,
    )  # fmt: skip
