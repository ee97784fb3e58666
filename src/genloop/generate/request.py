"""What goes into the engine and what comes out: requests, sequences in flight, and their outputs."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from genloop.generate.sampling import SamplingParams
from genloop.generate.stop import StopMatcher


@dataclass
class Completion:
    """One finished completion (OpenAI's `choice`)."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None


@dataclass
class RequestOutput:
    """Everything generated for one prompt: `n` completions and the token counts for usage."""

    request_id: str
    prompt_token_ids: list[int]
    outputs: list[Completion]

    @property
    def text(self) -> str:
        return self.outputs[0].text

    @property
    def completion_tokens(self) -> int:
        return sum(len(o.token_ids) for o in self.outputs)


@dataclass
class Delta:
    """A piece of one completion as it is generated; `finish_reason` is set on its last delta."""

    request_id: str
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None
    prompt_tokens: int = 0
    # The EOS / stop token that ended the completion: not part of the text or the token count, but its
    # log-prob is the entry of `logprobs` after those of `token_ids` (legacy completions show it, as vLLM
    # does, so that `echo` + `max_tokens=1` always returns exactly one generated log-prob).
    stop_token_id: int | None = None


@dataclass
class Sequence:
    """One completion being generated: its tokens, its sampling state and where its K/V live."""

    request: Request
    index: int
    generator: torch.Generator
    stop: StopMatcher
    constraint: Any = None
    out: list[int] = field(default_factory=list)
    slot: int = -1
    prefilled: int = 0
    decoded: str = ""  # text of `out` decoded so far (what the stop matcher has seen)
    text: str = ""  # text released to the caller
    finish_reason: str | None = None
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    post: Any = None  # its postprocessing stream state (genloop.postprocess.StreamState) when enabled

    @property
    def prompt(self) -> list[int]:
        return self.request.prompt_ids

    @property
    def tokens(self) -> list[int]:
        return self.request.prompt_ids + self.out


@dataclass
class Request:
    """A prompt and its parameters; `on_delta` is called from the engine thread for every delta."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    on_delta: Callable[[Delta], None] | None = None
    response_format: dict[str, Any] | None = None
    on_error: Callable[[BaseException], None] | None = None  # called if the engine fails the request
    seqs: list[Sequence] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    cancelled: bool = False
    error: BaseException | None = None

    def output(self) -> RequestOutput:
        comps = [
            Completion(s.index, s.text, list(s.out), s.finish_reason,
                       s.logprobs if self.params.logprobs is not None else None,
                       s.top_logprobs if self.params.logprobs else None)
            for s in self.seqs
        ]  # fmt: skip
        return RequestOutput(self.request_id, self.prompt_ids, comps)
