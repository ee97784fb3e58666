"""Debian as a corpus: package descriptions, their DDTP translations, and the `trans-de-en` dictionary.

All of it comes through apt, pointed at a private state folder in the recipe cache
(`recipes/debian-lists`): `apt-get update` there fetches the `Translation-en/de/fr` indexes this image
normally turns off, and `apt-get download` + `dpkg-deb -x` take a package apart without installing
it. The system's own apt lists, cache and dpkg status are never read or written.

Text rendering of a description follows Debian Policy 5.6.13: a line with one leading space joins the
paragraph it continues, ` .` separates paragraphs, and lines with two or more leading spaces are kept
verbatim. Lines that start a bullet (`* `, `- `, `+ `, `o `) also start a new line, since authors
mostly mean a list there even with a single leading space.
"""

from __future__ import annotations

import hashlib
import os
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from rich.console import Console

from genloop.data import heldout
from genloop.data.document import Document, Example
from genloop.data.fetch import Fetched, ensure, run, status
from genloop.errors import UserError

LISTS_UNIT = "debian-lists"
LANGUAGES = ("en", "de", "fr")
LANGUAGE_NAMES = {"en": "English", "de": "German", "fr": "French"}
DESCRIPTIONS_LICENCE = "Debian package descriptions (various DFSG licences)"
SUMMARY_INSTRUCTION = "Summarize this software package description in one line:\n\n"
APT_FIX = "check the network and the apt sources in /etc/apt/sources.list.d, then run again"
_APT_CONF = """// genloop's private apt run: no hooks, no binary caches, nothing outside this folder
#clear APT::Update::Pre-Invoke;
#clear APT::Update::Post-Invoke;
#clear APT::Update::Post-Invoke-Success;
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
"""
_BULLET = re.compile(r"^([*+\-o]|\d+[.)])\s")


class Description(NamedTuple):
    """One package description: the synopsis line and the long description's paragraphs."""

    package: str
    md5: str
    synopsis: str
    paragraphs: list[str]

    @property
    def long(self) -> str:
        return "\n\n".join(self.paragraphs)


# ---------------------------------------------------------------- apt in a private folder


def apt_options(root: Path) -> list[str]:
    """Options that point apt at `root` only; Languages turns the DDTP translations back on."""
    settings: dict[str, object] = {
        "Dir::State": root / "state",
        "Dir::State::Lists": root / "lists",
        "Dir::State::Status": root / "status",
        "Dir::Cache": root / "cache",
        "Acquire::Languages": ",".join(LANGUAGES),
        "Acquire::GzipIndexes": "false",  # plain text lists: parsed with no decompressor
    }
    if os.geteuid() == 0:  # root: do not hand downloads to `_apt`, which cannot write to our cache
        settings["APT::Sandbox::User"] = "root"
    opts = ["-q", "-c", str(root / "apt.conf")]
    for key, value in settings.items():
        opts += ["-o", f"{key}={value}"]
    return opts


def _fetch_lists(stage: Path, out: Console | None) -> dict[str, str]:
    for sub in ("lists/partial", "cache/archives/partial", "state"):
        (stage / sub).mkdir(parents=True)
    (stage / "status").touch()
    (stage / "apt.conf").write_text(_APT_CONF, encoding="utf-8")
    message = "apt-get update into a private lists folder (descriptions in en, de, fr)"
    with status(out, message):
        run(["apt-get", *apt_options(stage), "update"], "apt-get update", "Debian's package lists", APT_FIX)
    if not any((stage / "lists").glob("*_Translation-en")):
        raise UserError(
            "`apt-get update` fetched no Translation-en index; the apt sources must name a Debian or "
            "Ubuntu mirror that serves i18n/Translation-* files"
        )
    return _releases(stage / "lists")


