"""Deduplication across the whole corpus: exact (hash of the normalized text) and near-duplicate
(MinHash over word n-grams, banded into an LSH index by `datasketch`).

Signatures are computed in the worker processes; the index lives in the main process, which sees
every document in a fixed order, so which copy survives does not depend on the number of workers.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH

_WORD = re.compile(r"\w+")
_SEED = 1
_SCHEME = "affine32"  # 32-bit hash values: half the memory of the 64-bit scheme


def exact_key(text: str) -> bytes:
    """Case- and whitespace-insensitive identity: two copies that differ only in spacing or case are
    the same document."""
    canonical = " ".join(text.lower().split())
    return hashlib.blake2b(canonical.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def signature(text: str, num_perm: int, ngram: int) -> np.ndarray:
    """MinHash of the word `ngram`-shingles. A document shorter than one shingle is its own shingle."""
    words = _WORD.findall(text.lower())
    if len(words) <= ngram:
        shingles = [" ".join(words).encode()]
    else:
        shingles = [" ".join(words[i : i + ngram]).encode() for i in range(len(words) - ngram + 1)]
    minhash = MinHash(num_perm=num_perm, seed=_SEED, scheme=_SCHEME)
    minhash.update_batch(list(set(shingles)))
    return minhash.hashvalues.copy()


class NearDuplicateIndex:
    """An LSH index of the documents kept so far. A candidate from the index is confirmed against the
    stored signature, so LSH's false positives never drop a document that is not a near copy."""

    def __init__(self, threshold: float, num_perm: int) -> None:
        self.threshold, self.num_perm = threshold, num_perm
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.signatures: dict[str, np.ndarray] = {}

    def _lean(self, sig: np.ndarray) -> LeanMinHash:
        return LeanMinHash(seed=_SEED, hashvalues=sig, scheme=_SCHEME)

    def find(self, sig: np.ndarray) -> str | None:
        """The key of a kept document whose estimated Jaccard similarity reaches the threshold."""
        for key in self.lsh.query(self._lean(sig)):
            if float(np.mean(self.signatures[key] == sig)) >= self.threshold:
                return key
        return None

    def add(self, key: str, sig: np.ndarray) -> None:
        self.lsh.insert(key, self._lean(sig), check_duplication=False)
        self.signatures[key] = sig

    def __len__(self) -> int:
        return len(self.signatures)


class Deduplicator:
    """Exact and near-duplicate decisions in corpus order. `check` returns the drop reason or None
    (and then remembers the document)."""

    def __init__(self, exact: bool, near: bool, threshold: float, num_perm: int) -> None:
        self.exact, self.near = exact, near
        self.seen: set[bytes] = set()
        self.index = NearDuplicateIndex(threshold, num_perm) if near else None

    def check(self, key: bytes, sig: np.ndarray | None) -> str | None:
        if self.exact and key in self.seen:
            return "exact_duplicate"
        if self.index is not None and sig is not None and self.index.find(sig) is not None:
            return "near_duplicate"
        self.remember(key, sig)
        return None

    def remember(self, key: bytes, sig: np.ndarray | None) -> None:
        """Add a kept document; also how a resumed build rebuilds the index from committed parts."""
        self.seen.add(key)
        if self.index is not None and sig is not None:
            self.index.add(key.hex(), sig)
