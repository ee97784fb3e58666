"""The server application: OpenAI-compatible API, chat page, store and metrics in one FastAPI app.

`create_app` returns at once and loads the model in the background; /health says 503 until it is in.
A plain ASGI gate in front of every route checks API keys, caps body sizes (413 before a byte of an
oversized body is parsed), applies the per-client rate and concurrency limits (429 with Retry-After
before the body is read), tags each request with an X-Request-Id and counts requests by route and
status for /metrics.
"""

from __future__ import annotations

import hmac
import json
import uuid
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from genloop.serve import errors
from genloop.serve.config import LimitsConfig
from genloop.serve.errors import error_body
from genloop.serve.filter_events import CLIENT_ID, REQUEST_ID
from genloop.serve.limits import LIMITED_PATHS, address_id, key_id, record_limit
from genloop.serve.state import ServerState

OPEN_PATHS = ("/health", "/metrics", "/static/", "/favicon.ico")


class Gate:
    """Keys, body size, rate limits and request counting, as ASGI middleware (streams pass through)."""

    def __init__(self, app: Any, state: ServerState) -> None:
        self.app, self.state = app, state
        self.max_body = state.limits.max_request_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        status_seen = [0]
        request_id = f"req_{uuid.uuid4().hex[:24]}"
        id_header = (b"x-request-id", request_id.encode())

        async def counting_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status_seen[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), id_header]}
            await send(message)

        token = REQUEST_ID.set(request_id)
        try:
            await self._guarded(scope, receive, counting_send, path)
        finally:
            REQUEST_ID.reset(token)
            route = path if path.startswith(("/v1/", "/tokenize", "/detokenize", "/health")) else "other"
            if route.startswith("/v1/conversations/"):
                route = "/v1/conversations/{id}"
            self.state.metrics.requests.labels(route, str(status_seen[0])).inc()

    async def _guarded(self, scope: dict[str, Any], receive: Any, send: Any, path: str) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        guarded = self.state.api_keys and path != "/" and not path.startswith(OPEN_PATHS)
        if guarded and not self._authorized(headers):
            given = "an invalid API key" if self._key(headers) else "no API key"
            await _reply(
                send,
                401,
                f"You gave {given}. Send 'Authorization: Bearer KEY' or 'X-Api-Key: KEY'.",
                code="invalid_api_key",
            )
            return
        key, host = self._key(headers), (scope.get("client") or (None,))[0]
        client = key_id(key) if self.state.api_keys and key else address_id(host)
        token = CLIENT_ID.set(client)
        try:
            await self._limited(scope, receive, send, headers, path, client)
        finally:
            CLIENT_ID.reset(token)

    async def _limited(
        self, scope: dict[str, Any], receive: Any, send: Any, headers: dict[str, str], path: str, client: str
    ) -> None:
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await self._too_large(send, f"Content-Length {length[:20]}")
            return
        limited = scope.get("method") == "POST" and path in LIMITED_PATHS
        if limited and (refusal := self.state.limiter.enter(client)) is not None:
            await record_limit(self.state, refusal.limit, refusal.message)
            retry = str(refusal.retry_after_s).encode()
            await _reply(
                send, 429, refusal.message, code="rate_limit_exceeded", headers=[(b"retry-after", retry)]
            )
            return
        try:
            await self._receive_limited(scope, receive, send)
        finally:
            if limited:
                self.state.limiter.leave(client)

    async def _too_large(self, send: Any, detail: str) -> None:
        await record_limit(self.state, "max_request_bytes", f"{detail}, limit {self.max_body} bytes")
        await _reply(
            send, 413, f"The request body is over the {self.max_body} byte limit.", code="request_too_large"
        )

    async def _receive_limited(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Run the app; a body sent without Content-Length (chunked) is read here first, up to the limit,
        so that an oversized one is a 413 before the app sees a byte. (With a Content-Length the
        server already refuses a body longer than it says.)"""
        has_length = any(k.lower() == b"content-length" for k, _ in scope["headers"])
        if has_length or scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        parts: list[bytes] = []
        size, replay = 0, []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                replay.append(message)  # the client left: let the app see it
                break
            parts.append(message.get("body", b""))
            size += len(parts[-1])
            if size > self.max_body:
                await self._too_large(send, f"a streamed body of over {size} bytes")
                return
            if not message.get("more_body", False):
                replay.append({"type": "http.request", "body": b"".join(parts), "more_body": False})
                break

        async def replayed() -> dict[str, Any]:
            return replay.pop(0) if replay else await receive()

        await self.app(scope, replayed, send)

    @staticmethod
    def _key(headers: dict[str, str]) -> str:
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return headers.get("x-api-key", "").strip()

    def _authorized(self, headers: dict[str, str]) -> bool:
        key = self._key(headers).encode()
        return any(hmac.compare_digest(key, k.encode()) for k in self.state.api_keys)


async def _reply(
    send: Any, status: int, message: str, code: str | None = None, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    body = json.dumps(error_body(status, message, None, code)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _static_dir() -> Path:
    return Path(str(resources.files("genloop.serve") / "static"))


def create_app(
    model: str | Path,
    *,
    name: str | None = None,
    dtype: str = "auto",
    store_url: str | None = None,
    no_store: bool = False,
    api_keys: list[str] | None = None,
    max_queue: int = 256,
    max_body: int | None = None,
    max_batch: int = 32,
    max_seq_len: int = 2048,
    compile: bool = False,
    limits: LimitsConfig | None = None,
    postprocess: dict[str, Any] | str | None = None,
    load: bool = True,
) -> Any:
    """The ASGI app serving `model` (a registered name or a model directory). `max_body`, when given,
    replaces `limits.max_request_bytes`; `postprocess` is the pipeline's config (None: the default
    pipeline, "off": raw answers), applied by the engine to every answer and to prompts when asked."""
    from genloop.checkpoint import resolve
    from genloop.checkpoint.registry import metadata
    from genloop.serve.store import Store

    path = resolve(model)
    meta = metadata(path)
    version = str(meta.get("version") or meta.get("sha256", "")[:12] or "local")
    limits = limits or LimitsConfig()
    if max_body is not None:
        limits = limits.model_copy(update={"max_request_bytes": max_body})
    from genloop.postprocess import load_postprocess

    pipeline = None if postprocess == "off" else load_postprocess(postprocess)  # type: ignore[arg-type]
    if pipeline is not None and pipeline.is_noop():
        pipeline = None
    state = ServerState(
        model_name=name or path.name,
        model_path=path,
        model_version=version,
        store=None if no_store else Store(store_url),
        api_keys=frozenset(k for k in api_keys or [] if k),
        max_queue=max_queue,
        engine_options={
            "dtype": dtype,
            "max_batch": max_batch,
            "max_seq_len": max_seq_len,
            "compile": compile,
            "postprocess": pipeline,
        },
        limits=limits,
        postprocess_config=postprocess,
        pipeline=pipeline,
    )
    app = FastAPI(title="genloop", version="0.1.0", docs_url="/docs", redoc_url=None)
    app.state.genloop = state
    errors.install(app)

    from genloop.serve import admin_api, feedback_api, openai_api

    app.include_router(openai_api.router)
    app.include_router(feedback_api.router)
    app.include_router(admin_api.router)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    static = _static_dir()
    if (static / "index.html").is_file():
        app.mount("/static", StaticFiles(directory=static), name="static")

        @app.get("/", include_in_schema=False)
        async def page(request: Request) -> Any:
            return FileResponse(static / "index.html", headers={"Cache-Control": "no-cache"})

    if load:
        state.load()
    return Gate(app, state)
