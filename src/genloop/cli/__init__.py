"""The `genloop` command: one sub-command per stage. Thin: parse, call the library, print.

Each sub-command lives in its own module here and exposes `register(subparsers)`; the module's
handlers receive the parsed `argparse.Namespace` and return an exit code. A `UserError` raised
anywhere below becomes one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from genloop import __version__
from genloop.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line plus a hint, exit code 2 (argparse's own code)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    from genloop.cli import (
        chat_cmd,
        compare_cmd,
        config_cmd,
        data_cmd,
        eval_cmd,
        feedback_cmd,
        filter_cmd,
        loop_cmd,
        model_cmd,
        models_cmd,
        preference_cmd,
        rl_cmd,
        serve_cmd,
        tokenizer_cmd,
        train_cmd,
    )

    parser = _Parser(
        prog="genloop",
        description="Own a generative language model end to end: curate, train, evaluate, serve, learn.",
    )
    parser.add_argument("--version", action="version", version=f"genloop {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in (
        models_cmd,
        chat_cmd,
        serve_cmd,
        data_cmd,
        train_cmd,
        preference_cmd,
        rl_cmd,
        model_cmd,
        tokenizer_cmd,
        eval_cmd,
        compare_cmd,
        config_cmd,
        feedback_cmd,
        filter_cmd,
        loop_cmd,
    ):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args) or 0)
    except UserError as exc:
        print(f"genloop: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("genloop: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
