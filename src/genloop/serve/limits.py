"""Per-client limits: token buckets for requests and tokens per minute, a cap on requests in flight,
and the per-request caps on conversation length.

A client is its API key (as a hash prefix, never the key) or, on a server without keys, its IP
address (hashed too). The gate checks requests-per-minute and concurrency before the body is read;
`admit` runs in the routes once the prompt is tokenized, for the token charge and the length caps.
Every bucket operation is a short critical section under one `threading.Lock`: it never awaits, so
the check-and-take is atomic however many requests arrive at once, from the event loop or a worker.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from genloop.serve.config import LimitsConfig
from genloop.serve.errors import APIError
from genloop.serve.filter_events import CLIENT_ID, LimitEvent, record_filter_events

if TYPE_CHECKING:
    from fastapi import Request

    from genloop.serve.state import ServerState

log = logging.getLogger("genloop.serve")

# The routes that spend model time; the others (models, conversations, feedback, the page) stay free.
LIMITED_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})
IDLE_FORGET_S = 60.0  # an idle bucket is full again after a minute: forgetting it changes nothing


def key_id(key: str) -> str:
    """The name a key goes by in the store and the logs: a hash prefix, useless for authenticating."""
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]


def address_id(host: str | None) -> str:
    return "ip:" + hashlib.sha256((host or "unknown").encode()).hexdigest()[:16]


class TokenBucket:
    """`capacity` tokens, refilled continuously at `rate` per second; starts full."""

    def __init__(self, capacity: float, rate: float, now: float) -> None:
        self.capacity, self.rate = capacity, rate
        self.tokens, self.stamp = capacity, now

    def wait(self, amount: float, now: float) -> float:
        """Seconds until `amount` tokens are there (0.0: they are)."""
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        short = amount - self.tokens
        return 0.0 if short <= 1e-9 else short / self.rate  # tolerance: refills sum up in floating point

    def take(self, amount: float) -> None:
        self.tokens -= amount


@dataclass
class _Client:
    requests: TokenBucket | None
    tokens: TokenBucket | None
    active: int = 0
    seen: float = 0.0


@dataclass(frozen=True)
class Refusal:
    """Why a request was turned away: the limit's name, and when a retry can succeed (None: never)."""

    limit: str
    retry_after: float | None
    message: str

    @property
    def retry_after_s(self) -> int:
        """Whole seconds for the Retry-After header, rounded up so that a retry then succeeds."""
        return max(1, math.ceil(self.retry_after or 0.0))


@dataclass
class Limiter:
    limits: LimitsConfig
    clock: Callable[[], float] = time.monotonic
    _clients: dict[str, _Client] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pruned: float = 0.0

    def enter(self, client: str) -> Refusal | None:
        """Start a limited request: count it against the minute and take a concurrency slot, or refuse.
        A request that entered must `leave` when its response has been sent."""
        lim = self.limits
        with self._lock:
            now = self.clock()
            c = self._client(client, now)
            if lim.max_concurrent is not None and c.active >= lim.max_concurrent:
                return Refusal(
                    "max_concurrent",
                    1.0,
                    f"Too many requests at once: at most {lim.max_concurrent} in flight per client. "
                    "Wait for one to finish.",
                )
            if c.requests is not None:
                wait = c.requests.wait(1, now)
                if wait > 0:
                    return Refusal(
                        "requests_per_minute",
                        wait,
                        f"Rate limit reached: {lim.requests_per_minute} requests per minute per client. "
                        f"Retry in {math.ceil(wait)} s.",
                    )
                c.requests.take(1)
            c.active += 1
            return None

    def leave(self, client: str) -> None:
        with self._lock:
            c = self._clients.get(client)
            if c is not None:
                c.active = max(0, c.active - 1)
                c.seen = self.clock()

    def charge(self, client: str, tokens: int) -> Refusal | None:
        """Take `tokens` from the client's tokens-per-minute bucket, or say when they will be there."""
        cap = self.limits.tokens_per_minute
        if cap is None:
            return None
        if tokens > cap:
            return Refusal(
                "tokens_per_minute",
                None,
                f"This request needs {tokens} tokens (prompt + max_tokens) but the limit is {cap} tokens "
                "per minute: lower max_tokens or shorten the prompt.",
            )
        with self._lock:
            now = self.clock()
            bucket = self._client(client, now).tokens
            assert bucket is not None
            wait = bucket.wait(tokens, now)
            if wait > 0:
                return Refusal(
                    "tokens_per_minute",
                    wait,
                    f"Rate limit reached: {cap} tokens per minute per client (this request needs {tokens}). "
                    f"Retry in {math.ceil(wait)} s.",
                )
            bucket.take(tokens)
            return None

    def _client(self, client: str, now: float) -> _Client:
        """The client's buckets (new ones start full); forgets idle clients once a minute."""
        if now - self._pruned > IDLE_FORGET_S:
            self._pruned = now
            for name in [
                n for n, c in self._clients.items() if not c.active and now - c.seen > IDLE_FORGET_S
            ]:
                del self._clients[name]
        c = self._clients.get(client)
        if c is None:
            lim = self.limits
            rpm, tpm = lim.requests_per_minute, lim.tokens_per_minute
            c = self._clients[client] = _Client(
                TokenBucket(rpm, rpm / 60.0, now) if rpm else None,
                TokenBucket(tpm, tpm / 60.0, now) if tpm else None,
            )
        c.seen = now
        return c


