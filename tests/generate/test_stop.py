"""Stop strings across delta boundaries: held back only while they could still match, never emitted."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genloop.generate.stop import StopMatcher


def run(stops: list[str], deltas: list[str]) -> tuple[list[str], bool]:
    """Every piece of text released (including the final flush) and whether a stop string ended it."""
    m = StopMatcher(stops)
    out = []
    for delta in deltas:
        text, stopped = m.feed(delta)
        out.append(text)
        if stopped:
            return out, True
    out.append(m.flush())
    return out, False


def reference(text: str, stops: list[str]) -> tuple[str, bool]:
    """The text up to the stop string completed first when reading left to right (the longer one
    when several complete at the same character), or all of it; and whether one was found."""
    for end in range(1, len(text) + 1):
        starts = [end - len(s) for s in stops if text[:end].endswith(s)]
        if starts:
            return text[: min(starts)], True
    return text, False


def test_stop_split_over_two_deltas() -> None:
    out, stopped = run(["###"], ["Hello #", "## world"])
    assert stopped and out == ["Hello ", ""]


def test_stop_split_over_three_deltas() -> None:
    m = StopMatcher(["</answer>"])
    assert m.feed("42</an") == ("42", False)
    assert m.feed("swe") == ("", False)
    assert m.feed("r> trailing") == ("", True)
    assert m.feed("more") == ("", True)
    assert m.flush() == ""


def test_lookalike_prefix_is_released_once_it_cannot_match() -> None:
    m = StopMatcher(["STOP"])
    assert m.feed("a ST") == ("a ", False)  # "ST" might begin "STOP"
    assert m.feed("O") == ("", False)
    assert m.feed("RM") == ("STORM", False)  # no longer can: released at once, in full
    assert m.feed("S") == ("", False)
    assert m.flush() == "S"


def test_holds_back_as_little_as_possible() -> None:
    m = StopMatcher(["abc", "xyz"])
    assert m.feed("aab") == ("a", False)  # only "ab" can still become "abc"
    assert m.feed("x") == ("ab", False)
    assert m.feed("yq") == ("xyq", False)


def test_multiple_stop_strings_first_completed_wins() -> None:
    assert run(["world", "lo"], ["hello world"]) == (["hel"], True)
    assert run(["\n\n", "User:"], ["Sure.", "\n", "\nUser:"]) == (["Sure.", "", ""], True)


def test_overlapping_stop_strings() -> None:
    # "bc" completes before "abcd" could: stop there even though "abcd" started earlier
    assert run(["abcd", "bc"], ["ab", "cd"]) == (["", "a"], True)
    # both complete at the same character: the longer one (earlier start) cuts
    assert run(["abc", "bc"], ["xab", "c"]) == (["x", ""], True)
    # a stop string overlapping itself
    assert run(["aa"], ["ba", "a", "a"]) == (["b", ""], True)


def test_no_stop_strings_passes_everything_through() -> None:
    m = StopMatcher([])
    assert m.feed("anything") == ("anything", False)
    assert m.flush() == ""


def test_empty_stop_string_is_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        StopMatcher(["ok", ""])


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet="ab c\n", max_size=40),
    stops=st.lists(st.text(alphabet="ab c\n", min_size=1, max_size=4), max_size=3),
    cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=12),
)
def test_streamed_output_equals_text_cut_at_first_stop(text: str, stops: list[str], cuts: list[int]) -> None:
    points = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    deltas = [text[a:b] for a, b in itertools.pairwise(points)]
    out, stopped = run(stops, deltas)
    assert ("".join(out), stopped) == reference(text, stops)
    # and until then, everything is released except the longest suffix that could begin a stop string
    m, fed, released = StopMatcher(stops), "", ""
    for delta in deltas:
        piece, done = m.feed(delta)
        if done:
            break
        fed, released = fed + delta, released + piece
        hold = max([k for s in stops for k in range(1, len(s)) if fed.endswith(s[:k])], default=0)
        assert released == fed[: len(fed) - hold]
