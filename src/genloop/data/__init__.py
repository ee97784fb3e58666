"""Data collection and curation: sources and recipes, quality filters, deduplication, PII scrubbing,
tokenized shards, and the packed loader the trainer reads them with."""

from genloop.data.document import Document, Example

__all__ = ["Document", "Example"]