async def record_limit(state: ServerState, limit: str, detail: str) -> None:
    """A limit hit as a filter event (store + /metrics); a store failure is logged, never answered."""
    if limit in ("requests_per_minute", "tokens_per_minute", "max_concurrent"):
        state.metrics.rate_limited.labels(limit).inc()
    try:
        await asyncio.to_thread(
            record_filter_events, state, [LimitEvent(f"limit:{limit}", detail)], direction="input"
        )
    except Exception:
        log.exception("could not record the limit event %s", limit)


def client_of(request: Request) -> str:
    """The client id the gate resolved (an address id for a request that bypassed the gate)."""
    client = CLIENT_ID.get()
    if client is None:
        host = request.client.host if request.client else None
        client = address_id(host)
    return client


def _new_tokens(prompt: int, max_tokens: int | None, max_len: int | None) -> int:
    """The most tokens a request can generate: max_tokens, cut (as the engine cuts it) to the context."""
    room = max(0, max_len - prompt) if max_len is not None else None
    if max_tokens is None:
        return room or 0
    return min(max_tokens, room) if room is not None else max_tokens


async def admit(
    request: Request,
    prompts: Sequence[Sequence[int]],
    *,
    max_tokens: int | None = 0,
    n: int = 1,
    messages: int | None = None,
    param: str = "prompt",
) -> None:
    """The limits that need the tokenized request: messages and prompt tokens per request (400), then
    the tokens-per-minute charge, prompt + n × max_tokens per prompt (429). max_tokens is cut to the
    context as the engine cuts it; None means "until the context is full": the rest is charged."""
    from genloop.serve.state import ServerState

    state = ServerState.of(request)
    lim = state.limits
    if messages is not None and lim.max_messages is not None and messages > lim.max_messages:
        await record_limit(state, "max_messages", f"{messages} messages, limit {lim.max_messages}")
        raise APIError(
            400,
            f"This chat has {messages} messages but this server takes at most {lim.max_messages} per "
            "request: drop older turns or start a new conversation.",
            param="messages",
            code="context_length_exceeded",
        )
    longest = max((len(p) for p in prompts), default=0)
    if lim.max_prompt_tokens is not None and longest > lim.max_prompt_tokens:
        await record_limit(state, "max_prompt_tokens", f"{longest} tokens, limit {lim.max_prompt_tokens}")
        raise APIError(
            400,
            f"The prompt has {longest} tokens but this server takes at most {lim.max_prompt_tokens}: "
            "shorten it (or the conversation).",
            param=param,
            code="context_length_exceeded",
        )
    if lim.tokens_per_minute is None:
        return
    charge = sum(len(p) + n * _new_tokens(len(p), max_tokens, state.max_len) for p in prompts)
    refusal = state.limiter.charge(client_of(request), charge)
    if refusal is None:
        return
    await record_limit(state, refusal.limit, refusal.message)
    if refusal.retry_after is None:
        raise APIError(400, refusal.message, param="max_tokens", code="request_too_large")
    raise APIError(429, refusal.message, code="rate_limit_exceeded", retry_after=refusal.retry_after_s)
