"""The YAML a data build reads (`genloop data build CONFIG.yaml`), and its checks.

Everything a build could trip on later (a missing path, an unknown recipe, filter or normalization
step, a tokenizer that cannot be found, an output folder that cannot be written) is checked here,
before any file is written, so bad input costs one line and leaves nothing behind.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from genloop.config import Section, TokenizerConfig, load_config
from genloop.errors import UserError
from genloop.home import data_dir, models_dir


class SourceSpec(Section):
    """One input: a local file or folder (`path`) or a built-in recipe (`recipe`), not both."""

    name: str | None = Field(
        None, description="how the report names it; defaults to the recipe or folder name"
    )
    path: str | None = Field(None, description="file or folder, relative to the config file")
    recipe: str | None = Field(None, description="built-in recipe (`genloop data recipes` lists them)")
    options: dict[str, Any] = Field(default_factory=dict, description="the recipe's options")
    extensions: list[str] | None = Field(None, description="suffixes to read from a folder (default: text)")
    text_field: str = Field("text", description="the field holding the text in .jsonl files")
    max_file_mb: float = Field(16.0, gt=0, description="larger files are skipped and counted")
    licence: str | None = Field(None, description="recorded in the manifest for a local source")
    filters: dict[str, Any] = Field(
        default_factory=dict, description="per-source filter overrides; `name: false` turns one off"
    )

    @model_validator(mode="after")
    def _one_kind(self) -> SourceSpec:
        if (self.path is None) == (self.recipe is None):
            raise ValueError(
                "give exactly one of `path:` (a file or folder) or `recipe:` (a built-in recipe)"
            )
        return self

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        return self.recipe or Path(self.path or "source").name or "source"


class DedupSpec(Section):
    exact: bool = Field(True, description="drop copies equal up to case and whitespace")
    near: bool = Field(True, description="drop near copies (MinHash LSH)")
    threshold: float = Field(0.8, gt=0, le=1, description="Jaccard similarity of word n-grams")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations")
    ngram: int = Field(5, ge=1, le=20, description="words per shingle")


class TokenizerSpec(Section):
    """Use a model's tokenizer (`model:` name or path), or train one on the curated text (`train:`)."""

    model: str | None = Field(None, description="model name under GENLOOP_HOME/models, or a folder")
    train: TokenizerConfig | None = Field(None, description="train a byte-level BPE on the result")
    max_train_mb: float = Field(200.0, gt=0, description="text read to train the tokenizer")

    @model_validator(mode="after")
    def _one_kind(self) -> TokenizerSpec:
        if (self.model is None) == (self.train is None):
            raise ValueError("tokenizer: give exactly one of `model:` or `train:`")
        return self


class BuildConfig(Section):
    """A data build: sources in, curated and tokenized shards out."""

    output: str | None = Field(None, description="output folder (default GENLOOP_HOME/data/<config name>)")
    sources: list[SourceSpec] = Field(min_length=1)
    normalize: list[str] = Field(default_factory=lambda: ["fix_mojibake", "nfkc", "clean_whitespace"])
    filters: dict[str, Any] | None = Field(None, description="quality filters (default: Gopher-like set)")
    pii: list[str] | bool = Field(True, description="PII kinds to replace; true = all, false = none")
    dedup: DedupSpec = Field(default_factory=DedupSpec)
    validation: float = Field(0.01, ge=0, lt=1, description="fraction of documents held out")
    seed: int = Field(0, description="salt of the train/validation hash")
    tokenizer: TokenizerSpec = Field(
        default_factory=lambda: TokenizerSpec(train=TokenizerConfig(vocab_size=8192))
    )
    tokens_per_shard: int = Field(25_000_000, gt=0)

    @model_validator(mode="after")
    def _unique_names(self) -> BuildConfig:
        labels = [s.label for s in self.sources]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ValueError(f"two sources are named {dupes[0]!r}: give each a distinct `name:`")
        return self


def load_build_config(path: str | os.PathLike[str], overrides: list[str] | None = None) -> BuildConfig:
    return load_config(BuildConfig, path, overrides or [])


def resolve_paths(config: BuildConfig, base: Path, stem: str) -> tuple[Path, dict[str, Path]]:
    """The output folder and each local source's path, relative to the config file's folder."""
    output = Path(config.output).expanduser() if config.output else data_dir() / stem
    if config.output and not output.is_absolute():
        output = (base / output).resolve()
    paths = {}
    for source in config.sources:
        if source.path is not None:
            p = Path(source.path).expanduser()
            paths[source.label] = p if p.is_absolute() else Path(os.path.normpath(base / p))
    return output, paths


def check_writable(output: Path) -> None:
    """Create the output folder and prove a file can be written there, or fail in one line."""
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / f".probe-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(
            f"output directory {output} is not writable ({reason}): set `output:` to a folder you can write"
        ) from None


def find_tokenizer_dir(name: str, base: Path) -> Path:
    """A folder holding tokenizer.json: a path (relative to the config) or a model in GENLOOP_HOME."""
    for candidate in (Path(name).expanduser(), base / name, models_dir() / name):
        if (candidate / "tokenizer.json").is_file() or (candidate.is_file() and candidate.suffix == ".json"):
            return candidate
    raise UserError(
        f"tokenizer model '{name}' not found (no tokenizer.json there or under {models_dir()}): "
        f"run `genloop pull {name}`, or give a folder with tokenizer.json, or use `tokenizer: {{train: ...}}`"
    )
