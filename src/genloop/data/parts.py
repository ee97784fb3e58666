"""Committed parts of curated documents: the resumable middle of a build.

A part is `part-NNNNN.jsonl` (kept documents: text, origin, split) plus `part-NNNNN.npz` (their
exact-dedup keys and MinHash signatures). Both are written beside their names and renamed on commit;
the build's state counts only committed parts, so a crash mid-part costs that part and no more.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


def split_of(key: bytes, validation: float, seed: int) -> str:
    """Train or validation by a stable hash of the document: the same text lands in the same split
    in every build, whatever the order or the number of workers."""
    if validation <= 0:
        return "train"
    h = hashlib.blake2b(key, digest_size=8, salt=seed.to_bytes(8, "little", signed=True)).digest()
    return "validation" if int.from_bytes(h, "little") / 2**64 < validation else "train"


def _name(index: int) -> str:
    return f"part-{index:05d}"


class PartWriter:
    """Accumulates one part at a time; `commit()` makes it durable and starts the next."""

    def __init__(self, folder: Path, index: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.index = folder, index
        self._fh: Any = None
        self._start()

    def _start(self) -> None:
        self.docs = self.bytes = 0
        self.keys: list[bytes] = []
        self.sigs: list[np.ndarray] = []
        self._tmp = self.folder / f".{_name(self.index)}.jsonl.tmp"
        self._fh = self._tmp.open("w", encoding="utf-8")

    def add(self, record: dict[str, Any], key: bytes, sig: np.ndarray | None) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        self._fh.write(line)
        self.docs += 1
        self.bytes += len(line)
        self.keys.append(key)
        if sig is not None:
            self.sigs.append(sig)

    def commit(self) -> None:
        """Make the current part durable (signatures first, then the documents) and start a new one;
        an empty part is not written."""
        if not self.docs:
            return
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        name = _name(self.index)
        keys = np.frombuffer(b"".join(self.keys), dtype=np.uint8).reshape(-1, 16)
        sigs = np.stack(self.sigs) if self.sigs else np.zeros((0, 0), dtype=np.uint32)
        tmp_npz = self.folder / f".{name}.npz.tmp"
        with tmp_npz.open("wb") as fh:
            np.savez(fh, keys=keys, sigs=sigs)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_npz, self.folder / f"{name}.npz")
        os.replace(self._tmp, self.folder / f"{name}.jsonl")
        self.index += 1
        self._start()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._tmp.unlink(missing_ok=True)
            self._fh = None


class PartReader:
    """The first `count` committed parts of a source folder, in order."""

    def __init__(self, folder: Path, count: int) -> None:
        self.folder, self.count = folder, count

    def records(self) -> Iterator[dict[str, Any]]:
        for index in range(self.count):
            with (self.folder / f"{_name(index)}.jsonl").open(encoding="utf-8") as fh:
                for line in fh:
                    yield json.loads(line)

    def signatures(self) -> Iterator[Iterator[tuple[bytes, np.ndarray | None]]]:
        for index in range(self.count):
            with np.load(self.folder / f"{_name(index)}.npz") as data:
                keys, sigs = data["keys"], data["sigs"]
            yield ((keys[i].tobytes(), sigs[i] if len(sigs) else None) for i in range(len(keys)))
