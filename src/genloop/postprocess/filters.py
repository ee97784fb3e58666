"""The filter stage: PII redaction, blocklists and named regexes over a window of text.

Streams: the stage keeps the text not yet released plus `CONTEXT` characters before it (for
lookbehinds: a secret's name, word boundaries). On each piece it asks every rule how far back its
matches are still undecided (`hold_from`), releases the text before the earliest such point, and
scans only that window, so the cost per piece is the size of the window, never of the answer.

How far each rule holds:
- e-mail, IP, card, IBAN, phone, secret tokens: from just after the last character that cannot be
  part of a match of that kind (a space for an e-mail, a letter for a phone...), minus the two
  characters their lookaheads read. A long run of such characters is held whole: no length cap.
- PEM private keys: from `-----BEGIN` until its `-----END` line arrives (or the answer ends).
- `name: value` / `Bearer value` secrets: from the `:`/`=`/`bearer` whose value reaches the end.
- blocklists: the tail that is a prefix of a possible match (`b4`, `kill yo`).
- named regexes: their configured `max_length`.
Matches are the same in a window as in the whole text as long as no match is longer than what its
rule holds; tests check the stream against the whole text over random splits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from genloop.data import pii
from genloop.postprocess.blocklist import Blocklist
from genloop.postprocess.config import RegexRule

CONTEXT = 64  # characters kept before the released point: the longest lookbehind (48 for a secret name)
LOOKAHEAD = 2  # the longest lookahead of the PII patterns (`(?! \d)`)

# For each kind, a character that can never be inside one of its matches (from data/pii.py's patterns).
_BREAKERS: dict[str, re.Pattern[str]] = {
    "email": re.compile(r"(?s:.*)[^A-Za-z0-9._%+@-]"),
    "ip": re.compile(r"(?s:.*)[^\dA-Fa-f:.]"),
    "credit_card": re.compile(r"(?s:.*)[^\d -]"),
    "iban": re.compile(r"(?s:.*)[^A-Z\d ]"),
    "phone": re.compile(r"(?s:.*)[^\d +().\-/]"),
    "secret": re.compile(r"(?s:.*)[^A-Za-z0-9_.-]"),
}
_ASSIGNMENT_TAIL = re.compile(r"[:=][ \t]*[\"']?[^\s\"'`,;<>(){}\[\]]*\Z")
_BEARER_TAIL = re.compile(
    r"(?i)(?<![A-Za-z0-9])b(?:e(?:a(?:r(?:e(?:r(?:[ \t]+[A-Za-z0-9._~+/-]*=*)?)?)?)?)?)?\Z"
)
_PEM_BEGIN = "-----BEGIN"
_PEM_HEADER = re.compile(r"-----BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?)-----")
_PEM_NOT_PRIVATE = re.compile(r"-----BEGIN [A-Z0-9 ]*-----")


@dataclass(frozen=True)
class Hit:
    """One match: `text[start:end]` becomes `replacement` (None: the answer is blocked)."""

    start: int
    end: int
    rule: str
    action: str
    replacement: str | None
    detail: str | None


def _pem_hold(text: str, pos: int) -> int:
    """A private-key block is held from its BEGIN until its END arrives."""
    for k in range(min(len(_PEM_BEGIN), len(text) - pos), 0, -1):  # a tail that may become -----BEGIN
        if text.endswith(_PEM_BEGIN[:k]):
            hold = len(text) - k
            break
    else:
        hold = len(text)
    start = text.find(_PEM_BEGIN, pos)
    while start >= 0:
        header = _PEM_HEADER.match(text, start)
        if header is None:
            complete = _PEM_NOT_PRIVATE.match(text, start)
            if complete is None and "\n" not in text[start : start + 80]:
                return min(hold, start)  # the header is still arriving
        elif f"-----END {header.group(1)}-----" not in text[header.end() :]:
            return min(hold, start)
        start = text.find(_PEM_BEGIN, start + 1)
    return hold


class FilterStage:
    """Finds the hits of every configured rule in a text, and how far back a stream must hold."""

    def __init__(
        self,
        pii_kinds: tuple[str, ...],
        blocklist: Blocklist | None,
        blocklist_action: str,
        regexes: list[RegexRule],
    ) -> None:
        self.pii_kinds = pii_kinds
        self.blocklist = blocklist
        self.blocklist_action = blocklist_action
        self.regexes = [(r, re.compile(r.pattern, re.IGNORECASE if r.ignore_case else 0)) for r in regexes]

    def is_noop(self) -> bool:
        return not self.pii_kinds and self.blocklist is None and not self.regexes

    def hits(self, text: str) -> list[Hit]:
        """Non-overlapping hits, sorted. PII wins over the rest; overlapping masks merge."""
        found: list[Hit] = []
        if self.pii_kinds:
            found += [
                Hit(m.start, m.end, f"pii:{m.kind}", "redact", m.placeholder, m.placeholder)
                for m in pii.find(text, self.pii_kinds)
            ]
        n_pii = len(found)
        if self.blocklist is not None:
            block = self.blocklist_action == "block"
            for m in self.blocklist.finditer(text):
                found.append(
                    Hit(
                        m.start(),
                        m.end(),
                        "blocklist",
                        self.blocklist_action,
                        None if block else "*" * (m.end() - m.start()),
                        self.blocklist.entry_of(m.group(0)),
                    )
                )
        for rule, pattern in self.regexes:
            for m in pattern.finditer(text):
                if m.end() == m.start():
                    continue
                replacement = {
                    "mask": "*" * (m.end() - m.start()),
                    "redact": f"<{rule.name.upper()}>",
                    "block": None,
                }[rule.action]
                found.append(
                    Hit(m.start(), m.end(), f"regex:{rule.name}", rule.action, replacement, rule.name)
                )
        if len(found) == n_pii:
            return found
        return _resolve(found[:n_pii], found[n_pii:])

    def hold_from(self, text: str, pos: int) -> int:
        """The earliest position >= pos whose text a later piece could still change."""
        hold = len(text)
        end = max(pos, len(text) - LOOKAHEAD + 1)  # a breaker must have its lookahead in the text
        for kind in self.pii_kinds:
            m = _BREAKERS[kind].match(text, pos, end)
            hold = min(hold, m.end() if m else pos)
            if kind == "secret":
                hold = min(hold, _pem_hold(text, pos))
                for tail in (_ASSIGNMENT_TAIL, _BEARER_TAIL):
                    m = tail.search(text, pos)
                    if m:
                        hold = min(hold, m.start())
        if self.blocklist is not None:
            hold = min(hold, self.blocklist.hold_from(text, pos))
        for rule, _ in self.regexes:
            hold = min(hold, max(pos, len(text) - rule.max_length))
        return max(hold, pos)


def _resolve(pii_hits: list[Hit], others: list[Hit]) -> list[Hit]:
    """Blocks always count. A mask or redaction inside a PII span is dropped (the placeholder hides
    it); overlapping masks merge into one; otherwise the earlier hit wins."""
    kept: list[Hit] = list(pii_hits)
    blocks = [h for h in others if h.replacement is None]
    rest = sorted((h for h in others if h.replacement is not None), key=lambda h: (h.start, -h.end))
    merged: list[Hit] = []
    for h in rest:
        if any(p.start < h.end and h.start < p.end for p in pii_hits):
            continue
        if merged and h.start < merged[-1].end:
            prev = merged[-1]
            if prev.action == "mask" and h.action == "mask" and h.end > prev.end:
                merged[-1] = Hit(
                    prev.start, h.end, prev.rule, "mask", "*" * (h.end - prev.start), prev.detail
                )
            continue
        merged.append(h)
    kept += merged + blocks
    kept.sort(key=lambda h: (h.start, h.end))
    return kept
