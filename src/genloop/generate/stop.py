"""Stop strings over streamed text. Tokens do not line up with stop strings ("###" may arrive as "#"
then "##"), so text that could still become a stop string is held back until it is known not to.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    """Feed text deltas; get back what is safe to show and whether a stop string was completed.

    Generation stops at the first stop string to be *completed* while reading left to right (when two
    complete at the same character, the longer one wins); the text is cut where it begins, and the stop
    string itself is never emitted. Held back is only the longest suffix that is a proper prefix of
    some stop string, so a client sees every character as soon as it cannot be part of a stop.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        self.stops = list(dict.fromkeys(stops))
        self.held = ""
        self.stopped = False

    def feed(self, delta: str) -> tuple[str, bool]:
        """Text safe to emit now and whether a stop string was completed (then nothing more comes)."""
        if self.stopped:
            return "", True
        if not self.stops:
            return delta, False
        text, seen = self.held + delta, len(self.held)
        cut = self._first_stop(text, seen)
        if cut is not None:
            self.held, self.stopped = "", True
            return text[:cut], True
        keep = self._held_length(text)
        self.held = text[len(text) - keep :]
        return text[: len(text) - keep], False

    def flush(self) -> str:
        """The held-back text, at the end of generation (nothing if a stop string was found)."""
        held, self.held = ("" if self.stopped else self.held), ""
        return held

    def _first_stop(self, text: str, seen: int) -> int | None:
        """Start of the stop string completed first in `text`; occurrences ending within the first
        `seen` characters were checked on an earlier call (and there were none)."""
        best: tuple[int, int] | None = None  # (end, start)
        for stop in self.stops:
            start = text.find(stop, max(0, seen - len(stop) + 1))
            if start >= 0:
                candidate = (start + len(stop), start)
                best = candidate if best is None else min(best, candidate)
        return None if best is None else best[1]

    def _held_length(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
        longest = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:k]):
                    longest = k
                    break
        return longest
