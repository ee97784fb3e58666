"""`genloop chat`: talk to a model in the terminal, one message or a conversation.

Greedy decoding with a KV cache for now; the batching engine with every sampling control replaces
the loop underneath without changing this command.
"""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "chat",
        help="chat with a model in the terminal",
        description="Send MESSAGE and print the answer as it is generated; without MESSAGE, "
        "read one message per line from standard input (a conversation) until EOF.",
    )
    p.add_argument(
        "model", metavar="MODEL", help="a model directory or a registered name (see `genloop models list`)"
    )
    p.add_argument(
        "message", nargs="?", default=None, help="the user message; omit for a conversation on stdin"
    )
    p.add_argument("--system", default=None, help="system prompt (default: the chat template's own, if any)")
    p.add_argument(
        "--max-new-tokens", type=int, default=256, metavar="N", help="answer length cap (default 256)"
    )
    p.set_defaults(handler=_chat)


def _chat(args: argparse.Namespace) -> int:
    from genloop.checkpoint import load_model, resolve
    from genloop.errors import UserError
    from genloop.generate import TextStream, stream_greedy
    from genloop.preprocess import Tokenizer

    if args.max_new_tokens < 1:
        raise UserError("--max-new-tokens must be at least 1")
    path = resolve(args.model)
    if not (path / "tokenizer.json").is_file():
        raise UserError(
            f"{path} has no tokenizer.json, so it cannot chat; bundle one with `genloop model init "
            "... --tokenizer DIR` or import a model that has one"
        )
    tokenizer = Tokenizer.load(path)
    model = load_model(path)
    if model.config.arch != "decoder":
        raise UserError(f"{path} is an {model.config.arch} model; chat needs a decoder-only model")
    stop = {i for i in (tokenizer.eos_token_id, tokenizer.token_to_id("<|im_end|>")) if i is not None}
    messages = [{"role": "system", "content": args.system}] if args.system else []
    interactive = args.message is None
    lines = sys.stdin if interactive else [args.message]
    for line in lines:
        text = line.rstrip("\n")
        if not text.strip():
            continue
        messages.append({"role": "user", "content": text})
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        stream = TextStream(lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
        for token in stream_greedy(model, list(prompt), args.max_new_tokens, stop):
            print(stream.push(token), end="", flush=True)
        print()
        messages.append(
            {"role": "assistant", "content": tokenizer.decode(stream.ids, skip_special_tokens=True)}
        )
    return 0