def _releases(lists: Path) -> dict[str, str]:
    """Which archive snapshot the lists are: codename -> 'version, date' from each (In)Release file."""
    out: dict[str, str] = {}
    for path in sorted(lists.glob("*Release")):
        head = path.read_text(encoding="utf-8", errors="replace")[:8000]
        found = {k: re.search(rf"^{k}: *(.*)$", head, re.M) for k in ("Codename", "Suite", "Version", "Date")}
        values = {k: m.group(1).strip() for k, m in found.items() if m}
        name = values.get("Codename") or values.get("Suite") or path.name
        out[name] = ", ".join(values[k] for k in ("Version", "Date") if k in values)
    return out


def lists(progress: bool = False) -> Fetched:
    """The private apt state, with `Translation-{en,de,fr}` lists; fetched on first use."""
    return ensure(LISTS_UNIT, _fetch_lists, progress)


def download_deb(package: str, into: Path, out: Console | None = None, apt_root: Path | None = None) -> Path:
    """`apt-get download PACKAGE` into `into`, using the private lists; returns the .deb file."""
    root = apt_root or lists(out is not None).path
    with status(out, f"apt-get download {package}"):
        cmd = ["apt-get", *apt_options(root), "download", package]
        run(cmd, "apt-get download", f"Debian package {package}", APT_FIX, cwd=into)
    debs = sorted(into.glob(f"{package}_*.deb"))
    if not debs:
        raise UserError(f"`apt-get download {package}` saved no .deb in {into}; {APT_FIX}")
    return debs[0]


def unpack_deb(deb: Path, into: Path) -> str:
    """`dpkg-deb -x` (no maintainer scripts run, nothing installed); returns the package version."""
    run(["dpkg-deb", "-x", str(deb), str(into)], "dpkg-deb -x", deb.name, "the .deb may be damaged")
    return run(["dpkg-deb", "-f", str(deb), "Version"], "dpkg-deb -f", deb.name, "check the .deb").strip()


# ---------------------------------------------------------------- Translation-* files


def paragraphs(path: Path) -> Iterator[dict[str, list[str]]]:
    """deb822 paragraphs, streamed: field -> [first line, continuation lines (raw, leading space kept)]."""
    fields: dict[str, list[str]] = {}
    current: list[str] | None = None
    with path.open(encoding="utf-8", errors="replace") as fh:
        for raw in fh:
            line = raw.rstrip("\n")
            if not line.strip():
                if fields:
                    yield fields
                fields, current = {}, None
            elif line[0] in " \t":
                if current is not None:
                    current.append(line)
            else:
                key, _, value = line.partition(":")
                current = fields[key] = [value.strip()]
    if fields:
        yield fields


def render(lines: list[str]) -> list[str]:
    """A long description's continuation lines as plain paragraphs (see the module docstring)."""
    out: list[str] = []
    para: list[str] = []
    joinable = False  # may the next wrapped line continue the last one?

    def flush() -> None:
        if para:
            out.append(textwrap.dedent("\n".join(para)).strip("\n"))
            para.clear()

    for line in lines:
        body = line[1:] if line.startswith(" ") else line.lstrip("\t")
        if body.strip() == ".":
            flush()
            joinable = False
        elif body[:1] in (" ", "\t"):
            para.append(body.rstrip())
            joinable = False
        elif joinable and not _BULLET.match(body):
            para[-1] += " " + body.strip()
        else:
            para.append(body.strip())
            joinable = True
    flush()
    return [p for p in out if p.strip()]


def descriptions(root: Path, language: str = "en") -> Iterator[Description]:
    """Each distinct description (by Description-md5) in the lists, in file order; first package wins."""
    seen: set[str] = set()
    for path in sorted((root / "lists").glob(f"*_Translation-{language}")):
        for fields in paragraphs(path):
            md5 = (fields.get("Description-md5") or [""])[0]
            text = fields.get(f"Description-{language}")
            if not md5 or text is None or md5 in seen:
                continue
            seen.add(md5)
            yield Description(fields["Package"][0], md5, text[0], render(text[1:]))


# ---------------------------------------------------------------- what the recipes yield


