"""One test per formatting rule, with Unicode and code blocks, each also checked streamed."""

from __future__ import annotations

import pytest

from genloop.postprocess import load_postprocess

OFF = {"strip_special": False, "normalize_whitespace": False, "close_code_fence": False}


def run(fmt: dict, text: str, truncated: bool = False, special: tuple[str, ...] = ()) -> str:
    pipeline = load_postprocess({"format": {**OFF, **fmt}, "filter": {"pii": []}}, special_tokens=special)
    whole = pipeline.process(text, truncated=truncated).text
    for size in (1, 2, 3, 7):
        state = pipeline.stream()
        streamed = "".join(state.feed(text[i : i + size]) for i in range(0, len(text), size))
        assert streamed + state.finish(truncated=truncated) == whole, size
    return whole


def test_strip_special_tokens_and_control_characters() -> None:
    text = "Hi<|im_end|> there\x07\r\n<|endoftext|>ok\x85 <s>x</s> [END] <|im_start|"
    assert run({"strip_special": True}, text) == "Hi there\nok <s>x</s> [END] <|im_start|"
    assert run({"strip_special": True}, "a[END]b</s>", special=("[END]", "</s>")) == "ab"
    # tabs and newlines stay, and so do emoji, CJK, RTL text
    assert run({"strip_special": True}, "a\tb\n🎉 日本 שלום") == "a\tb\n🎉 日本 שלום"


def test_normalize_whitespace_outside_code_only() -> None:
    text = (
        "\n\n  Hello    world   \n\n\n\n\nNext  line\t \n  indented  item\n"
        "```py\nx  =  1   \n\n\n\ny\n```\nafter   it  \n\n"
    )
    assert run({"normalize_whitespace": True}, text) == (
        "Hello world\n\nNext line\n  indented item\n```py\nx  =  1   \n\n\n\ny\n```\nafter it"
    )


def test_normalize_whitespace_unicode() -> None:
    # only ASCII spaces collapse: the ideographic space and non-breaking space are text
    text = "Café   déjà  vu\u3000\u3000東京  🎉\u00a0\u00a0x  مرحبا   بك"
    assert (
        run({"normalize_whitespace": True}, text) == "Café déjà vu\u3000\u3000東京 🎉\u00a0\u00a0x مرحبا بك"
    )


def test_close_code_fence() -> None:
    assert run({"close_code_fence": True}, "See:\n```python\nprint(1)\n") == "See:\n```python\nprint(1)\n```"
    assert run({"close_code_fence": True}, "```\nx = 1") == "```\nx = 1\n```"
    closed = "```\nx\n```\ndone"
    assert run({"close_code_fence": True}, closed) == closed
    # inline triple backticks are not a fence
    assert run({"close_code_fence": True}, "use ```x``` inline") == "use ```x``` inline"


@pytest.mark.parametrize(
    ("text", "truncated", "expected"),
    [
        ("One. Two! Three is cut", True, "One. Two!"),
        ("One. Two! Three is cut", False, "One. Two! Three is cut"),
        ("No sentence end at all", True, "No sentence end at all"),
        ("He said “yes.” Then he", True, "He said “yes.”"),
        ("最初の文。次の文", True, "最初の文。"),
        ("Pi is 3.14 and e is 2.71. More", True, "Pi is 3.14 and e is 2.71."),
        ("Complete sentence.", True, "Complete sentence."),
    ],
)
def test_trim_to_sentence(text: str, truncated: bool, expected: str) -> None:
    assert run({"trim_to_sentence": True}, text, truncated=truncated) == expected


def test_capitalize_first_letter() -> None:
    assert run({"capitalize": True}, "hello world") == "Hello world"
    assert run({"capitalize": True}, '  "élan vital"') == '  "Élan vital"'
    assert run({"capitalize": True}, "**bold** start") == "**Bold** start"
    assert run({"capitalize": True}, "3 apples") == "3 apples"
    assert run({"capitalize": True}, "日本語") == "日本語"
    assert run({"capitalize": True}, "ßtraße") == "ßtraße"  # upper-casing would add a letter


def test_end_punctuation() -> None:
    assert run({"end_punctuation": True}, "It works") == "It works."
    assert run({"end_punctuation": True}, "It works!") == "It works!"
    assert run({"end_punctuation": True}, "それは動く") == "それは動く。"
    assert run({"end_punctuation": True}, "Party 🎉") == "Party 🎉"
    assert run({"end_punctuation": True, "close_code_fence": True}, "```\nx") == "```\nx\n```"


def test_default_pipeline_formats_and_reports_events() -> None:
    result = load_postprocess(None).process("Done<|im_end|>\n```\ncode")
    assert result.text == "Done\n```\ncode\n```"
    assert [e.rule for e in result.events] == ["format:strip_special", "format:close_code_fence"]
    assert not result.blocked
