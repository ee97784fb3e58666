"""Filter and limit events: counted at /metrics and kept in the store's `filter_events` table.

The routes call `record_filter_events` with the postprocess pipeline's events (input or output side);
the gate and `limits.admit` call it for every limit that refused a request. The request id and the
client's key id come from context variables the gate sets, so a caller deep in a route need not
thread them through.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from genloop.serve.state import ServerState

log = logging.getLogger("genloop.serve")
DIRECTIONS = ("input", "output")

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("genloop_request_id", default=None)
CLIENT_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("genloop_client_id", default=None)


class EventLike(Protocol):
    """What `genloop.postprocess.Event` provides; any object with these three attributes will do."""

    @property
    def rule(self) -> str: ...

    @property
    def action(self) -> str: ...

    @property
    def detail(self) -> str | None: ...


@dataclass(frozen=True)
class LimitEvent:
    """A limit that refused a request: rule "limit:<name>", action "reject"."""

    rule: str
    detail: str | None = None
    action: str = "reject"


def record_filter_events(
    state: ServerState,
    events: Iterable[EventLike],
    *,
    direction: str,
    conversation_id: str | None = None,
    message_id: str | None = None,
    request_id: str | None = None,
    api_key_id: str | None = None,
) -> list[str]:
    """Count each event at /metrics and store it (one transaction); returns the stored ids.

    Blocking (a durable SQLite commit): from async code, call it through `asyncio.to_thread`, which
    carries the context variables over. `detail` is stored as given, cut to 200 characters: the
    pipeline never puts PII text there, and callers must not either.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, not {direction!r}")
    events = list(events)
    for e in events:
        state.metrics.filter_events.labels(direction, e.rule, e.action).inc()
    if state.store is None or not events:
        return []
    rows = [
        {
            "direction": direction,
            "rule": e.rule,
            "action": e.action,
            "detail": e.detail,
            "request_id": request_id or REQUEST_ID.get(),
            "api_key_id": api_key_id or CLIENT_ID.get(),
            "conversation_id": conversation_id,
            "message_id": message_id,
        }
        for e in events
    ]
    return state.store.add_filter_events(rows)
