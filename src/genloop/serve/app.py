"""The server application: OpenAI-compatible API, chat page, store and metrics in one FastAPI app.

`create_app` returns at once and loads the model in the background; /health says 503 until it is in.
A plain ASGI gate in front of every route checks API keys, caps body sizes (413 before a byte of an
oversized body is parsed) and counts requests by route and status for /metrics.
"""

from __future__ import annotations

import hmac
import json
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from genloop.serve import errors
from genloop.serve.errors import error_body
from genloop.serve.state import ServerState

DEFAULT_MAX_BODY = 4 * 1024 * 1024
OPEN_PATHS = ("/health", "/metrics", "/static/", "/favicon.ico")


class Gate:
    """Keys, body size and request counting, as ASGI middleware (streams pass through untouched)."""

    def __init__(self, app: Any, state: ServerState, max_body: int) -> None:
        self.app, self.state, self.max_body = app, state, max_body

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        status_seen = [0]

        async def counting_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status_seen[0] = message["status"]
            await send(message)

        try:
            await self._guarded(scope, receive, counting_send, path)
        finally:
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
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await _reply(
                send,
                413,
                f"The request body is over the {self.max_body} byte limit.",
                code="request_too_large",
            )
            return
        received = [0]
        too_big = [False]

        async def limited_receive() -> dict[str, Any]:
            message = await receive()
            if message["type"] == "http.request":
                received[0] += len(message.get("body", b""))
                if received[0] > self.max_body:
                    too_big[0] = True
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            await _reply(
                send,
                413,
                f"The request body is over the {self.max_body} byte limit.",
                code="request_too_large",
            )

    @staticmethod
    def _key(headers: dict[str, str]) -> str:
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return headers.get("x-api-key", "").strip()

    def _authorized(self, headers: dict[str, str]) -> bool:
        key = self._key(headers).encode()
        return any(hmac.compare_digest(key, k.encode()) for k in self.state.api_keys)


class _BodyTooLarge(Exception):
    pass


async def _reply(send: Any, status: int, message: str, code: str | None = None) -> None:
    body = json.dumps(error_body(status, message, None, code)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
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
    max_body: int = DEFAULT_MAX_BODY,
    max_batch: int = 32,
    max_seq_len: int = 2048,
    load: bool = True,
) -> Any:
    """The ASGI app serving `model` (a registered name or a model directory)."""
    from genloop.checkpoint import resolve
    from genloop.checkpoint.registry import metadata
    from genloop.serve.store import Store

    path = resolve(model)
    meta = metadata(path)
    version = str(meta.get("version") or meta.get("sha256", "")[:12] or "local")
    state = ServerState(
        model_name=name or path.name,
        model_path=path,
        model_version=version,
        store=None if no_store else Store(store_url),
        api_keys=frozenset(k for k in api_keys or [] if k),
        max_queue=max_queue,
        engine_options={"dtype": dtype, "max_batch": max_batch, "max_seq_len": max_seq_len},
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
    return Gate(app, state, max_body)
