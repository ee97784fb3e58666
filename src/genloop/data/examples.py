"""`genloop data sft|preference`: fine-tuning sets as JSONL in TRL's field names, from recipes and
from the user's own files.

SFT records are `{"messages": [...]}` or `{"prompt", "completion"}`; preference records are
`{"prompt", "chosen", "rejected"}`. Files may name their fields differently (`--prompt-field
question`); records that do not fit are skipped and counted with the first line number, never
silently changed. A recipe's pairs become preference data by pairing each prompt's real answer
(chosen) with another prompt's answer (rejected): a mismatched-answer negative.
"""

from __future__ import annotations

import json
import os
import random
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from genloop.data.recipes import get_recipe
from genloop.errors import UserError

ROLES = ("system", "user", "assistant")
Kind = Literal["sft", "preference"]


@dataclass
class Fields:
    """Where a file keeps each part of a record (defaults: TRL's names)."""

    messages: str = "messages"
    prompt: str = "prompt"
    completion: str = "completion"
    chosen: str = "chosen"
    rejected: str = "rejected"


@dataclass
class Summary:
    written: int = 0
    per_source: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    first_bad: dict[str, str] = field(default_factory=dict)


def _messages(value: Any) -> list[dict[str, str]] | None:
    if not isinstance(value, list) or not value:
        return None
    out = []
    for m in value:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            return None
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _text_or_messages(value: Any) -> str | list[dict[str, str]] | None:
    if isinstance(value, str) and value.strip():
        return value
    return _messages(value)


def sft_record(raw: Any, fields: Fields, fmt: str) -> dict[str, Any] | None:
    """A valid SFT record in `fmt` ("messages" or "prompt"), or None when `raw` is not one."""
    if not isinstance(raw, dict):
        return None
    messages = _messages(raw.get(fields.messages))
    if messages is not None:
        if messages[-1]["role"] != "assistant":
            return None
        if fmt == "messages":
            return {"messages": messages}
        return {"prompt": messages[:-1], "completion": [messages[-1]]}
    prompt, completion = raw.get(fields.prompt), raw.get(fields.completion)
    if not (
        isinstance(prompt, str) and prompt.strip() and isinstance(completion, str) and completion.strip()
    ):
        return None
    if fmt == "messages":
        return {
            "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
        }
    return {"prompt": prompt, "completion": completion}


def preference_record(raw: Any, fields: Fields) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        return None
    record = {
        key: _text_or_messages(raw.get(getattr(fields, key))) for key in ("prompt", "chosen", "rejected")
    }
    if any(v is None for v in record.values()) or record["chosen"] == record["rejected"]:
        return None
    return record


def _file_records(path: Path, summary: Summary) -> Iterator[tuple[str, Any]]:
    if not path.is_file():
        raise UserError(f"input file not found: {path} (give a .jsonl file)")
    with path.open("rb") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{number}", json.loads(line)
            except ValueError:
                summary.skipped["not JSON"] += 1
                summary.first_bad.setdefault("not JSON", f"{path}:{number}")


def parse_recipe_arg(arg: str) -> tuple[str, dict[str, Any]]:
    """`name` or `name:key=value,key=value` (values parsed as YAML scalars)."""
    import yaml

    name, _, rest = arg.partition(":")
    options: dict[str, Any] = {}
    for pair in filter(None, rest.split(",")):
        key, sep, value = pair.partition("=")
        if not sep:
            raise UserError(f"recipe option '{pair}' in '{arg}' is not key=value (e.g. chitchat:limit=100)")
        options[key.strip()] = yaml.safe_load(value)
    return name.strip(), options


def _recipe_pairs(arg: str) -> tuple[str, Iterator[dict[str, Any]]]:
    name, options = parse_recipe_arg(arg)
    recipe = get_recipe(name)
    if not recipe.has_examples:
        raise UserError(f"recipe '{name}' gives text, not examples: use it in `genloop data build`")
    return name, (example.record for example in recipe.examples(**options))


def build_examples(
    kind: Kind,
    out: Path,
    recipes: list[str],
    files: list[Path],
    fields: Fields | None = None,
    fmt: str = "messages",
    limit: int | None = None,
    seed: int = 0,
) -> Summary:
    """Write the JSONL atomically; exact duplicates are dropped, bad records counted."""
    if not recipes and not files:
        raise UserError("nothing to read: give --recipe NAME and/or --file PATH")
    fields = fields or Fields()
    inputs = [_recipe_pairs(r) for r in recipes]  # unknown recipe: fail before writing
    for path in files:
        if not path.is_file():
            raise UserError(f"input file not found: {path} (give a .jsonl file)")
    summary = Summary()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    seen: set[str] = set()
    rng = random.Random(seed)
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            streams: list[tuple[str, Iterator[tuple[str, Any]], bool]] = [
                (name, ((name, r) for r in records), True) for name, records in inputs
            ]
            streams += [(str(p), _file_records(p, summary), False) for p in files]
            for name, stream, from_recipe in streams:
                pool: list[Any] = []
                for where, raw in stream:
                    if limit is not None and summary.per_source[name] >= limit:
                        break
                    if kind == "sft":
                        record = sft_record(raw, fields, fmt)
                    elif from_recipe:
                        record = _mismatched(raw, pool, rng)
                    else:
                        record = preference_record(raw, fields)
                    if record is None:
                        reason = "not a valid record" if not from_recipe else "no mismatched answer yet"
                        summary.skipped[reason] += 1
                        summary.first_bad.setdefault(reason, where)
                        continue
                    line = json.dumps(record, ensure_ascii=False)
                    if line in seen:
                        summary.skipped["duplicate"] += 1
                        continue
                    seen.add(line)
                    fh.write(line + "\n")
                    summary.written += 1
                    summary.per_source[name] += 1
            fh.flush()
            os.fsync(fh.fileno())
        if summary.written == 0:
            raise UserError(
                f"no valid {kind} records found; nothing written to {out} ({_skipped_text(summary)})"
            )
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return summary


def _mismatched(raw: dict[str, Any], pool: list[Any], rng: random.Random) -> dict[str, Any] | None:
    """A recipe pair as a preference: its own answer is chosen, an earlier pair's answer rejected."""
    record = sft_record(raw, Fields(), "prompt")
    if record is None:
        return None
    answer = record["completion"]
    pick = pool[rng.randrange(len(pool))] if pool else None
    if len(pool) < 1000:
        pool.append(answer)
    else:
        pool[rng.randrange(len(pool))] = answer
    if pick is None or pick == answer:
        return None
    return {"prompt": record["prompt"], "chosen": answer, "rejected": pick}


def _skipped_text(summary: Summary) -> str:
    if not summary.skipped:
        return "no records read"
    return "; ".join(
        f"{n} {reason}" + (f" (first at {summary.first_bad[reason]})" if reason in summary.first_bad else "")
        for reason, n in summary.skipped.items()
    )
