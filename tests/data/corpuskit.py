"""A folder of the junk real note folders hold, for the data pipeline tests: distinct English
documents, exact and near duplicates, PII, binary files, invalid UTF-8, an empty file, a 50 MB
single-line file, symlink loops, HTML with boilerplate and a JSONL file with a broken line."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

LICENCES = Path("/usr/share/common-licenses")
SOURCES = ("GPL-3", "Apache-2.0", "MPL-2.0", "CC0-1.0", "Artistic", "BSD")


def _paragraphs() -> list[str]:
    """Real English prose that every Debian machine has (base-files), in paragraphs."""
    out = []
    for name in SOURCES:
        text = (LICENCES / name).read_text(encoding="utf-8")
        out += [" ".join(p.split()) for p in text.split("\n\n") if len(p.split()) >= 12]
    return out


PARAGRAPHS = _paragraphs()


class Prose:
    """Hands out consecutive, never-overlapping runs of real paragraphs of at least `words` words."""

    def __init__(self, start: int = 0) -> None:
        self.cursor = start

    def take(self, words: int) -> str:
        chosen: list[str] = []
        while sum(len(p.split()) for p in chosen) < words:
            if self.cursor >= len(PARAGRAPHS):
                raise ValueError("the test corpus ran out of distinct paragraphs")
            chosen.append(PARAGRAPHS[self.cursor])
            self.cursor += 1
        return "\n\n".join(chosen) + "\n"


PII = {
    "email": "alice.smith@example.com",
    "phone": "+44 20 7946 0958",
    "ip": "192.168.10.77",
    "credit_card": "4111 1111 1111 1111",
    "iban": "DE89 3704 0044 0532 0130 00",
    "secret": "AKIAIOSFODNN7EXAMPLE",
}


def make_junk_folder(root: Path, documents: int = 20) -> Path:
    prose = Prose()
    docs = root / "docs"
    docs.mkdir(parents=True)
    for i in range(documents):
        (docs / f"doc_{i:03d}.txt").write_text(f"Document number {i}.\n\n" + prose.take(300))
    text3 = (docs / "doc_003.txt").read_text()
    (docs / "copy_of_doc_003.txt").write_text(text3)  # exact copy
    (docs / "doc_003_shouting.md").write_text(text3.upper().replace(" ", "   "))  # same up to case/spaces
    near = root / "near"
    near.mkdir()
    original = prose.take(500)
    words = original.split(" ")
    words[len(words) // 2] = "NEARDUPLICATEMARKER"
    (near / "original.txt").write_text(original)
    (near / "edited.txt").write_text(" ".join(words))  # one word in 500 changed
    pii = root / "pii"
    pii.mkdir()
    lines = [prose.take(120)]
    lines += [
        f"Please contact the office about item {k}: {v} is on file for the meeting." for k, v in PII.items()
    ]
    lines += ["A card that fails the Luhn check, 4111 1111 1111 1112, is only a number and stays."]
    (pii / "contacts.txt").write_text("\n".join(lines) + "\n" + prose.take(120))
    junk = root / "junk"
    junk.mkdir()
    (junk / "blob.txt").write_bytes(bytes(random.Random(1).randrange(256) for _ in range(4096)) + b"\0\0")
    (junk / "latin1.txt").write_bytes(("Caf\xe9 cr\xe8me br\xfbl\xe9e " * 40).encode("latin-1"))
    (junk / "empty.txt").write_bytes(b"")
    with (junk / "huge.txt").open("wb") as fh:  # one 50 MB line
        block = b"lorem ipsum " * 100_000
        for _ in range(50_000_000 // len(block) + 1):
            fh.write(block)
    os.symlink("loop_b.txt", junk / "loop_a.txt")
    os.symlink("loop_a.txt", junk / "loop_b.txt")
    os.symlink("..", junk / "parent_loop")
    web = root / "web"
    web.mkdir()
    article = "".join(f"<p>{p}</p>" for p in prose.take(250).split("\n\n"))
    (web / "page.html").write_text(
        "<html><head><title>News</title></head><body><nav>Home | About | Login | Subscribe</nav>"
        f"<article><h1>Travel notes</h1>{article}</article>"
        "<footer>Cookie policy. Copyright 2026. All rights reserved.</footer></body></html>"
    )
    with (root / "notes.jsonl").open("w") as fh:
        for i in range(5):
            fh.write(json.dumps({"text": prose.take(150), "id": i}) + "\n")
        fh.write("{not json\n")
    return root
