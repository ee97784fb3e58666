"""The OpenAI-compatible routes: chat and text completions (streamed or not), models, embeddings,
tokenize/detokenize. Chat exchanges are written to the store before the answer starts."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError

from genloop.generate.request import Delta
from genloop.generate.scoring import prompt_logprobs
from genloop.serve.completions import (
    Choice,
    Run,
    chat_logprobs,
    completion_logprobs,
    echoed_logprobs,
    merge_logprobs,
    new_id,
)
from genloop.serve.errors import APIError, validation_error
from genloop.serve.guard import record_output_events, screen_messages, screen_texts
from genloop.serve.limits import admit
from genloop.serve.recording import Recording
from genloop.serve.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    TokenizeRequest,
)
from genloop.serve.state import ServerState

router = APIRouter()
B = TypeVar("B", bound=BaseModel)


async def parse(request: Request, model: type[B]) -> B:
    """The body as `model`: invalid JSON, invalid UTF-8 and wrong types are all 400s naming the field."""
    raw = await request.body()
    if not raw.strip():
        raise APIError(400, "The request body is empty: send a JSON object.", code="invalid_json")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first.get("type") == "json_invalid":
            raise APIError(
                400,
                f"The body is not valid JSON ({first.get('msg')}); send a JSON object.",
                code="invalid_json",
            ) from exc
        if first.get("type") == "model_type" and not first.get("loc"):
            raise APIError(400, "The body must be a JSON object.", code="invalid_json") from exc
        raise validation_error(exc) from exc


_LINE_BREAKS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def _sse(data: dict[str, Any]) -> str:
    """One server-sent event. Unicode line separators are escaped: clients that split lines the way
    str.splitlines does would otherwise cut an event in two."""
    return f"data: {json.dumps(data, ensure_ascii=False).translate(_LINE_BREAKS)}\n\n"


def _encode(state: ServerState, prompt: Any, chat: bool) -> list[int]:
    engine = state.engine
    try:
        ids = list(prompt) if isinstance(prompt, list) and not chat else engine.encode_prompt(prompt)
    except Exception as exc:  # a template that rejects the message order, a bad token id...
        raise APIError(
            400, f"Could not build the prompt: {exc}", param="messages" if chat else "prompt"
        ) from exc
    if any(not 0 <= t < engine.vocab_size for t in ids):
        raise APIError(400, f"Token ids must be in [0, {engine.vocab_size}).", param="prompt")
    if len(ids) >= engine.max_len:
        raise APIError(
            400,
            f"This model's maximum context length is {engine.max_len} tokens, but the prompt has {len(ids)} "
            "tokens. Shorten the prompt (or the conversation).",
            param="messages" if chat else "prompt",
            code="context_length_exceeded",
        )
    return ids


def _start(state: ServerState, prompts: list[list[int]], params: Any, response_format: Any) -> Run:
    engine = state.engine
    try:
        params.validate(engine.vocab_size)
    except ValueError as exc:
        raise APIError(400, str(exc), code="invalid_value") from exc
    if engine.queued + len(prompts) * params.n > state.max_queue:
        raise APIError(
            429, f"The server is busy: {engine.queued} sequences are waiting. Retry shortly.", retry_after=1
        )
    return Run(engine, prompts, params, response_format)


def _observe(state: ServerState, run: Run) -> Any:
    def on_piece(choice: Choice, now: float) -> None:
        if choice.last:
            state.metrics.itl.observe(now - choice.last)
        elif run.first_token_at is None:
            state.metrics.ttft.observe(now - run.started)

    return on_piece


def _account(state: ServerState, run: Run) -> None:
    state.metrics.prompt_tokens.inc(run.prompt_tokens)
    state.metrics.generation_tokens.inc(run.completion_tokens)
    state.metrics.e2e.observe(time.perf_counter() - run.started)
    for c in run.choices:
        state.metrics.finished.labels(c.finish_reason or "abort").inc()


async def _collect(
    request: Request, state: ServerState, run: Run, logprobs_of: Callable[[Delta, Choice], Any]
) -> list[dict[str, Any]]:
    """Wait for every choice, watching the connection: a client that leaves frees its slots."""
    logprobs: list[Any] = [None] * len(run.choices)
    pieces = run.deltas(_observe(state, run))
    while True:
        step = asyncio.ensure_future(anext(pieces, None))
        while not step.done():
            await asyncio.wait([step], timeout=0.5)
            if not step.done() and await request.is_disconnected():
                step.cancel()
                run.cancel()
                raise asyncio.CancelledError
        item = step.result()
        if item is None:
            return logprobs
        index, delta = item
        logprobs[index] = merge_logprobs(logprobs[index], logprobs_of(delta, run.choices[index]))


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Any:
    state = ServerState.ready(request)
    body = await parse(request, ChatCompletionRequest)
    state.check_model(body.model)
    ids = _encode(state, await screen_messages(state, body.chat()), chat=True)
    params = body.engine_params()
    await admit(request, [ids], max_tokens=params.max_tokens, n=params.n, messages=len(body.messages))
    fmt = body.response_format.as_engine() if body.response_format else None
    run = _start(state, [ids], params, fmt)  # everything wrong with the request fails before it is stored
    try:
        recording = await Recording.start(state, body, len(ids), params.n)
    except BaseException:
        run.cancel()
        raise
    cid, created = new_id("chatcmpl"), int(time.time())
    extra = recording.fields()

    def chunk(choices: list[dict[str, Any]], usage: Any = None) -> dict[str, Any]:
        out = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": state.model_name,
            "system_fingerprint": state.fingerprint,
            "choices": choices,
            **extra,
        }
        if body.stream_options and body.stream_options.include_usage:
            out["usage"] = usage
        return out

    if body.stream:

        async def events() -> AsyncIterator[str]:
            try:
                for i in range(len(run.choices)):
                    first = {"role": "assistant", "content": ""}
                    yield _sse(chunk([{"index": i, "delta": first, "logprobs": None, "finish_reason": None}]))
                async for index, delta in run.deltas(_observe(state, run)):
                    piece: dict[str, Any] = (
                        {"content": delta.text} if delta.text or not delta.finish_reason else {}
                    )
                    yield _sse(
                        chunk(
                            [
                                {
                                    "index": index,
                                    "delta": piece,
                                    "logprobs": chat_logprobs(state.engine, delta),
                                    "finish_reason": delta.finish_reason,
                                }
                            ]
                        )
                    )
                if body.stream_options and body.stream_options.include_usage:
                    yield _sse(chunk([], run.usage()))
                yield "data: [DONE]\n\n"
            finally:
                _finish(state, run, recording)

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    try:
        logprobs = await _collect(request, state, run, lambda d, c: chat_logprobs(state.engine, d))
    finally:
        _finish(state, run, recording)
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": c.text, "refusal": None},
            "logprobs": logprobs[i],
            "finish_reason": c.finish_reason,
        }
        for i, c in enumerate(run.choices)
    ]
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": state.model_name,
        "system_fingerprint": state.fingerprint,
        "choices": choices,
        "usage": run.usage(),
        **extra,
    }


def _finish(state: ServerState, run: Run, recording: Recording | None) -> None:
    """Account for a run however it ended; a run cut short (client gone) is cancelled in the engine."""
    if not run.finished:
        run.cancel()
    _account(state, run)
    if recording is not None:
        recording.finish(run)
    record_output_events(state, run, recording.message_ids if recording is not None else None)


@router.post("/v1/completions")
async def completions(request: Request) -> Any:
    state = ServerState.ready(request)
    body = await parse(request, CompletionRequest)
    state.check_model(body.model)
    texts = [p for p in body.prompts() if isinstance(p, str)]
    screened = iter(await screen_texts(state, texts, "prompt"))
    given = [next(screened) if isinstance(p, str) else p for p in body.prompts()]
    prompts = [_encode(state, p, chat=False) for p in given]
    params = body.engine_params()
    await admit(request, prompts, max_tokens=params.max_tokens, n=params.n)
    scored = await _prompt_logprobs(state, prompts, body.logprobs) if body.echo else None
    run = _start(state, prompts, params, None)
    cid, created = new_id("cmpl"), int(time.time())
    texts = [p if isinstance(p, str) else state.engine.tokenizer.decode(p) for p in body.prompts()]
    echo = [texts[i // params.n] if body.echo else "" for i in range(len(run.choices))]
    echo_logprobs = [scored[i // params.n] if scored else None for i in range(len(run.choices))]
    offsets = [len(e) for e in echo]

    def logprobs_of(delta: Delta, choice: Choice) -> Any:
        index = run.choices.index(choice)
        out = completion_logprobs(state.engine, delta, offsets[index])
        offsets[index] += len(delta.text)
        return out

    def chunk(choices: list[dict[str, Any]], usage: Any = None) -> dict[str, Any]:
        out = {
            "id": cid,
            "object": "text_completion",
            "created": created,
            "model": state.model_name,
            "system_fingerprint": state.fingerprint,
            "choices": choices,
        }
        if body.stream_options and body.stream_options.include_usage:
            out["usage"] = usage
        return out

    if body.stream:

        async def events() -> AsyncIterator[str]:
            try:
                for i, text in enumerate(echo):
                    if text:
                        echoed = {
                            "index": i,
                            "text": text,
                            "logprobs": echo_logprobs[i],
                            "finish_reason": None,
                        }
                        yield _sse(chunk([echoed]))
                async for index, delta in run.deltas(_observe(state, run)):
                    lp = logprobs_of(delta, run.choices[index])
                    yield _sse(
                        chunk(
                            [
                                {
                                    "index": index,
                                    "text": delta.text,
                                    "logprobs": lp,
                                    "finish_reason": delta.finish_reason,
                                }
                            ]
                        )
                    )
                if body.stream_options and body.stream_options.include_usage:
                    yield _sse(chunk([], run.usage()))
                yield "data: [DONE]\n\n"
            finally:
                _finish(state, run, None)

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    try:
        logprobs = await _collect(request, state, run, logprobs_of)
    finally:
        _finish(state, run, None)
    logprobs = [
        merge_logprobs(merge_logprobs(None, e), lp) for e, lp in zip(echo_logprobs, logprobs, strict=True)
    ]
    choices = [
        {"index": i, "text": echo[i] + c.text, "logprobs": logprobs[i], "finish_reason": c.finish_reason}
        for i, c in enumerate(run.choices)
    ]
    return {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": state.model_name,
        "system_fingerprint": state.fingerprint,
        "choices": choices,
        "usage": run.usage(),
    }


async def _prompt_logprobs(
    state: ServerState, prompts: list[list[int]], top: int | None
) -> list[dict[str, Any] | None] | None:
    """The echoed prompts' own logprobs objects when logprobs were asked for (None otherwise)."""
    if top is None:
        return None
    try:
        scores = await asyncio.to_thread(prompt_logprobs, state.engine, prompts, top)
    except ValueError as exc:
        raise APIError(400, str(exc), param="echo") from exc
    return [echoed_logprobs(state.engine, ids, s) for ids, s in zip(prompts, scores, strict=True)]


