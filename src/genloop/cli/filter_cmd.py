"""`genloop filter check "text"`: which postprocessing rules fire on a text, and what comes out."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "filter",
        help="try the postprocessing rules (formatting, blocklists, regexes, PII) on a text",
        description="The formatting and filtering `genloop serve` applies to answers (and, with "
        "filter.inputs, to prompts), run on one text.",
    )
    cmds = p.add_subparsers(dest="filter_command", metavar="ACTION", required=True)
    c = cmds.add_parser(
        "check",
        help="show the rules that fire on TEXT and the processed text",
        description="Print one line per rule that fires (rule, action, detail; PII shows its "
        "placeholder, never the matched text), then the processed text, or the refusal when blocked. "
        "Exit code 0 either way.",
    )
    c.add_argument("text", help="the text to check; '-' reads it from standard input")
    c.add_argument(
        "--config",
        metavar="SERVE.yaml",
        help="a serve config whose `postprocess:` section to use (a file holding only that section "
        "works too); default: the built-in defaults",
    )
    c.add_argument(
        "--input",
        action="store_true",
        help="check TEXT as a prompt: the input-side filters only (blocklist, regex, PII, moderation), "
        "no formatting",
    )
    c.add_argument(
        "--truncated",
        action="store_true",
        help="treat TEXT as an answer cut by max_tokens (for format.trim_to_sentence)",
    )
    c.set_defaults(handler=_check)


def _check(args: argparse.Namespace) -> int:
    from genloop.postprocess import load_postprocess
    from genloop.postprocess.loading import read_section

    text = sys.stdin.read() if args.text == "-" else args.text
    pipeline = load_postprocess(read_section(args.config) if args.config else None)
    result = pipeline.check_input(text) if args.input else pipeline.process(text, truncated=args.truncated)
    if not result.events:
        print("no rule fired")
    for e in result.events:
        print(f"{e.rule}\t{e.action}\t{e.detail if e.detail is not None else '-'}")
    print("blocked: " + ("yes (finish_reason content_filter)" if result.blocked else "no"))
    print("---")
    print(result.text)
    return 0
