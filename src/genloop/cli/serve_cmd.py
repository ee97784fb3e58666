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
        "is kept in the store (GENLOOP_HOME/genloop.db unless --db says otherwise). Every option can also "
        "live in a YAML file (--config; see examples/serve/serve.yaml), with rate limits and the "
        "postprocess pipeline; a flag given on the command line wins over the file.",
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        nargs="?",
        default=None,
        help="a model directory or a registered name (default: the config's model, else "
        "smollm2-135m-instruct)",
    )
    p.add_argument(
        "--config", metavar="FILE", help="serve YAML: every option below plus limits: and postprocess:"
    )
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default 8000)")
    p.add_argument(
        "--api-key",
        action="append",
        default=None,
        metavar="KEY",
        help="require this key (repeatable; replaces the config's api_keys; GENLOOP_API_KEY adds more); "
        "/health and the page stay open",
    )
    p.add_argument("--name", metavar="NAME", help="model name clients use (default: the directory name)")
    p.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "int8", "int4"],
        help="weights: auto (int4 on CPU, the fastest measured here; the default), float32, bfloat16, int8, "
        "int4",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="run each decode step as one torch.compile graph: faster decoding after a compile of "
        "about a minute per batch shape on first use (cached on disk under GENLOOP_HOME)",
    )
    p.add_argument("--db", metavar="URL", help="store: an SQLAlchemy URL or an SQLite file path")
    p.add_argument(
        "--no-store",
        action="store_true",
        default=None,
        help="keep no conversations, feedback or filter events",
    )
    p.add_argument("--max-batch", type=int, metavar="N", help="sequences decoded together (default 32)")
    p.add_argument("--max-seq-len", type=int, metavar="N", help="context per sequence (default 2048)")
    p.add_argument(
        "--max-queue",
        type=int,
        metavar="N",
        help="waiting sequences before new requests get 429 (default 256)",
    )
    p.add_argument(
        "--max-body-mb",
        type=float,
        metavar="MB",
        help="largest request body (default 1 MB; limits.max_request_bytes in the config)",
    )
    p.add_argument(
        "--no-postprocess",
        action="store_true",
        default=None,
        help="send answers raw: no formatting, filters or PII redaction (the default pipeline, or the "
        "config's postprocess: section, is applied otherwise)",
    )
    p.add_argument(
        "--log-level",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn's log level (default warning)",
    )
    p.set_defaults(handler=_serve)


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    """The options given on the command line, as config keys (flags that were left out are absent)."""
    from genloop.errors import UserError

    given = {
        "model": args.model,
        "host": args.host,
        "port": args.port,
        "api_keys": args.api_key,
        "name": args.name,
        "dtype": args.dtype,
        "compile": args.compile,
        "db": args.db,
        "store": False if args.no_store else None,
        "max_batch": args.max_batch,
        "max_seq_len": args.max_seq_len,
        "max_queue": args.max_queue,
        "log_level": args.log_level,
        "postprocess": "off" if args.no_postprocess else None,
    }
    flags: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    if args.max_body_mb is not None:
        if not args.max_body_mb > 0:
            raise UserError(f"--max-body-mb {args.max_body_mb} is invalid: it must be positive")
        flags["limits"] = {"max_request_bytes": int(args.max_body_mb * 1024 * 1024)}
    return flags


def _serve(args: argparse.Namespace) -> int:
    from genloop.serve.config import load_serve_config, store_url

    cfg = load_serve_config(args.config, _flags(args))
    _check_port(cfg.host, cfg.port)
    import uvicorn

    from genloop.serve.app import create_app

    keys = list(cfg.api_keys) + [k for k in os.environ.get("GENLOOP_API_KEY", "").split(",") if k]
    app: Any = create_app(
        cfg.model,
        name=cfg.name,
        dtype=cfg.dtype,
        store_url=store_url(cfg.db),
        no_store=not cfg.store,
        api_keys=keys,
        max_queue=cfg.max_queue,
        max_batch=cfg.max_batch,
        max_seq_len=cfg.max_seq_len,
        compile=cfg.compile,
        limits=cfg.limits,
        postprocess=cfg.postprocess,
    )
    state = app.state
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    base = f"http://{host}:{cfg.port}"
    auth = f" -H 'Authorization: Bearer {keys[0]}'" if keys else ""
    print(f"genloop serving {state.model_name} ({cfg.dtype}) — loading the model in the background")
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
        uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level, timeout_graceful_shutdown=5)
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
