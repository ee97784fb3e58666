"""`genloop feedback export | list | stats`: what users said about the answers, as training data."""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from genloop.errors import UserError

if TYPE_CHECKING:
    from genloop.serve.store import Store

FORMATS = ("sft", "preference", "kto")
SINCE_FORMS = (
    "an ISO-8601 date or datetime (2024-05-01, 2024-05-01T12:00:00Z) or an age like 30m, 24h, 7d, 2w"
)
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*$", re.IGNORECASE)
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "feedback",
        help="export, list and count the feedback users gave in `genloop serve`",
        description="The feedback store: ratings, corrections and picks between regenerated answers, "
        "exported as JSONL in TRL's conversational format for SFT, DPO and KTO.",
    )
    cmds = p.add_subparsers(dest="feedback_command", metavar="ACTION", required=True)
    db_help = "SQLAlchemy URL or SQLite file of the store (default $GENLOOP_HOME/genloop.db)"

    e = cmds.add_parser(
        "export",
        help="write feedback as JSONL training data (sft, preference or kto)",
        description="sft: corrected and upvoted answers as {messages}; preference: regenerate-and-pick "
        "and correction-vs-original as {prompt, chosen, rejected}; kto: thumbs up/down as "
        "{prompt, completion, label}. Loads with datasets.load_dataset('json', ...).",
    )
    e.add_argument("--format", choices=FORMATS, required=True, dest="fmt", help="which kind of rows to write")
    e.add_argument("--since", default=None, metavar="WHEN", help=f"only feedback given since {SINCE_FORMS}")
    e.add_argument("--out", default=None, metavar="FILE", help="output .jsonl file (default: stdout)")
    e.add_argument("--db", default=None, metavar="URL", help=db_help)
    e.add_argument(
        "--include-filtered",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="kto only, on by default: also write every answer a filter blocked or masked (since --since) "
        "as an undesirable example (label false), rated or not. In every format a filtered answer is "
        "never a good example, even upvoted (kto labels it false)",
    )
    e.set_defaults(handler=_export)

    ls = cmds.add_parser("list", help="recent feedback as a table", description="Show the newest feedback.")
    ls.add_argument("--limit", type=int, default=20, metavar="N", help="how many rows (default 20)")
    ls.add_argument("--db", default=None, metavar="URL", help=db_help)
    ls.set_defaults(handler=_list)

    st = cmds.add_parser(
        "stats", help="feedback counts by rating and kind", description="Count feedback by rating and kind."
    )
    st.add_argument("--db", default=None, metavar="URL", help=db_help)
    st.set_defaults(handler=_stats)


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """An ISO-8601 date/datetime (naive means UTC) or an age back from now: 30m, 24h, 7d, 2w."""
    now = now or datetime.now(UTC)
    if m := _AGE.match(value):
        try:
            return now - timedelta(**{_UNITS[m.group(2).lower()]: float(m.group(1))})
        except OverflowError:
            raise UserError(f"--since {value!r} reaches back before year 1: use {SINCE_FORMS}") from None
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise UserError(f"bad --since {value!r}: use {SINCE_FORMS}") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def open_store(db: str | None) -> Store:
    """Open an existing store; a read command never creates an empty database by mistake."""
    from genloop.serve.store import Store, default_url, sqlite_file

    url = (
        default_url()
        if db is None
        else (db if "://" in db else f"sqlite:///{Path(db).expanduser().resolve()}")
    )
    path = sqlite_file(url)
    if path is not None and not path.is_file():
        raise UserError(
            f"no feedback store at {path}: it is created by `genloop serve`; pass --db URL to use another"
        )
    return Store(url)


def _export(args: argparse.Namespace) -> int:
    from genloop.atomic import atomic_write_text

    since = parse_since(args.since) if args.since is not None else None
    out = Path(args.out) if args.out else None
    if out is not None and out.is_dir():
        raise UserError(f"--out {out} is a directory; give a file name such as {out / 'feedback.jsonl'}")
    with open_store(args.db) as store:
        rows = store.export(args.fmt, since, include_filtered=args.include_filtered)
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, text)
    window = f" since {since.isoformat(timespec='seconds')}" if since else ""
    noun = "example" if len(rows) == 1 else "examples"
    print(f"wrote {len(rows)} {args.fmt} {noun}{window} to {out or 'stdout'}", file=sys.stderr)
    return 0


def _list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    if args.limit < 1:
        raise UserError(f"--limit must be at least 1 (got {args.limit})")
    with open_store(args.db) as store:
        rows = store.recent_feedback(args.limit)
    if not rows:
        print("no feedback yet: rate answers in `genloop serve`'s chat page or through the API")
        return 0
    table = Table(box=None, header_style="bold")
    for col in ("WHEN (UTC)", "KIND", "RATING", "MODEL", "ANSWER", "NOTE"):
        table.add_column(col, overflow="ellipsis", no_wrap=True)
    for r in rows:
        rating = {1: "+1", -1: "-1"}.get(r["rating"], "")
        note = r["correction"] or r["comment"] or r["reason"] or ""
        table.add_row(
            r["created_at"][:19].replace("T", " "),
            r["kind"],
            rating,
            r["model"] or "",
            _snip(r["answer"]),
            _snip(note),
        )
    Console(width=max(100, Console().width)).print(table)
    return 0


def _stats(args: argparse.Namespace) -> int:
    with open_store(args.db) as store:
        counts, stats = store.counts(), store.feedback_stats()
    n_conv, n_msg = counts["conversations"], counts["messages"]
    print(
        f"{n_conv} conversation{'' if n_conv == 1 else 's'}, {n_msg} message{'' if n_msg == 1 else 's'}, "
        f"{counts['feedback']} feedback"
    )
    print("by rating: " + ", ".join(f"{k} {v}" for k, v in stats["rating"].items()))
    print("by kind:   " + ", ".join(f"{k} {v}" for k, v in stats["kind"].items()))
    return 0


def _snip(text: str, width: int = 48) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
