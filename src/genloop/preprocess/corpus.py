"""Reading a text corpus from files and folders as a stream, with byte counts for progress and rates.

Shared by tokenizer training now and by the data pipeline later: one reader, one idea of which files
are text and how a binary file is skipped.
"""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich import progress as rp
from rich.console import Console

from genloop.errors import UserError

MB = 1_000_000
TEXT_SUFFIXES = frozenset({
    ".txt", ".text", ".md", ".markdown", ".rst", ".tex", ".html", ".htm", ".xml", ".csv", ".tsv",
    ".py", ".pyi", ".c", ".h", ".cc", ".cpp", ".hpp", ".rs", ".go", ".java", ".js", ".ts", ".sh",
    ".toml", ".yaml", ".yml", ".ini", ".cfg", ".json", ".jsonl",
})  # fmt: skip
"""Suffixes picked up when walking a folder; a file named directly is read whatever its suffix."""
_CHUNK = 1 << 20


@dataclass
class TrainStats:
    """What a training run read, and how fast: the number to watch when a corpus grows."""

    bytes_read: int = 0
    seconds: float = 0.0
    files_read: int = 0
    skipped: list[str] = field(default_factory=list)

    @property
    def mb_per_s(self) -> float:
        return self.bytes_read / MB / self.seconds if self.seconds > 0 else 0.0


def collect_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files named directly, plus text files found under folders (hidden folders skipped)."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            for found in sorted(path.rglob("*")):
                rel = found.relative_to(path).parts
                if (
                    found.suffix.lower() in TEXT_SUFFIXES
                    and found.is_file()
                    and not any(p.startswith(".") or p == "__pycache__" for p in rel)
                ):
                    files.append(found)
        else:
            raise UserError(f"input not found: {path} (check the path)")
    return files


class CorpusReader:
    """Streams text out of files a chunk at a time, counting bytes for the progress bar and stats.

    Undecodable or binary files are skipped (and listed), not fatal: one stray image in a folder of
    notes should not stop a training run.
    """

    def __init__(self, files: Sequence[Path], max_bytes: int | None, text_field: str = "text") -> None:
        self.files, self.max_bytes, self.text_field = files, max_bytes, text_field
        self.stats = TrainStats()
        self.chars = 0
        self.on_bytes: Callable[[int], None] = lambda n: None

    def _budget(self, size: int) -> int:
        if self.max_bytes is None:
            return size
        return max(0, min(size, self.max_bytes - self.stats.bytes_read))

    def _count(self, n: int) -> None:
        self.stats.bytes_read += n
        self.on_bytes(n)

    def __iter__(self) -> Iterator[str]:
        for path in self.files:
            if self.max_bytes is not None and self.stats.bytes_read >= self.max_bytes:
                return
            try:
                reader = self._jsonl if path.suffix.lower() == ".jsonl" else self._text
                for text in reader(path):
                    self.chars += len(text)
                    yield text
                self.stats.files_read += 1
            except (UnicodeDecodeError, OSError):
                self.stats.skipped.append(str(path))

    def _text(self, path: Path) -> Iterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8-sig")()
        carry = ""
        with path.open("rb") as fh:
            first = True
            while data := fh.read(self._budget(_CHUNK)):
                if first and b"\0" in data[:8192]:
                    raise UnicodeDecodeError("utf-8", data[:1], 0, 1, "binary file")
                first = False
                text = carry + decoder.decode(data)
                self._count(len(data))
                cut = text.rfind("\n") + 1
                if cut == 0 and len(text) < 4 * _CHUNK:
                    carry = text  # no line break yet: do not split a word between two chunks
                    continue
                cut = cut or len(text)
                carry = text[cut:]
                yield text[:cut]
            if self.max_bytes is None or self.stats.bytes_read < self.max_bytes:
                carry += decoder.decode(b"", final=True)  # a truncated last character is an error
        if carry:
            yield carry

    def _jsonl(self, path: Path) -> Iterator[str]:
        with path.open("rb") as fh:
            for line in fh:
                if self._budget(len(line)) < len(line):
                    return
                self._count(len(line))
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a broken line in a large dump is skipped, like a binary file
                text = record.get(self.text_field) if isinstance(record, dict) else None
                if isinstance(text, str) and text:
                    yield text


def progress_bar(enabled: bool) -> rp.Progress:
    """Bytes read, rate (MB/s) and time left, on stderr so stdout stays clean for results."""
    columns = (rp.BarColumn(), rp.DownloadColumn(), rp.TransferSpeedColumn(), rp.TimeRemainingColumn())
    return rp.Progress(
        rp.TextColumn("{task.description}"), *columns, console=Console(stderr=True), disable=not enabled
    )
