"""`genloop serve`: the OpenAI-compatible API and the chat page over one model, on uvicorn."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "serve",
        help="serve a model: OpenAI-compatible API + chat page",
        description="Serve MODEL over HTTP: /v1/chat/completions, /v1/completions, /v1/embeddings, "
        "/v1/models, /v1/feedback, /metrics, and a chat page at /. Every chat exchange and its feedback "
        "is kept in the store (GENLOOP_HOME/genloop.db unless --db says otherwise).",
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        nargs="?",
        default="smollm2-135m-instruct",
        help="a model directory or a registered name (default smollm2-135m-instruct)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    p.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY",
        help="require this key (repeatable; also GENLOOP_API_KEY); /health and the page stay open",
    )
    p.add_argument("--name", metavar="NAME", help="model name clients use (default: the directory name)")
    p.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "int8", "int4"],
        default="auto",
        help="weights: auto (int4 on CPU, the fastest measured here), float32, bfloat16, int8, int4",
    )
    p.add_argument("--db", metavar="URL", help="store: an SQLAlchemy URL or an SQLite file path")
    p.add_argument("--no-store", action="store_true", help="keep no conversations or feedback")
    p.add_argument(
        "--max-batch", type=int, default=32, metavar="N", help="sequences decoded together (default 32)"
    )
    p.add_argument(
        "--max-seq-len", type=int, default=2048, metavar="N", help="context per sequence (default 2048)"
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=256,
        metavar="N",
        help="waiting sequences before new requests get 429 (default 256)",
    )
    p.add_argument(
        "--max-body-mb", type=float, default=4.0, metavar="MB", help="largest request body (default 4 MB)"
    )
    p.add_argument(
        "--log-level",
        choices=["critical", "error", "warning", "info", "debug"],
        default="warning",
        help="uvicorn's log level (default warning)",
    )
    p.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from genloop.errors import UserError

    for flag, value in (
        ("--port", args.port),
        ("--max-batch", args.max_batch),
        ("--max-queue", args.max_queue),
    ):
        if value < (0 if flag == "--port" else 1) or (flag == "--port" and value > 65535):
            raise UserError(f"{flag} {value} is out of range")
    if args.max_seq_len < 16 or args.max_body_mb <= 0:
        raise UserError("--max-seq-len must be at least 16 and --max-body-mb positive")
    _check_port(args.host, args.port)
    import uvicorn

    from genloop.serve.app import create_app

    keys = list(args.api_key) + [k for k in os.environ.get("GENLOOP_API_KEY", "").split(",") if k]
    app: Any = create_app(
        args.model,
        name=args.name,
        dtype=args.dtype,
        store_url=args.db,
        no_store=args.no_store,
        api_keys=keys,
        max_queue=args.max_queue,
        max_body=int(args.max_body_mb * 1024 * 1024),
        max_batch=args.max_batch,
        max_seq_len=args.max_seq_len,
    )
    state = app.state
    host = f"[{args.host}]" if ":" in args.host else args.host
    base = f"http://{host}:{args.port}"
    auth = f" -H 'Authorization: Bearer {keys[0]}'" if keys else ""
    print(f"genloop serving {state.model_name} ({args.dtype}) — loading the model in the background")
    print(f"  chat page:  {base}/")
    print(
        f"  API:        curl {base}/v1/chat/completions -H 'Content-Type: application/json'{auth} "
        f'-d \'{{"model": "{state.model_name}", "messages": [{{"role": "user", "content": "Hi"}}]}}\''
    )
    if state.store is not None:
        from genloop.serve.store import safe_url

        print(f"  store:      {safe_url(state.store.url)}")
    sys.stdout.flush()
    try:
        uvicorn.run(
            app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5
        )
    finally:
        if state.engine is not None:
            state.engine.close()
        if state.store is not None:
            state.store.close()
    return 0


def _check_port(host: str, port: int) -> None:
    """Fail with one line before loading anything if the address is taken or invalid."""
    import socket

    from genloop.errors import UserError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(infos[0][4])
    except OSError as exc:
        raise UserError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port/--host"
        ) from exc
