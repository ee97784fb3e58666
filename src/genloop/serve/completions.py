"""Running completions for the HTTP API: engine requests whose deltas arrive on an asyncio queue, and
OpenAI's response and chunk shapes built from them.

Requests are submitted before the response starts, so that everything wrong with them (an invalid
JSON Schema, a prompt over the context) is a 4xx, never a broken stream.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from genloop.generate import Engine, SamplingParams
from genloop.generate.request import Delta, Request
from genloop.generate.scoring import PromptScores
from genloop.serve.errors import APIError


@dataclass
class Choice:
    """What one completion has produced so far."""

    text: str = ""
    tokens: int = 0
    finish_reason: str | None = None
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    last: float = 0.0  # perf_counter of its last piece (inter-token latency)


class Run:
    """Several engine requests (prompts x n) streaming into one queue as (choice index, delta)."""

    def __init__(
        self,
        engine: Engine,
        prompts: list[list[int]],
        params: SamplingParams,
        response_format: dict[str, Any] | None,
    ) -> None:
        self.engine, self.params = engine, params
        self.started = time.perf_counter()
        self.first_token_at: float | None = None
        self.queue: asyncio.Queue[tuple[int, Delta] | BaseException] = asyncio.Queue()
        self.requests: list[Request] = []
        self.prompt_tokens = sum(len(p) for p in prompts)
        self.choices = [Choice() for _ in range(len(prompts) * params.n)]
        loop = asyncio.get_running_loop()
        try:
            for i, ids in enumerate(prompts):
                base = i * params.n
                request = engine.submit(
                    ids,
                    params,
                    response_format=response_format,
                    on_delta=lambda d, b=base: loop.call_soon_threadsafe(self.queue.put_nowait, (b, d)),
                )
                request.on_error = lambda e: loop.call_soon_threadsafe(self.queue.put_nowait, e)
                self.requests.append(request)
        except ValueError as exc:
            self.cancel()
            raise APIError(400, str(exc), code="invalid_value") from exc

    @property
    def finished(self) -> bool:
        return all(c.finish_reason is not None for c in self.choices)

    @property
    def completion_tokens(self) -> int:
        return sum(c.tokens for c in self.choices)

    def cancel(self) -> None:
        for request in self.requests:
            self.engine.cancel(request)

    def sequences(self) -> list[Any]:
        """The engine's sequences in choice order (prompt i's n completions at i*n...)."""
        return [seq for request in self.requests for seq in request.seqs]

    async def deltas(
        self, on_piece: Callable[[Choice, float], None] | None = None
    ) -> AsyncIterator[tuple[int, Delta]]:
        """Deltas in arrival order until every choice has finished; updates `choices` as they come."""
        while not self.finished:
            item = await self.queue.get()
            if isinstance(item, BaseException):
                raise APIError(500, f"generation failed: {item}") from item
            base, delta = item
            index = base + delta.index
            choice = self.choices[index]
            now = time.perf_counter()
            if delta.token_ids or delta.text:
                if self.first_token_at is None:
                    self.first_token_at = now
                if on_piece is not None:
                    on_piece(choice, now)
                choice.last = now
            choice.text += delta.text
            choice.tokens += len(delta.token_ids)
            if delta.finish_reason is not None:
                choice.finish_reason = delta.finish_reason
            yield index, delta

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def _token_entry(engine: Engine, token: int, logprob: float) -> dict[str, Any]:
    text = engine.tokenizer.decode([token], skip_special_tokens=False)
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def chat_logprobs(engine: Engine, delta: Delta) -> dict[str, Any] | None:
    """OpenAI's chat `logprobs.content` entries for the tokens of one delta (the stop token is not one)."""
    if delta.logprobs is None or not delta.token_ids:
        return None
    content = []
    for i, (token, lp) in enumerate(zip(delta.token_ids, delta.logprobs, strict=False)):
        entry = _token_entry(engine, token, lp)
        tops = delta.top_logprobs[i] if delta.top_logprobs else []
        entry["top_logprobs"] = [_token_entry(engine, t, p) for t, p in tops]
        content.append(entry)
    return {"content": content}


def completion_logprobs(engine: Engine, delta: Delta, offset: int) -> dict[str, Any] | None:
    """The legacy completions `logprobs` object (tokens, token_logprobs, top_logprobs, text_offset)."""
    if delta.logprobs is None:
        return None
    tokens, offsets = [], []
    for token in delta.token_ids:
        text = engine.tokenizer.decode([token], skip_special_tokens=False)
        tokens.append(text)
        offsets.append(offset)
        offset += len(text)
    if delta.stop_token_id is not None:  # the stop token: listed, adds no text
        tokens.append(engine.tokenizer.decode([delta.stop_token_id], skip_special_tokens=False))
        offsets.append(offset)
    tops = None
    if delta.top_logprobs:
        tops = [{engine.tokenizer.decode([t]): p for t, p in row} for row in delta.top_logprobs]
    return {
        "tokens": tokens,
        "token_logprobs": list(delta.logprobs),
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def echoed_logprobs(engine: Engine, ids: list[int], scores: PromptScores) -> dict[str, Any]:
    """The legacy logprobs object of an echoed prompt: its first token has no log-prob (no context)."""
    tokens, offsets, offset = [], [], 0
    for token in ids:
        text = engine.tokenizer.decode([token], skip_special_tokens=False)
        tokens.append(text)
        offsets.append(offset)
        offset += len(text)
    rows = scores.top_logprobs
    tops = [None if r is None else {engine.tokenizer.decode([t]): p for t, p in r} for r in rows]
    return {
        "tokens": tokens,
        "token_logprobs": list(scores.token_logprobs),
        "top_logprobs": tops if any(rows[1:]) else None,  # logprobs=0: chosen tokens only
        "text_offset": offsets,
    }


def merge_logprobs(into: dict[str, Any] | None, more: dict[str, Any] | None) -> dict[str, Any] | None:
    """Join the logprobs of consecutive deltas into one object (non-streamed responses)."""
    if more is None:
        return into
    if into is None:
        return {k: (list(v) if isinstance(v, list) else v) for k, v in more.items()}
    for key, value in more.items():
        if isinstance(value, list):
            into[key] = (into.get(key) or []) + value
    return into