@router.get("/v1/models")
async def models(request: Request) -> Any:
    state = ServerState.of(request)
    card = {
        "id": state.model_name,
        "object": "model",
        "created": state.created,
        "owned_by": "genloop",
        "root": str(state.model_path),
        "max_model_len": state.max_len,
    }
    return {"object": "list", "data": [card]}


@router.get("/v1/models/{name}")
async def model(request: Request, name: str) -> Any:
    state = ServerState.of(request)
    state.check_model(name)
    return (await models(request))["data"][0]


@router.post("/v1/embeddings")
async def embeddings(request: Request) -> Any:
    state = ServerState.ready(request)
    body = await parse(request, EmbeddingRequest)
    state.check_model(body.model)
    inputs = body.input if isinstance(body.input, list) and isinstance(body.input[0], str) else [body.input]
    batches = [_encode(state, x, chat=False) for x in inputs]  # type: ignore[arg-type]
    if any(not ids for ids in batches):
        raise APIError(400, "An input is empty: give at least one token of text.", param="input")
    await admit(request, batches, param="input")
    dim = state.engine.config.d_model
    if body.dimensions is not None and body.dimensions > dim:
        raise APIError(400, f"'dimensions' must be at most {dim} for this model.", param="dimensions")
    vectors = await asyncio.to_thread(state.engine.call, lambda: state.embed(batches, body.dimensions))
    data = []
    for i, vec in enumerate(vectors):
        value: Any = vec.tolist()
        if body.encoding_format == "base64":
            value = base64.b64encode(vec.numpy().astype("<f4").tobytes()).decode("ascii")
        data.append({"object": "embedding", "index": i, "embedding": value})
    tokens = sum(len(b) for b in batches)
    return {
        "object": "list",
        "data": data,
        "model": state.model_name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


@router.post("/tokenize")
async def tokenize(request: Request) -> Any:
    state = ServerState.ready(request)
    body = await parse(request, TokenizeRequest)
    if body.model is not None:
        state.check_model(body.model)
    tok = state.engine.tokenizer
    if body.messages is not None:
        chat = ChatCompletionRequest(model=state.model_name, messages=body.messages).chat()
        ids = _encode(state, chat, chat=True) if chat else []
    else:
        ids = tok.encode(body.prompt or "", add_special_tokens=body.add_special_tokens)
    return {"tokens": ids, "count": len(ids), "max_model_len": state.max_len}


@router.post("/detokenize")
async def detokenize(request: Request) -> Any:
    state = ServerState.ready(request)
    body = await parse(request, DetokenizeRequest)
    if body.model is not None:
        state.check_model(body.model)
    bad = [t for t in body.tokens if t >= state.engine.vocab_size]
    if bad:
        raise APIError(
            400,
            f"Token id {bad[0]} is outside the vocabulary (size {state.engine.vocab_size}).",
            param="tokens",
        )
    return {"prompt": state.engine.tokenizer.decode(body.tokens, skip_special_tokens=False)}


@router.get("/tokenizer_info")
async def tokenizer_info(request: Request) -> Any:
    """The tokenizer's special tokens and chat template, as vLLM serves them: harnesses such as lm-eval
    (`tokenizer_backend=remote`) tokenize through this server instead of fetching a tokenizer."""
    state = ServerState.ready(request)
    tok = state.engine.tokenizer
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tok.bos_token,
        "eos_token": tok.eos_token,
        "pad_token": tok.pad_token,
        "unk_token": tok.unk_token,
        "add_bos_token": tok.add_bos_token,
        "chat_template": tok.chat_template or None,
        "model_max_length": state.max_len,
        "vocab_size": tok.vocab_size,
    }


@router.get("/health")
async def health(request: Request) -> Any:
    state = ServerState.of(request)
    if state.load_error is not None:
        return JSONResponse({"status": "error", "error": state.load_error}, 503)
    if state.engine is None:
        return JSONResponse({"status": "loading"}, 503, headers={"Retry-After": "2"})
    return {"status": "ok", "model": state.model_name}
