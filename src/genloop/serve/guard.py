"""The postprocess pipeline at the server's two doors: prompts on the way in (filters that block
answer 400 `content_filter`, PII is redacted before the model sees it) and the events of answers on
the way out (the engine itself formats and filters the text; here its events are stored and counted).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from genloop.serve.errors import APIError
from genloop.serve.filter_events import record_filter_events

if TYPE_CHECKING:
    from genloop.serve.completions import Run
    from genloop.serve.state import ServerState


REFUSING = ("block", "mask")  # a prompt is never silently rewritten by these: the client hears why


async def screen_texts(state: ServerState, texts: list[str], param: str) -> list[str]:
    """The prompts' texts after the input filters (unchanged when the pipeline does not screen
    inputs): PII is redacted; a blocked or masked one is a 400 naming the rule. Events are recorded."""
    pipeline = state.pipeline
    if pipeline is None or not pipeline.inputs:
        return texts
    results = [pipeline.check_input(t) for t in texts]
    events = [e for r in results for e in r.events]
    if events:
        await asyncio.to_thread(record_filter_events, state, events, direction="input")
    for result in results:
        refused = [e.rule for e in result.events if e.action in REFUSING]
        if result.blocked or refused:
            rules = ", ".join(sorted(set(refused))) or "moderation"
            raise APIError(
                400,
                f"The {param} was refused by the content filter ({rules}); rephrase it.",
                param=param,
                code="content_filter",
            )
    return [r.text for r in results]


async def screen_messages(state: ServerState, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """A chat with its user turns screened (system and assistant turns are the deployment's own)."""
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    texts = await screen_texts(state, [messages[i]["content"] for i in users], "messages")
    out = [dict(m) for m in messages]
    for i, text in zip(users, texts, strict=True):
        out[i]["content"] = text
    return out


def record_output_events(state: ServerState, run: Run, message_ids: list[str] | None = None) -> None:
    """Store the events of each finished answer (formatting, redaction, masks, blocks)."""
    if state.pipeline is None:
        return
    for index, seq in enumerate(run.sequences()):
        events: list[Any] = list(seq.post.events) if seq.post is not None else []
        if events:
            message_id = message_ids[index] if message_ids and index < len(message_ids) else None
            record_filter_events(state, events, direction="output", message_id=message_id)
