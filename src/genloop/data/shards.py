"""Tokenized shards: flat `uint16`/`uint32` `.bin` files of token ids (nanoGPT's layout: documents
joined by the end-of-text id) plus `manifest.json`, read back with `numpy.memmap`.

A shard is written beside its final name and renamed when complete, so a reader (or a resumed
build) never sees half a shard; the manifest is written last and is what marks a build complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from genloop.errors import UserError

MANIFEST = "manifest.json"
FORMAT = "genloop-shards"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (half the disk and bandwidth), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


class ShardWriter:
    """Appends token ids to `<prefix>-00000.bin`, `<prefix>-00001.bin`, ... of at most
    `tokens_per_shard` tokens each; `close()` returns what the manifest records of each shard."""

    def __init__(self, directory: Path, prefix: str, dtype: np.dtype, tokens_per_shard: int) -> None:
        self.directory, self.prefix, self.dtype = directory, prefix, np.dtype(dtype)
        self.limit = tokens_per_shard
        self.shards: list[dict[str, Any]] = []
        self._fh: Any = None
        self._tmp: Path | None = None
        self._count = 0
        self._hash = hashlib.sha256()

    def _open(self) -> None:
        name = f"{self.prefix}-{len(self.shards):05d}.bin"
        self._tmp = self.directory / f".{name}.tmp"
        self._fh = self._tmp.open("wb")
        self._count, self._hash = 0, hashlib.sha256()

    def add(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=self.dtype)
        while ids.size:
            if self._fh is None:
                self._open()
            room = self.limit - self._count
            part, ids = ids[:room], ids[room:]
            data = part.tobytes()
            self._fh.write(data)
            self._hash.update(data)
            self._count += part.size
            if self._count >= self.limit:
                self._finish()

    def _finish(self) -> None:
        assert self._fh is not None and self._tmp is not None
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        name = f"{self.prefix}-{len(self.shards):05d}.bin"
        os.replace(self._tmp, self.directory / name)
        self.shards.append({"file": name, "tokens": self._count, "sha256": self._hash.hexdigest()})
        self._fh = self._tmp = None

    def close(self) -> list[dict[str, Any]]:
        if self._fh is not None and self._count:
            self._finish()
        elif self._fh is not None:
            self._fh.close()
            assert self._tmp is not None
            self._tmp.unlink(missing_ok=True)
            self._fh = None
        return self.shards

    def abort(self) -> None:
        """Drop the shard being written (a failed build leaves no partial shard behind)."""
        if self._fh is not None:
            self._fh.close()
            assert self._tmp is not None
            self._tmp.unlink(missing_ok=True)
            self._fh = None


@dataclass
class Shards:
    """A finished build, opened for reading: its manifest and one memmap per shard file."""

    directory: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, directory: str | os.PathLike[str]) -> Shards:
        folder = Path(directory).expanduser()
        path = folder / MANIFEST
        if not path.is_file():
            raise UserError(
                f"{folder} holds no {MANIFEST}: not a finished shard folder "
                "(build one with `genloop data build CONFIG.yaml`)"
            )
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, OSError) as exc:
            raise UserError(f"{path} is not readable JSON ({exc}); rebuild the shards") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise UserError(f"{path} is not a genloop shard manifest; rebuild the shards")
        return cls(folder, manifest)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.manifest["dtype"])

    @property
    def eos_token_id(self) -> int | None:
        return self.manifest["tokenizer"].get("eos_token_id")

    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    def arrays(self, split: str) -> list[np.memmap]:
        """Read-only memmaps of a split's shards, in order; a missing or short file is a UserError."""
        if split not in self.manifest["splits"]:
            known = ", ".join(self.manifest["splits"]) or "none"
            raise UserError(f"{self.directory} has no split '{split}' (splits: {known})")
        out = []
        for shard in self.manifest["splits"][split]["shards"]:
            path = self.directory / shard["file"]
            expected = shard["tokens"] * self.dtype.itemsize
            if not path.is_file() or path.stat().st_size != expected:
                raise UserError(f"shard {path} is missing or truncated; rebuild the shards")
            out.append(np.memmap(path, dtype=self.dtype, mode="r"))
        return out
