"""Byte-level BPE tokenizer: trained, saved and loaded through Hugging Face `tokenizers`.

Byte-level BPE never meets an unknown character (every string is bytes), so decode(encode(s)) == s
for any text. Files are written in Hugging Face's layout so the tokenizer a genloop model is trained
with loads unchanged in transformers, vLLM or llama.cpp converters, and standard HF tokenizer
directories load here.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from genloop.atomic import atomic_write_text
from genloop.config import TokenizerConfig
from genloop.errors import TokenizerError, UserError
from genloop.preprocess.chat_template import DEFAULT_CHAT_TEMPLATE, render_chat_template
from genloop.preprocess.corpus import CorpusReader, TrainStats, collect_files, progress_bar
from genloop.preprocess.normalize import Pipeline

_TRAIN_HINT = "train one with `genloop tokenizer train` or copy it from the model it belongs to"
_SPECIAL_NAMES = ("bos_token", "eos_token", "pad_token", "unk_token")
_KEPT_SETTINGS = ("chat_template", "add_bos_token", "model_max_length")
_ADDED_TOKEN_FIELDS = ("content", "lstrip", "normalized", "rstrip", "single_word", "special")


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def special_tokens(config: TokenizerConfig) -> list[str]:
    """The tokens that are never split: named ones first (so ids 0.. are stable), no duplicates."""
    names = [getattr(config, name) for name in _SPECIAL_NAMES]
    return list(dict.fromkeys(t for t in [*names, *config.chat_tokens, *config.extra_special_tokens] if t))


class Tokenizer:
    """A trained tokenizer plus the settings transformers keeps beside it (special tokens, chat
    template, add_bos_token), so encoding and chat formatting match wherever the model goes."""

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        unk_token: str | None = None,
        chat_template: str | None = None,
        add_bos_token: bool = False,
        model_max_length: int = 2048,
    ) -> None:
        self.backend = backend
        self.bos_token, self.eos_token = bos_token, eos_token
        self.pad_token, self.unk_token = pad_token, unk_token
        self._chat_template = chat_template
        self.add_bos_token = add_bos_token
        self.model_max_length = model_max_length

    # ---- training -------------------------------------------------------------------------------

    @classmethod
    def _train_on(cls, texts: Iterable[str], config: TokenizerConfig, length: int | None = None) -> Tokenizer:
        specials = special_tokens(config)
        if config.vocab_size <= 256 + len(specials):
            raise TokenizerError(
                f"vocab_size {config.vocab_size} leaves no room for merges: it must exceed "
                f"256 byte symbols + {len(specials)} special tokens"
            )
        backend = tokenizers.Tokenizer(models.BPE(unk_token=config.unk_token))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=config.vocab_size,
            min_frequency=config.min_frequency,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        pipeline = Pipeline.from_names(config.normalize)
        backend.train_from_iterator(pipeline.map(texts) if pipeline else texts, trainer, length=length)
        bos = config.bos_token
        if config.add_bos_token and bos:
            backend.post_processor = processors.TemplateProcessing(
                single=f"{bos}:0 $A:0",
                pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                special_tokens=[(bos, backend.token_to_id(bos))],
            )
        return cls(backend, **config.model_dump(include={*_SPECIAL_NAMES, *_KEPT_SETTINGS}))

    @classmethod
    def train(
        cls,
        texts: Iterable[str] | Iterable[os.PathLike[str]] | os.PathLike[str],
        config: TokenizerConfig | None = None,
        progress: bool = True,
    ) -> Tokenizer:
        """Train byte-level BPE on strings (each one a document); `Path`s are read as files/folders.

        The iterable is consumed once and streamed, so a generator over a large corpus is fine.
        """
        config = config or TokenizerConfig()
        if isinstance(texts, str | bytes):
            raise TypeError("train() takes an iterable of texts; wrap a single text in a list")
        if isinstance(texts, os.PathLike) or (
            isinstance(texts, Sequence) and texts and all(isinstance(t, os.PathLike) for t in texts)
        ):
            paths = [texts] if isinstance(texts, os.PathLike) else texts
            return cls.train_files(paths, config, progress=progress)[0]  # type: ignore[arg-type]
        with progress_bar(progress) as bar:
            task = bar.add_task("reading", total=None)

            def counted() -> Iterator[str]:
                for text in texts:  # type: ignore[union-attr]
                    if not isinstance(text, str):
                        raise TypeError(f"training texts must be str, got {type(text).__name__}")
                    bar.advance(task, len(text.encode("utf-8", "surrogatepass")))
                    yield text

            return cls._train_on(counted(), config)

    @classmethod
    def train_files(
        cls,
        paths: Iterable[str | os.PathLike[str]],
        config: TokenizerConfig | None = None,
        max_bytes: int | None = None,
        progress: bool = True,
        text_field: str = "text",
    ) -> tuple[Tokenizer, TrainStats]:
        """Train on files and folders (recursively; `.jsonl` lines give their `text_field`).

        Reads at most `max_bytes` and streams: memory stays at what `tokenizers` needs for its word
        counts, however large the corpus. A missing path or no readable text is a UserError.
        """
        config = config or TokenizerConfig()
        Pipeline.from_names(config.normalize)  # fail on a typo before reading gigabytes
        paths = list(paths)
        files = collect_files(paths)
        reader = CorpusReader(files, max_bytes, text_field)
        total = sum(f.stat().st_size for f in files)
        shown = ", ".join(str(p) for p in paths[:3]) + (", ..." if len(paths) > 3 else "")
        if total == 0:
            raise UserError(f"no readable text found in {shown}: the files are empty or have no text suffix")
        start = time.perf_counter()
        with progress_bar(progress) as bar:
            task = bar.add_task("reading", total=min(total, max_bytes) if max_bytes else total)
            reader.on_bytes = lambda n: bar.advance(task, n)
            tokenizer = cls._train_on(reader, config)
            bar.update(task, description="done")
        reader.stats.seconds = time.perf_counter() - start
        if reader.chars == 0:
            raise UserError(
                f"no readable text found in {shown} ({len(files)} files, "
                f"{len(reader.stats.skipped)} binary or not UTF-8): "
                "give text, code or .jsonl files"
            )
        return tokenizer, reader.stats

    # ---- encoding -------------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids; `add_special_tokens` adds BOS when the tokenizer was configured to."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__}")
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
        """Encode many texts in parallel (the Rust side uses every core)."""
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text for ids; an id outside the vocabulary is a TokenizerError, not a silent gap."""
        ids = list(ids)
        size = self.vocab_size
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < size:
                raise TokenizerError(f"token id {i!r} is out of range: ids run from 0 to {size - 1}")
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    # ---- vocabulary -----------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    @property
    def bos_token_id(self) -> int | None:
        return self._id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return self._id(self.eos_token)

    @property
    def pad_token_id(self) -> int | None:
        return self._id(self.pad_token)

    @property
    def unk_token_id(self) -> int | None:
        return self._id(self.unk_token)

    # ---- chat -----------------------------------------------------------------------------------

    @property
    def chat_template(self) -> str:
        """The configured template, else genloop's ChatML default."""
        return self._chat_template or DEFAULT_CHAT_TEMPLATE

    def apply_chat_template(
        self,
        messages: Sequence[dict[str, Any]],
        add_generation_prompt: bool = False,
        tokenize: bool = False,
        **kwargs: Any,
    ) -> str | list[int]:
        """Render a conversation like transformers' method of the same name; `tokenize=True` encodes
        it without adding BOS (the template writes any special tokens it wants)."""
        specials = {name: getattr(self, name) for name in _SPECIAL_NAMES}
        text = render_chat_template(self.chat_template, messages, add_generation_prompt, specials, **kwargs)
        return self.encode(text, add_special_tokens=False) if tokenize else text

    # ---- files ----------------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json, each atomically
        (a crash mid-save leaves the old file, never half a file)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        added = self.backend.get_added_tokens_decoder()
        named = {name: getattr(self, name) for name in _SPECIAL_NAMES}
        extra = [t.content for _, t in sorted(added.items()) if t.special and t.content not in named.values()]
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **named,
            "additional_special_tokens": extra,
            "add_bos_token": self.add_bos_token,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": self.model_max_length,
            "chat_template": self.chat_template,
            "added_tokens_decoder": {
                str(i): {key: getattr(t, key) for key in _ADDED_TOKEN_FIELDS}
                for i, t in sorted(added.items())
            },
        }
        special_map = {k: v for k, v in named.items() if v is not None} | {"additional_special_tokens": extra}
        atomic_write_text(out / "tokenizer.json", self.backend.to_str(pretty=True))
        atomic_write_text(out / "tokenizer_config.json", json.dumps(config, indent=2, ensure_ascii=False))
        atomic_write_text(
            out / "special_tokens_map.json", json.dumps(special_map, indent=2, ensure_ascii=False)
        )
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Read a directory (ours or one written by transformers) or a tokenizer.json file."""
        path = Path(path)
        if not path.exists():
            raise TokenizerError(f"tokenizer not found: {path}: {_TRAIN_HINT}")
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise TokenizerError(f"{file} is missing: {_TRAIN_HINT}")
        try:
            backend = tokenizers.Tokenizer.from_file(str(file))
        except Exception as exc:  # tokenizers raises a bare Exception for every parse problem
            raise TokenizerError(
                f"{file} is not a valid tokenizer file ({_one_line(exc)[:200]}): {_TRAIN_HINT}"
            ) from None
        folder = file.parent
        settings = _read_json(folder / "special_tokens_map.json")
        settings.update(_read_json(folder / "tokenizer_config.json"))
        template = settings.get("chat_template")
        if (folder / "chat_template.jinja").is_file():  # newer transformers keep the template apart
            template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
        elif isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
            by_name = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = by_name.get("default") or next(iter(by_name.values()), None)
        max_len = settings.get("model_max_length")
        return cls(
            backend,
            **{name: _token_text(settings.get(name)) for name in _SPECIAL_NAMES},
            chat_template=template if isinstance(template, str) else None,
            add_bos_token=bool(settings.get("add_bos_token", _adds_bos(backend, settings))),
            model_max_length=int(max_len) if isinstance(max_len, int | float) and max_len > 0 else 2048,
        )

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, bos={self.bos_token!r}, eos={self.eos_token!r})"


def _adds_bos(backend: tokenizers.Tokenizer, settings: dict[str, Any]) -> bool:
    """Without an explicit add_bos_token, ask the post-processor (Llama-style files carry it there)."""
    bos = _token_text(settings.get("bos_token"))
    bos_id = None if bos is None else backend.token_to_id(bos)
    return bos_id is not None and bos_id in backend.encode("", add_special_tokens=True).ids


def _token_text(value: object) -> str | None:
    """Special tokens are stored as a string or as an AddedToken dict {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from an optional settings file; present but unreadable is a TokenizerError."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TokenizerError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}): "
            "fix or delete it, or save the tokenizer again"
        ) from None
    except (UnicodeDecodeError, OSError) as exc:
        raise TokenizerError(f"{path} cannot be read ({_one_line(exc)}): fix or delete it") from None
    if not isinstance(data, dict):
        raise TokenizerError(f"{path} must hold a JSON object, got {type(data).__name__}: fix or delete it")
    return data
