"""Streams equal whole-text processing for any split, and never leak a banned word or PII, even in part."""

from __future__ import annotations

import random
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from genloop.postprocess import load_postprocess

BANNED = ["darn", "heck", "kill yourself", "ass"]
CONFIG = {
    "format": {"capitalize": True, "end_punctuation": True},
    "filter": {
        "blocklist": BANNED,
        "regex": [{"name": "ticket", "pattern": r"TCK-\d{4}", "action": "redact"}],
    },
}
PII = [
    "alice.smith@example.com",
    "+33 6 12 34 56 78",
    "555-123-4567",
    "4111 1111 1111 1111",
    "DE89370400440532013000",
    "81.2.69.142",
    "AKIAIOSFODNN7EXAMPLE",
    "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n"
    "BKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\n-----END PRIVATE KEY-----",
]
SECRET_VALUE = "Zk39fQ1xLp0aB7mN2cV8"
BANNED_FORMS = ["darn", "d4rn", "D.A.R.N", "heeeck", "h3ck", "kill  yourself", "@ss", "a s s"]
FILLER = [
    "the class",
    "passes",
    "a",
    "simple",
    "answer",
    "darning",
    "checkout",
    "1.2.3.4",
    "2024-05-01",
    "日本語",
    "café",
    "🎉",
    "مرحبا",
    "x = 1",
    "```",
    "```python",
    "\n",
    "\n\n\n",
    "  ",
    "<|im_end|>",
    ".",
    ",",
]


def make_text(rnd: random.Random) -> str:
    parts = []
    for _ in range(rnd.randint(8, 30)):
        r = rnd.random()
        if r < 0.15:
            parts.append(rnd.choice(BANNED_FORMS))
        elif r < 0.3:
            parts.append(f"reach {rnd.choice(PII)} today")  # PII in a sentence, not a cell of a number table
        elif r < 0.35:
            parts.append(f"api_key = {SECRET_VALUE}")
        elif r < 0.4:
            parts.append("ticket TCK-1234")
        else:
            parts.append(rnd.choice(FILLER))
    return " ".join(parts)


def stream(pipeline, text: str, rnd: random.Random) -> tuple[list[str], str]:
    """The releases one by one (for prefix checks), and the concatenation."""
    state = pipeline.stream()
    releases, i = [], 0
    while i < len(text):
        n = rnd.choice([1, 1, 2, 3, 4, 5, 8, 13])
        releases.append(state.feed(text[i : i + n]))
        i += n
    releases.append(state.finish())
    return releases, "".join(releases)


def assert_clean(text: str) -> None:
    lowered = text.lower()
    for form in [
        "darn",
        "d4rn",
        "d.a.r.n",
        "heeeck",
        "h3ck",
        "yourself",
        "@ss",
        "a s s",
        "tck-1234",
        SECRET_VALUE.lower(),
    ]:
        assert not re.search(rf"(?<![^\W_]){re.escape(form)}(?![^\W_])", lowered), form
    for value in PII:
        for piece in value.lower().split("\n"):
            if len(piece) > 8:
                assert piece not in lowered, piece


def test_200_random_splits_never_leak_and_equal_the_whole_text() -> None:
    pipeline = load_postprocess(CONFIG)
    rnd = random.Random(1234)
    for trial in range(200):
        text = make_text(rnd)
        whole = pipeline.process(text)
        assert not whole.blocked
        assert_clean(whole.text)
        releases, streamed = stream(pipeline, text, rnd)
        assert streamed == whole.text, (trial, text)
        # every moment's output is a prefix of the final one: nothing went out that was masked later,
        # so no part of a banned word or of a PII string ever reached the client
        so_far = ""
        for piece in releases:
            so_far += piece
            assert whole.text.startswith(so_far)


def test_banned_word_split_in_single_characters_is_held_then_masked() -> None:
    pipeline = load_postprocess(
        {"format": {"normalize_whitespace": False}, "filter": {"blocklist": ["darn"], "pii": []}}
    )
    state = pipeline.stream()
    outs = [state.feed(ch) for ch in "oh d4rn it"]
    # 'd', '4', 'r', 'n' never go out on their own: held until the word is decided, then masked
    assert outs == ["o", "h", " ", "", "", "", "", "", "**** i", "t"]
    assert state.finish() == ""


def test_stream_holds_only_what_rules_need() -> None:
    pipeline = load_postprocess({"filter": {"blocklist": BANNED}})
    state = pipeline.stream()
    text = "The quick brown fox jumps over the lazy dog and keeps on running far away. " * 4
    out = ""
    for i in range(0, len(text), 3):
        out += state.feed(text[i : i + 3])
        assert len(text[: i + 3]) - len(out) <= 12  # about one word, not the longest possible rule
    assert out + state.finish() == text.strip()


def test_block_action_ends_the_stream_with_nothing_of_the_word() -> None:
    pipeline = load_postprocess({"filter": {"blocklist": ["kill yourself"], "blocklist_action": "block"}})
    text = "Sure. You should kill yourself now and more text follows."
    result = pipeline.process(text)
    assert result.blocked and result.text == pipeline.refusal
    assert [(e.rule, e.action, e.detail) for e in result.events] == [("blocklist", "block", "kill yourself")]
    state = pipeline.stream()
    streamed = "".join(state.feed(text[i : i + 2]) for i in range(0, len(text), 2)) + state.finish()
    assert state.blocked and "kill" not in streamed and text.startswith(streamed.rstrip())


def test_pem_block_is_held_until_its_end_line() -> None:
    pipeline = load_postprocess(None)
    key = PII[-1]
    state = pipeline.stream()
    out = state.feed("Here: " + key[:40])
    assert "BEGIN" not in out and "-" not in out
    out += state.feed(key[40:]) + state.feed(" done") + state.finish()
    assert out == "Here: <SECRET> done"


ALPHABET = st.sampled_from(
    [
        "a",
        "b",
        "darn",
        "d4rn",
        " ",
        "  ",
        "\n",
        "```",
        "`",
        ".",
        "!",
        "@",
        "bob@x.io",
        "555-123-4567",
        "-",
        "4111",
        "1111",
        "<|",
        "im_end",
        "|>",
        "\x07",
        "é",
        "日",
        "🎉",
        "api_key=",
        "Zk39fQ1xLp0a",
        "BEGIN",
        "-----",
        ":",
    ]
)


@settings(max_examples=150, deadline=None)
@given(
    parts=st.lists(ALPHABET, max_size=40),
    cuts=st.lists(st.integers(1, 6), min_size=1, max_size=20),
    truncated=st.booleans(),
)
def test_any_split_equals_the_whole_text(parts: list[str], cuts: list[int], truncated: bool) -> None:
    pipeline = load_postprocess(
        {
            "format": {"trim_to_sentence": True, "capitalize": True, "end_punctuation": True},
            "filter": {"blocklist": ["darn", "b a"]},
        }
    )
    text = "".join(parts)
    whole = pipeline.process(text, truncated=truncated).text
    state, out, i, k = pipeline.stream(), "", 0, 0
    while i < len(text):
        n = cuts[k % len(cuts)]
        out += state.feed(text[i : i + n])
        i, k = i + n, k + 1
    assert out + state.finish(truncated=truncated) == whole
