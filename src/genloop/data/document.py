"""The unit every data stage passes along: one document's text plus where it came from.

Provenance rides with the text from the first read to the manifest, so that every token in a shard
can be traced to a file, a package member or a recipe, and its licence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Document:
    """A text and its origin. `source` is the config's name for the source; `origin` the exact place."""

    text: str
    source: str
    origin: str
    licence: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Example:
    """A training example for SFT or preference data, in the JSONL field names TRL uses.

    `record` is exactly what goes on one JSONL line: `{"messages": [...]}`,
    `{"prompt", "completion"}` or `{"prompt", "chosen", "rejected"}`.
    """

    record: dict[str, Any]
    source: str
    origin: str
    licence: str | None = None
