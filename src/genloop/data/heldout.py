"""Fixed held-out splits of the built-in recipes: the items genloop's evaluation recipes score on, and
which training data built from the same recipes therefore leaves out.

Membership is a keyed hash of a stable identity of the item (a Debian package name, a conversation's
id, a sentence pair's text), not of its position, so it survives package updates and reordering, and
every recipe that shares an identity agrees: a package held out of `debian-summaries` is held out of
`debian-descriptions` too, so its synopsis never reaches pretraining text either.
"""

from __future__ import annotations

import hashlib

from genloop.data.document import Document, Example

SALT = b"genloop-heldout-1"  # changing it would move every held-out item: never, once published
SPLITS = ("train", "heldout", "all")


def in_heldout(key: str, fraction: float) -> bool:
    """Whether the item identified by `key` is in the held-out share `fraction` (0-1)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8, key=SALT).digest()
    return int.from_bytes(digest, "little") / 2**64 < fraction


def wanted(key: str | None, fraction: float, split: str) -> bool:
    """Whether a read of `split` ("train", "heldout" or "all") includes the item; no key: always."""
    return split == "all" or key is None or in_heldout(key, fraction) == (split == "heldout")


def text_pair_key(first: str, second: str) -> str:
    """The identity of a translation pair, the same in both directions."""
    return "\n".join(sorted((first, second)))


def origin_key(item: Document | Example) -> str:
    """The item's origin as its identity, with a package version in it dropped (`name=1.2` -> `name`)."""
    parts = item.origin.split(":")
    return ":".join(p.split("=")[0] for p in parts)


def pair_key(item: Document | Example) -> str | None:
    """A translation pair's identity: its two sentences in either direction (the dictionary's line
    numbers move between versions). Bilingual documents bundle many pairs and have no single identity
    (None): their reader leaves the held-out pairs out itself."""
    if not isinstance(item, Example) or "completion" not in item.record:
        return None
    source = item.record["prompt"].split("\n\n", 1)[-1]  # after the "Translate from ...:" line
    return text_pair_key(source, item.record["completion"])