def description_documents(root: Path, synopsis: bool) -> Iterator[Document]:
    """One document per distinct long description; with `synopsis`, the one-line synopsis comes first."""
    for d in descriptions(root):
        if not d.paragraphs:
            continue
        text = f"{d.synopsis}\n\n{d.long}" if synopsis else d.long
        meta = {"package": d.package, "description_md5": d.md5, "synopsis": d.synopsis}
        origin = f"debian:Translation-en:{d.package}"
        yield Document(text, "debian-descriptions", origin, DESCRIPTIONS_LICENCE, meta)


def summary_examples(root: Path) -> Iterator[Example]:
    """Long description -> synopsis; each long description once (many packages share boilerplate)."""
    seen: set[bytes] = set()
    for d in descriptions(root):
        long = d.long
        key = hashlib.blake2b(long.encode(), digest_size=16).digest()
        if not long or key in seen or len(long.split()) <= len(d.synopsis.split()):
            continue
        seen.add(key)
        record = {"prompt": SUMMARY_INSTRUCTION + long, "completion": d.synopsis}
        yield Example(record, "debian-summaries", f"debian:Translation-en:{d.package}", DESCRIPTIONS_LICENCE)


def translation_examples(root: Path, language: str, unit: str) -> Iterator[Example]:
    """English -> `language` pairs joined on Description-md5, so only up-to-date translations count.

    With unit="paragraph", the synopsis and each paragraph form their own pair when both sides have
    the same number of paragraphs (almost all do); otherwise, and with unit="description", the whole
    description is one pair. Identical pairs (shared boilerplate) are kept once.
    """
    if not any((root / "lists").glob(f"*_Translation-{language}")):
        raise UserError(
            f"the apt lists in {root} hold no Translation-{language}; the mirror does not serve it, "
            f"so ddtp-translations cannot pair English with {LANGUAGE_NAMES[language]}"
        )
    target = {d.md5: d for d in descriptions(root, language)}
    instruction = f"Translate from English to {LANGUAGE_NAMES[language]}:\n\n"
    seen: set[bytes] = set()
    for en in descriptions(root, "en"):
        other = target.get(en.md5)
        if other is None:
            continue
        src, dst = [en.synopsis, *en.paragraphs], [other.synopsis, *other.paragraphs]
        pairs = list(zip(src, dst, strict=True)) if unit == "paragraph" and len(src) == len(dst) else []
        if not pairs:
            pairs = [("\n\n".join(src), "\n\n".join(dst))]
        for i, (a, b) in enumerate(pairs):
            key = hashlib.blake2b(f"{a}\0{b}".encode(), digest_size=16).digest()
            if key in seen or not a.strip() or not b.strip():
                continue
            seen.add(key)
            origin = f"debian:Translation-{language}:{en.package}" + (f"#{i}" if len(pairs) > 1 else "")
            record = {"prompt": instruction + a, "completion": b}
            yield Example(record, "ddtp-translations", origin, DESCRIPTIONS_LICENCE)


# ---------------------------------------------------------------- trans-de-en (the Ding dictionary)

TRANS_UNIT = "trans-de-en"
TRANS_HELDOUT = 0.01  # share of sentence pairs held out for evaluation (the translation task)
DING_FILE = "root/usr/share/trans/de-en"
COPYRIGHT_FILE = "root/usr/share/doc/trans-de-en/copyright"
_ANNOTATION = re.compile(r"\s*(\{[^{}]*\}|\[[^\[\]]*\]|<[^<>]*>)")  # {n} [coll.] <variant spelling>
_ALTERNATIVE = re.compile(r"(?<=[.!?])\s*;\s+")  # "Mir ist warm.; Ich friere." -> two alternatives
_OPENING = "\"'„“‚‘»«("
_ENDINGS = re.compile(r"[.!?…]")
_CLOSING = "\"'“”’‘»«)"


def _fetch_trans(stage: Path, out: Console | None) -> dict[str, str]:
    apt = lists(out is not None)
    deb = download_deb("trans-de-en", stage, out, apt.path)
    return {"trans-de-en": unpack_deb(deb, stage / "root"), **apt.packages}


def trans(progress: bool = False) -> Fetched:
    """The unpacked `trans-de-en` package (its Ding dictionary file and copyright)."""
    return ensure(TRANS_UNIT, _fetch_trans, progress)


