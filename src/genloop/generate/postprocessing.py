"""The engine's side of postprocessing (genloop.postprocess): each sequence's text passes through its
own stream state as it is released, on the engine thread, so every caller (stream, generate, the
server) sees the same formatted, filtered text, and a blocked answer stops generating at once."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from genloop.generate.request import Sequence
    from genloop.postprocess import Pipeline, StreamState


def release(seq: Sequence, text: str, pipeline: Pipeline | None) -> str:
    """The part of a piece safe to release now; the rest with the last piece. A blocked answer gets
    the refusal text and ends now with finish_reason content_filter."""
    post = seq.post
    assert post is not None and pipeline is not None
    if post.blocked:
        return ""
    text = post.feed(text) if text else ""
    if seq.finish_reason is not None and not post.blocked:
        text += post.finish(truncated=seq.finish_reason == "length")
    if post.blocked:
        seq.finish_reason = "content_filter"
        text += pipeline.refusal
    return text


def new_stream(pipeline: Pipeline | None, prompt: str | None) -> StreamState | None:
    """A sequence's own stream state, or None when the engine sends raw text."""
    return pipeline.stream(prompt=prompt) if pipeline is not None else None


def prompt_text(prompt: Any) -> str | None:
    """A prompt as text for postprocessing hooks: the text itself, or a chat's last user message."""
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content") for m in prompt if isinstance(m, Mapping) and m.get("role") == "user"]
    return users[-1] if users and isinstance(users[-1], str) else None
