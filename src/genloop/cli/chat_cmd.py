"""`genloop generate` (one completion, exactly the generated text on stdout) and `genloop chat`
(a streaming terminal conversation with history, /reset and /system)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model", metavar="MODEL", help="a model directory or a registered name (`genloop models list`)"
    )
    p.add_argument(
        "--max-tokens", type=int, default=256, metavar="N", help="most tokens to generate (default 256)"
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        metavar="T",
        help="sampling temperature; 0 (default) is greedy",
    )
    p.add_argument(
        "--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling mass, (0, 1] (default 1)"
    )
    p.add_argument(
        "--top-k", type=int, default=0, metavar="K", help="sample among the K likeliest tokens (0 = off)"
    )
    p.add_argument(
        "--min-p", type=float, default=0.0, metavar="P", help="drop tokens below P x the top probability"
    )
    p.add_argument(
        "--repetition-penalty",
        type=float,
        default=1.0,
        metavar="R",
        help="> 1 discourages repeating earlier tokens (default 1)",
    )
    p.add_argument(
        "--seed", type=int, default=None, metavar="S", help="random seed: the same seed gives the same text"
    )
    p.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="TEXT",
        help="stop before this text (repeatable); it is not printed",
    )
    p.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "int8", "int4"],
        default="auto",
        help="weights: auto (the fastest measured here), float32, bfloat16, or weight-only int8/int4",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="run each decode step as one torch.compile graph: faster tokens after a compile of about "
        "a minute per batch shape (cached on disk under GENLOOP_HOME)",
    )


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    g = sub.add_parser(
        "generate",
        help="complete a prompt; prints only the generated text",
        description="Generate a completion of PROMPT and print exactly the generated text on "
        "stdout. Raw completion with the model's BOS policy, stopping at EOS; "
        "--chat wraps PROMPT in the chat template as a user message.",
    )
    _sampling_flags(g)
    g.add_argument("prompt", metavar="PROMPT", help="the prompt text; '-' reads standard input")
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    g.add_argument("--system", default=None, help="system prompt (with --chat)")
    _postprocess_flag(g, "off")
    g.set_defaults(handler=_generate)

    c = sub.add_parser(
        "chat",
        help="chat with a model in the terminal",
        description="A streaming conversation. Type a message and press Enter; /reset clears "
        "the history, /system TEXT sets the system prompt, /exit or EOF ends. With "
        "MESSAGE, answer that one message and exit.",
    )
    _sampling_flags(c)
    c.add_argument("message", nargs="?", default=None, help="answer this one message and exit")
    c.add_argument("--system", default=None, help="system prompt (default: the chat template's own, if any)")
    _postprocess_flag(c, "default")
    c.set_defaults(handler=_chat)


def _postprocess_flag(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument(
        "--postprocess",
        default=default,
        metavar="default|off|FILE",
        help="formatting, filters and PII redaction of the answer: the default pipeline, none, or a "
        f"YAML file with a `postprocess:` section like `genloop serve --config` takes (default {default})",
    )


def _params(args: argparse.Namespace) -> Any:
    from genloop.generate import SamplingParams

    return SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        stop=list(args.stop),
    )


def _engine(args: argparse.Namespace) -> Any:
    from genloop.checkpoint import resolve
    from genloop.errors import UserError
    from genloop.generate import Engine

    path = resolve(args.model)
    if not (path / "tokenizer.json").is_file():
        raise UserError(
            f"{path} has no tokenizer.json, so it cannot generate text; bundle one with "
            "`genloop model init ... --tokenizer DIR` or import a model that has one"
        )
    from genloop.postprocess.loading import pipeline_from

    pipeline = pipeline_from(args.postprocess)
    try:
        return Engine(path, dtype=args.dtype, max_batch=4, postprocess=pipeline, compile=args.compile)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _run(engine: Any, prompt: Any, params: Any) -> str:
    """Stream one completion to stdout; returns its text."""
    from genloop.errors import UserError

    def show(delta: Any) -> None:
        sys.stdout.write(delta.text)
        sys.stdout.flush()

    try:
        request = engine.submit(prompt, params, on_delta=show)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    request.done.wait()
    if request.error is not None:
        raise request.error
    return request.output().text


def _generate(args: argparse.Namespace) -> int:
    try:
        params = _params(args)
    except ValueError as exc:
        from genloop.errors import UserError

        raise UserError(str(exc)) from None
    engine = _engine(args)
    text = sys.stdin.read() if args.prompt == "-" else args.prompt
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": text}
    ]
    _run(engine, messages if args.chat else text, params)
    if args.chat:
        sys.stdout.write("\n")
    engine.close()
    return 0


def _chat(args: argparse.Namespace) -> int:
    params = _params(args)
    engine = _engine(args)
    system = args.system
    history: list[dict[str, str]] = []
    lines = [args.message] if args.message is not None else sys.stdin
    interactive = args.message is None and sys.stdin.isatty()
    if interactive:
        print(
            "chat: /reset clears the history, /system TEXT sets the system prompt, /exit quits",
            file=sys.stderr,
        )
    for line in lines:
        text = line.rstrip("\n")
        if text.strip() in ("/exit", "/quit"):
            break
        if text.strip() == "/reset":
            history.clear()
            print("(history cleared)", file=sys.stderr)
            continue
        if text.startswith("/system"):
            system = text.removeprefix("/system").strip() or None
            history.clear()
            print(f"(system prompt {'set' if system else 'cleared'}; history cleared)", file=sys.stderr)
            continue
        if not text.strip():
            continue
        history.append({"role": "user", "content": text})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        answer = _run(engine, messages, params)
        print()
        history.append({"role": "assistant", "content": answer})
    engine.close()
    return 0
