"""Word and phrase blocklists, on word boundaries and leetspeak-aware.

Variants caught (with `leetspeak` on), for each banned word:
- case (`BaD`), and digit/symbol substitutions from `LEET` (`b4d`, `@ss`, `$h1t`);
- repeated letters (`baaad`);
- ONE separator character, the same one between every letter (`b.a.d`, `b a d`, `b-4-d`, `b_a_d`);
- a phrase's words separated by 1-3 non-letter characters (`kill  yourself`, `kill-yourself`).
Not caught: mixed separators (`b.a d`), letters inside a longer word (a banned `ass` does not hit
`class` nor `asses`: list inflections you want), homoglyphs from other scripts.

Each entry compiles to a regex, plus a "prefix" regex: whatever could still become a match if more
text came. A stream holds back exactly the tail that matches a prefix regex, nothing more.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from genloop.errors import UserError

LEET: dict[str, str] = {
    "a": "a4@",
    "b": "b8",
    "c": "c(",
    "e": "e3",
    "g": "g96",
    "i": "i1!|",
    "l": "l1|",
    "o": "o0",
    "s": "s5$",
    "t": "t7+",
    "z": "z2",
}
_SEPARATORS = r"[ ._*\-]"
_BEFORE = r"(?<![^\W_])"  # no letter or digit right before
_AFTER = r"(?![^\W_])"


def read_blocklists(words: Iterable[str], files: Iterable[str]) -> list[str]:
    """Entries from the config and from files (one a line, '#' comments), lower-cased, deduplicated."""
    entries = [w for w in words]
    for name in files:
        path = Path(name).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise UserError(
                f"cannot read blocklist file {str(path)!r}: {exc.strerror}; fix filter.blocklist_files"
            ) from None
        entries.extend(line.split("#", 1)[0] for line in lines)
    seen: dict[str, None] = {}
    for entry in entries:
        words_ = entry.lower().split()
        if words_:
            seen[" ".join(words_)] = None
    return list(seen)


def _letter(ch: str, leet: bool) -> str:
    variants = LEET.get(ch, ch) if leet else ch
    return "[" + "".join(re.escape(v) for v in variants) + "]" + ("+" if leet and ch.isalpha() else "")


def _word_elements(word: str, leet: bool, group: str) -> list[str]:
    """The elements of one word: letter, separator, letter, ... The first separator is captured
    and repeated, so `b.a.d` matches but `b.a d` does not."""
    elements: list[str] = []
    for i, ch in enumerate(word):
        if i and leet:
            elements.append(f"(?P<{group}>{_SEPARATORS}?)" if i == 1 else f"(?P={group})")
        elements.append(_letter(ch, leet))
    return elements


def _elements(entry: str, leet: bool, index: int) -> list[str]:
    elements: list[str] = []
    for w, word in enumerate(entry.split(" ")):
        if w:
            elements.append(r"[\W_]{1,3}")
        elements.extend(_word_elements(word, leet, f"s{index}_{w}"))
    return elements


def _prefix(elements: list[str]) -> str:
    """Any non-empty prefix of the sequence: e1(?:e2(?:e3)?)?; a prefix of one element is the element
    itself (each is one character class, repeated or a separator)."""
    pattern = ""
    for element in reversed(elements[1:]):
        pattern = f"(?:{element}{pattern})?"
    return elements[0] + pattern


class Blocklist:
    """Compiled entries: `finditer` for matches, `hold_from` for the tail a stream must hold."""

    def __init__(self, entries: list[str], leet: bool) -> None:
        self.entries = entries
        parts = [_elements(e, leet, i) for i, e in enumerate(entries)]
        flags = re.IGNORECASE
        self.pattern = re.compile(_BEFORE + "(?:" + "|".join("".join(p) for p in parts) + ")" + _AFTER, flags)
        # the "pN" prefix groups are renamed so that group names stay unique in one pattern
        prefixes = [_prefix(p).replace("(?P<s", "(?P<p").replace("(?P=s", "(?P=p") for p in parts]
        self.prefix = re.compile(_BEFORE + "(?:" + "|".join(prefixes) + r")\Z", flags)
        self.longest = max(len(e) for e in entries)

    def finditer(self, text: str) -> Iterable[re.Match[str]]:
        return self.pattern.finditer(text)

    def hold_from(self, text: str, pos: int) -> int:
        """The earliest position >= pos whose tail could still grow into a match."""
        m = self.prefix.search(text, pos)
        return m.start() if m else len(text)

    def entry_of(self, matched: str) -> str:
        """Which entry a matched text is (for the event's detail)."""
        for i, entry in enumerate(self.entries):
            if re.fullmatch("".join(_elements(entry, True, i)), matched, re.IGNORECASE):
                return entry
        return matched.lower()
