"""Local sources: the user's own files and folders, read as a stream of documents.

A folder of real notes holds junk: binaries, files in other encodings, empty files, a log that is one
50 MB line, symlinks that point at themselves. None of it may stop a build; each is skipped and
counted under a reason the report shows, so the user can see what was left out and why.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from genloop.data.document import Document
from genloop.errors import UserError
from genloop.preprocess.corpus import TEXT_SUFFIXES

HTML_SUFFIXES = frozenset({".html", ".htm", ".xhtml"})
CODE_LANGUAGES = {
    ".py": "python", ".pyi": "python", ".c": "c", ".h": "c", ".cc": "cpp", ".cpp": "cpp", ".hpp": "cpp",
    ".rs": "rust", ".go": "go", ".java": "java", ".js": "javascript", ".ts": "typescript", ".sh": "shell",
}  # fmt: skip
"""Extensions read as source code: the document records its language, and the text is kept verbatim."""
SKIP_REASONS = ("binary", "invalid_utf8", "empty", "too_large", "unreadable", "bad_json", "no_text")


def walk_files(root: Path, extensions: frozenset[str]) -> Iterator[Path]:
    """Files under `root` in a stable order. Symlinked folders are not followed (no loops); hidden
    folders and `__pycache__` are skipped; a file named directly is taken whatever its suffix."""
    if root.is_file() or (root.is_symlink() and not root.is_dir()):
        yield root
        return
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in extensions:
                yield Path(folder) / name


def fingerprint_files(root: Path, extensions: frozenset[str]) -> str:
    """A cheap identity of a folder's contents (names, sizes, modification times): a resumed build
    over changed files starts over instead of mixing old and new."""
    digest = hashlib.blake2b(digest_size=16)
    for path in walk_files(root, extensions):
        try:
            st = path.stat()
            digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        except OSError:
            digest.update(f"{path}\0unreadable\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


class LocalFiles:
    """Documents from a file or folder: one per text file, one per `.jsonl` line (its `text_field`),
    HTML marked for boilerplate removal in the workers, code kept verbatim with its language."""

    def __init__(
        self,
        path: Path,
        name: str,
        extensions: list[str] | None = None,
        text_field: str = "text",
        max_file_mb: float = 16.0,
        licence: str | None = None,
    ) -> None:
        if not path.exists() and not path.is_symlink():
            raise UserError(f"source '{name}': path not found: {path} (check `path:` in the config)")
        self.path, self.name, self.text_field, self.licence = path, name, text_field, licence
        chosen = extensions or sorted(TEXT_SUFFIXES | HTML_SUFFIXES | set(CODE_LANGUAGES))
        self.extensions = frozenset(e.lower() if e.startswith(".") else f".{e.lower()}" for e in chosen)
        self.max_bytes = int(max_file_mb * 1_000_000)
        self.skipped: Counter[str] = Counter()

    def fingerprint(self) -> str:
        return fingerprint_files(self.path, self.extensions)

    def __iter__(self) -> Iterator[Document]:
        for path in walk_files(self.path, self.extensions):
            yield from self._read(path)

    def _read(self, path: Path) -> Iterator[Document]:
        try:
            size = path.stat().st_size
            if size > self.max_bytes and path.suffix.lower() != ".jsonl":
                self.skipped["too_large"] += 1  # never read a huge blob into memory just to drop it
                return
            if path.suffix.lower() == ".jsonl":
                yield from self._jsonl(path)
                return
            data = path.read_bytes()
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.EACCES, errno.ENOENT, errno.EISDIR, errno.EPERM):
                raise
            self.skipped["unreadable"] += 1
            return
        text = self._decode(data)
        if text is None:
            return
        suffix = path.suffix.lower()
        meta: dict[str, str] = {}
        if suffix in HTML_SUFFIXES:
            meta["format"] = "html"
        elif suffix in CODE_LANGUAGES:
            meta["language"] = CODE_LANGUAGES[suffix]
        yield Document(text, self.name, str(path), self.licence, meta)

    def _decode(self, data: bytes) -> str | None:
        if not data.strip():
            self.skipped["empty"] += 1
            return None
        if b"\0" in data[:8192]:
            self.skipped["binary"] += 1
            return None
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError:
            self.skipped["invalid_utf8"] += 1
            return None

    def _jsonl(self, path: Path) -> Iterator[Document]:
        with path.open("rb") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    self.skipped["bad_json"] += 1
                    continue
                text = record.get(self.text_field) if isinstance(record, dict) else None
                if not isinstance(text, str) or not text.strip():
                    self.skipped["no_text"] += 1
                    continue
                yield Document(text, self.name, f"{path}:{number}", self.licence)
