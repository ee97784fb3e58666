"""`genloop tokenizer train|encode|decode`: build a tokenizer from files and inspect what it does.

Encode and decode exist so a person can see, before spending GPU hours, how their text is split.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from genloop.config import TokenizerConfig, load_config
from genloop.errors import UserError
from genloop.preprocess import MB, Tokenizer


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `genloop tokenizer` and its sub-commands to the main parser."""
    parser = sub.add_parser("tokenizer", help="train, inspect and use a byte-level BPE tokenizer")

    def show_help(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(handler=show_help)
    commands = parser.add_subparsers(
        dest="tokenizer_command", metavar="SUBCOMMAND", parser_class=_intermixed(type(parser))
    )

    train = commands.add_parser(
        "train",
        help="train a tokenizer on text files and folders",
        description="Train byte-level BPE on files and folders (searched recursively for text, code "
        "and .jsonl files) and save it in Hugging Face's layout.",
    )
    train.add_argument(
        "inputs",
        nargs="+",
        metavar="PATH|KEY=VALUE",
        help="files or folders to read; KEY=VALUE items override tokenizer settings (e.g. min_frequency=3)",
    )
    train.add_argument("--out", required=True, type=Path, help="directory to write the tokenizer to")
    train.add_argument("--vocab-size", type=int, help="vocabulary size, special tokens included")
    train.add_argument("--min-frequency", type=int, help="ignore merges seen fewer times than this")
    train.add_argument("--config", type=Path, help="YAML file with tokenizer settings (TokenizerConfig)")
    train.add_argument(
        "--max-mb", type=float, help="stop reading after this many megabytes (1 MB = 10^6 bytes)"
    )
    train.set_defaults(handler=_train)

    encode = commands.add_parser("encode", help="show the token ids (and tokens) for a text")
    encode.add_argument("tokenizer", type=Path, help="tokenizer directory or tokenizer.json file")
    encode.add_argument("text", help="text to encode; '-' reads standard input")
    encode.add_argument("--ids-only", action="store_true", help="print only the ids, space-separated")
    encode.add_argument(
        "--no-special-tokens", action="store_true", help="do not add BOS even if the tokenizer adds it"
    )
    encode.set_defaults(handler=_encode)

    decode = commands.add_parser("decode", help="turn token ids back into text")
    decode.add_argument("tokenizer", type=Path, help="tokenizer directory or tokenizer.json file")
    decode.add_argument("ids", nargs="+", metavar="ID", help="token ids (spaces or commas between them)")
    decode.add_argument("--skip-special-tokens", action="store_true", help="leave special tokens out")
    decode.set_defaults(handler=_decode)


def _intermixed(base: type[argparse.ArgumentParser]) -> type[argparse.ArgumentParser]:
    """`base`, but positionals may follow options (`train DIR --out X min_frequency=3`)."""

    class Intermixed(base):  # type: ignore[valid-type,misc]
        _parsing = False

        def parse_known_args(  # type: ignore[override]
            self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
        ) -> tuple[argparse.Namespace, list[str]]:
            # Python 3.11/3.12's parse_known_intermixed_args calls parse_known_args itself.
            if self._parsing or self._subparsers is not None:
                return super().parse_known_args(args, namespace)
            self._parsing = True
            try:
                return self.parse_known_intermixed_args(args, namespace)
            finally:
                self._parsing = False

    return Intermixed


def _split_inputs(items: list[str]) -> tuple[list[str], list[str]]:
    """Paths and KEY=VALUE overrides share the positional list; an existing path always wins."""
    paths, overrides = [], []
    for item in items:
        is_override = "=" in item and re.match(r"^[A-Za-z_][\w.]*=", item) and not Path(item).exists()
        (overrides if is_override else paths).append(item)
    return paths, overrides


def _train(args: argparse.Namespace) -> int:
    paths, overrides = _split_inputs(args.inputs)
    if not paths:
        raise UserError("no input given: name at least one file or folder to train on")
    if args.vocab_size is not None:
        overrides.append(f"vocab_size={args.vocab_size}")
    if args.min_frequency is not None:
        overrides.append(f"min_frequency={args.min_frequency}")
    if args.max_mb is not None and args.max_mb <= 0:
        raise UserError(f"--max-mb must be positive, got {args.max_mb}")
    config = load_config(TokenizerConfig, args.config, overrides)
    max_bytes = int(args.max_mb * MB) if args.max_mb is not None else None
    tokenizer, stats = Tokenizer.train_files(paths, config, max_bytes=max_bytes, progress=sys.stderr.isatty())
    out = tokenizer.save(args.out)
    print(
        f"trained a tokenizer of {tokenizer.vocab_size} tokens on {stats.bytes_read / MB:.1f} MB "
        f"({stats.files_read} files) in {stats.seconds:.1f} s ({stats.mb_per_s:.2f} MB/s); saved to {out}"
    )
    if tokenizer.vocab_size < config.vocab_size:
        print(f"note: asked for {config.vocab_size} tokens; the text had too few repeated pairs for more")
    if stats.skipped:
        print(f"skipped {len(stats.skipped)} binary or non-UTF-8 files, e.g. {stats.skipped[0]}")
    return 0


def _encode(args: argparse.Namespace) -> int:
    tokenizer = Tokenizer.load(args.tokenizer)
    text = sys.stdin.read() if args.text == "-" else args.text
    ids = tokenizer.encode(text, add_special_tokens=not args.no_special_tokens)
    print(" ".join(map(str, ids)))
    if not args.ids_only:
        tokens = [tokenizer.id_to_token(i) for i in ids]
        print(f"{len(ids)} tokens: {json.dumps(tokens, ensure_ascii=False)}")
    return 0


def _decode(args: argparse.Namespace) -> int:
    tokenizer = Tokenizer.load(args.tokenizer)
    ids = []
    for raw in args.ids:
        for part in re.split(r"[\s,\[\]]+", raw):
            if not part:
                continue
            try:
                ids.append(int(part))
            except ValueError:
                raise UserError(f"token id '{part}' is not an integer") from None
    if not ids:
        raise UserError("no token ids given")
    print(tokenizer.decode(ids, skip_special_tokens=args.skip_special_tokens))
    return 0
