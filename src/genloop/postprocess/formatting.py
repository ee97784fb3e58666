"""Formatting stages. Each is a transducer: `feed(piece) -> released text`, `finish() -> the rest`,
whose output depends only on the concatenated input, never on how it was split into pieces. That
is what makes a streamed answer equal the whole-text result.

Unicode: no normalization form is applied (NFC would rewrite text a user may copy, and tokenizers
already emit what the model learnt); whitespace rules touch only ASCII space, tab and newline, so
CJK full-width spaces, RTL marks and emoji pass through. Control characters removed are C0/C1 and
DEL (not newline or tab): a carriage return goes, so CRLF becomes LF.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

Emit = Callable[[str, str, str | None], None]  # (rule, action, detail)

_CONTROL = r"[\x00-\x08\x0b-\x1f\x7f-\x9f]"
_CHATML = r"<\|[A-Za-z0-9_]{1,32}\|>"  # <|im_end|>, <|endoftext|>, <|eot_id|>...
_CHATML_PREFIX = re.compile(r"<(?:\|[A-Za-z0-9_]{0,32}(?:\|)?)?\Z")


class SpecialStripper:
    """Remove special tokens and control characters. Holds back only a tail that could still become
    a special token (`<|im_e`)."""

    def __init__(self, tokens: Iterable[str], emit: Emit) -> None:
        self.tokens = sorted({t for t in tokens if t}, key=len, reverse=True)
        alternatives = [re.escape(t) for t in self.tokens] + [_CHATML, _CONTROL]
        self.pattern = re.compile("|".join(alternatives))
        self.starts = {t[0] for t in self.tokens} | {"<"}
        self.longest = max([34 + 2, *(len(t) for t in self.tokens)])
        self.emit = emit
        self.buf = ""

    def _held(self, text: str) -> int:
        """Start of the longest tail that is a prefix of a special token."""
        for i in range(max(0, len(text) - self.longest), len(text)):
            if text[i] not in self.starts:
                continue
            tail = text[i:]
            if any(t.startswith(tail) for t in self.tokens) or _CHATML_PREFIX.match(tail):
                return i
        return len(text)

    def _strip(self, text: str) -> str:
        def drop(m: re.Match[str]) -> str:
            found = m.group(0)
            self.emit("format:strip_special", "format", found if len(found) > 1 else f"U+{ord(found):04X}")
            return ""

        return self.pattern.sub(drop, text)

    def feed(self, piece: str) -> str:
        text = self.buf + piece
        cut = self._held(text)
        self.buf = text[cut:]
        return self._strip(text[:cut])

    def finish(self) -> str:
        text, self.buf = self.buf, ""
        return self._strip(text)


class Whitespace:
    """Whitespace normalization and code-fence tracking, one character at a time.

    Outside fences: runs of 2+ spaces inside a line become one; spaces and tabs before a newline go;
    3+ newlines become 2 (one blank line); leading and trailing blank space of the answer goes;
    indentation after a newline stays. Inside a fence (a line whose first non-blank characters are
    ```) text passes untouched. With `normalize` off only the fence is tracked (for closing it).
    """

    def __init__(self, normalize: bool, close_fence: bool, emit: Emit) -> None:
        self.normalize = normalize
        self.close_fence = close_fence
        self.emit = emit
        self.in_fence = False
        self.started = False  # a non-blank character was released
        self.held = ""  # blank characters not yet released (normal mode)
        self.ticks = ""  # backticks at a line start (or after indentation) that may open/close a fence
        self.line_start = True  # only blank characters since the last newline
        self.last = ""

    def _flush_held(self) -> str:
        held, self.held = self.held, ""
        if not self.normalize:
            return held
        if not self.started:
            return ""
        newlines = held.count("\n")
        if newlines == 0:
            return re.sub(" {2,}", " ", held)
        return "\n" * min(newlines, 2) + held[held.rfind("\n") + 1 :]

    def feed(self, piece: str) -> str:
        out: list[str] = []
        for ch in piece:
            if self.ticks:
                if ch == "`":
                    self.ticks += ch
                    if len(self.ticks) == 3:
                        out.append(self.ticks)
                        self.ticks = ""
                        self.in_fence = not self.in_fence
                        self.line_start = False
                        self.started = True
                    continue
                out.append(self.ticks)
                self.ticks = ""
                self.line_start = False
                self.started = True
            if self.in_fence:
                if ch == "`" and self.line_start:
                    self.ticks = ch
                    continue
                out.append(ch)
                if ch == "\n":
                    self.line_start = True
                elif ch not in " \t":
                    self.line_start = False
                continue
            if ch in " \t\n":
                if self.normalize:
                    self.held += ch
                else:
                    out.append(ch)
                if ch == "\n":
                    self.line_start = True
                continue
            out.append(self._flush_held())
            if ch == "`" and (self.line_start or not self.started):
                self.ticks = ch
                continue
            out.append(ch)
            self.line_start = False
            self.started = True
        text = "".join(out)
        if text:
            self.last = text[-1]
        return text

    def finish(self) -> str:
        out = self.ticks
        self.ticks = ""
        if self.in_fence or not self.normalize:
            out += self.held
        self.held = ""
        if self.in_fence and self.close_fence:
            ending = (out or self.last)[-1:] if (out or self.last) else ""
            out += ("" if ending in ("\n", "") else "\n") + "```"
            self.emit("format:close_code_fence", "format", None)
            self.in_fence = False
        if out:
            self.last = out[-1]
        return out


# A sentence ends at . ! ? … then closing quotes/brackets, then blank space; or at a CJK full stop
# (no space follows those) and its closing brackets. Lookaheads: a stream releases only confirmed ends.
_SENTENCE_END = re.compile(r"[.!?…][\"'”’»)\]]*(?=\s)|[。！？][」』”’)）]*(?=[^」』”’)）])")
_ENDS_SENTENCE = re.compile(r"[.!?…。！？][\"'”’»)\]]*\s*\Z")


class SentenceTrim:
    """Drop the unfinished last sentence of an answer cut by max_tokens. A stream holds back the text
    after the last sentence end, since at finish it may be dropped."""

    def __init__(self, emit: Emit) -> None:
        self.emit = emit
        self.tail = ""
        self.released = False  # a complete sentence went out

    def feed(self, piece: str) -> str:
        self.tail += piece
        ends = [m.end() for m in _SENTENCE_END.finditer(self.tail)]
        if not ends:
            return ""
        out, self.tail = self.tail[: ends[-1]], self.tail[ends[-1] :]
        self.released = True
        return out

    def finish(self, truncated: bool) -> str:
        tail, self.tail = self.tail, ""
        if truncated and self.released and tail.strip() and not _ENDS_SENTENCE.search(tail):
            self.emit("format:trim_to_sentence", "format", f"{len(tail)} chars")
            return ""
        return tail


_CAPITALIZE_SKIP = set(" \t\n\"'“‘«(*_#>-")


class Capitalize:
    """Upper-case the first letter, when only blank space, quotes or markdown marks precede it."""

    def __init__(self, emit: Emit) -> None:
        self.emit = emit
        self.done = False

    def feed(self, piece: str) -> str:
        if self.done or not piece:
            return piece
        for i, ch in enumerate(piece):
            if ch in _CAPITALIZE_SKIP:
                continue
            self.done = True
            upper = ch.upper()
            if ch.islower() and len(upper) == 1:
                self.emit("format:capitalize", "format", None)
                return piece[:i] + upper + piece[i + 1 :]
            return piece
        return piece


def _cjk(ch: str) -> bool:
    return "\u3040" <= ch <= "\u30ff" or "\u3400" <= ch <= "\u9fff" or "\uac00" <= ch <= "\ud7af"


def end_punctuation(last: str) -> str:
    """The punctuation to append after an answer whose last character is `last` ('' for none)."""
    if not last or not last.isalnum():
        return ""
    return "。" if _cjk(last) else "."