def copyright_licence(path: Path, default: str) -> str:
    """The `License:` of the `Files: *` paragraph of a machine-readable debian/copyright file."""
    if path.is_file():
        for fields in paragraphs(path):
            if fields.get("Files", [""])[0] == "*" and fields.get("License"):
                return fields["License"][0]
    return default


def _sentence(text: str) -> str | None:
    """The first alternative of a Ding sub-entry, cleaned, if it is a whole sentence (>= 3 words)."""
    if text.count(" ") < 2 or not _ENDINGS.search(text):  # cheap: most sub-entries are words
        return None
    first = _ALTERNATIVE.split(text.strip(), maxsplit=1)[0]
    clean = " ".join(_ANNOTATION.sub("", first).split())
    head, tail = clean.lstrip(_OPENING)[:1], clean.rstrip(_CLOSING)[-1:]
    if len(clean.split()) >= 3 and (head.isupper() or head.isdigit()) and tail and tail in ".!?…":
        return clean
    return None


def ding_sentences(path: Path) -> Iterator[tuple[int, str, str]]:
    """(line number, German, English) example sentences: aligned `|` sub-entries that are sentences.

    A Ding line is `German :: English`; each side lists the same sub-entries separated by ` | `, and
    each sub-entry lists alternatives separated by `;`. Words and phrases are skipped: only pairs whose
    two sides are both sentences are kept, each once.
    """
    seen: set[tuple[str, str]] = set()
    with path.open(encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.startswith("#") or " :: " not in line:
                continue
            de_side, en_side = line.rstrip("\n").split(" :: ", 1)
            de_parts, en_parts = de_side.split(" | "), en_side.split(" | ")
            if len(de_parts) != len(en_parts):
                continue
            for de_raw, en_raw in zip(de_parts, en_parts, strict=True):
                de = _sentence(de_raw)
                en = _sentence(en_raw) if de else None
                if de and en and (de, en) not in seen:
                    seen.add((de, en))
                    yield lineno, de, en


def trans_examples(fetched: Fetched, direction: str) -> Iterator[Example]:
    """Example sentences as translation pairs, `direction` "en-de" (default) or "de-en"."""
    version = fetched.packages.get("trans-de-en", "?")
    licence = copyright_licence(fetched.path / COPYRIGHT_FILE, "GPL-2+")
    src, dst = direction.split("-")
    instruction = f"Translate from {LANGUAGE_NAMES[src]} to {LANGUAGE_NAMES[dst]}:\n\n"
    for lineno, de, en in ding_sentences(fetched.path / DING_FILE):
        pair = {"de": de, "en": en}
        origin = f"debian:trans-de-en={version}:usr/share/trans/de-en:{lineno}"
        record = {"prompt": instruction + pair[src], "completion": pair[dst]}
        yield Example(record, TRANS_UNIT, origin, licence)


def trans_documents(
    fetched: Fetched, direction: str, per_document: int = 100, split: str = "all"
) -> Iterator[Document]:
    """The same sentence pairs as bilingual text: `per_document` pairs a document, one pair a block;
    the pairs of `split` only (train leaves out those that evaluation holds out)."""
    version = fetched.packages.get("trans-de-en", "?")
    licence = copyright_licence(fetched.path / COPYRIGHT_FILE, "GPL-2+")
    src, dst = direction.split("-")
    block: list[tuple[int, str, str]] = []

    def emit() -> Document:
        text = "\n\n".join(f"{p[src]}\n{p[dst]}" for p in ({"de": de, "en": en} for _, de, en in block))
        origin = f"debian:trans-de-en={version}:usr/share/trans/de-en:{block[0][0]}-{block[-1][0]}"
        return Document(text, TRANS_UNIT, origin, licence, {"pairs": len(block), "direction": direction})

    for item in ding_sentences(fetched.path / DING_FILE):
        if not heldout.wanted(heldout.text_pair_key(item[1], item[2]), TRANS_HELDOUT, split):
            continue
        block.append(item)
        if len(block) == per_document:
            yield emit()
            block = []
    if block:
        yield emit()
