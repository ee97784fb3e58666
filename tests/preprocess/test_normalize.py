"""Each normalization step on concrete inputs, and how steps compose into a pipeline."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from genloop.errors import UserError
from genloop.preprocess.normalize import (
    STEPS,
    Pipeline,
    clean_whitespace,
    fix_mojibake,
    lowercase,
    nfkc,
    remove_control,
    remove_punctuation,
    spell_correct,
)


def test_every_documented_step_is_registered() -> None:
    expected = {"nfkc", "fix_mojibake", "clean_whitespace", "remove_control", "lowercase"}
    assert expected | {"remove_punctuation", "spell_correct"} <= set(STEPS)


def test_nfkc_folds_compatibility_forms() -> None:
    assert nfkc("ﬁne") == "fine"
    assert nfkc("ＡＢＣ１２３") == "ABC123"
    assert nfkc("x²") == "x2"
    assert nfkc("e\u0301") == "é"  # composed, one code point


def test_fix_mojibake_repairs_wrong_codec_and_keeps_curly_quotes() -> None:
    assert fix_mojibake("cafÃ©") == "café"
    assert fix_mojibake("Ã¼ber naÃ¯ve") == "über naïve"
    assert fix_mojibake("“quoted” and it’s fine") == "“quoted” and it’s fine"
    assert fix_mojibake("already clean") == "already clean"


def test_clean_whitespace() -> None:
    messy = "  Hello \t\t world  \r\nsecond line   \r\rthird\n\n\n\n\nfourth  \n\n"
    assert clean_whitespace(messy) == "Hello world\nsecond line\n\nthird\n\nfourth"
    assert clean_whitespace("a\n\nb") == "a\n\nb"  # one blank line is kept
    assert clean_whitespace("   ") == ""


def test_remove_control_keeps_newline_and_tab() -> None:
    text = "a\x00b\x07c\u200bd\ufeffe\n\tf\x7f\u202eg"
    assert remove_control(text) == "abcde\n\tfg"
    assert remove_control("plain text") == "plain text"


def test_lowercase() -> None:
    assert lowercase("Hello WÖRLD Σ") == "hello wörld σ"


def test_remove_punctuation_in_every_script() -> None:
    assert remove_punctuation("Hello, world! «¿Qué?» — “yes”… 你好。") == "Hello world Qué  yes 你好"
    assert remove_punctuation("a+b=c $5") == "a+b=c $5"  # symbols (S*) are not punctuation


def test_spell_correct_fixes_typos_and_keeps_known_words() -> None:
    assert spell_correct("Hello, I like speling.") == "Hello, I like spelling."
    assert spell_correct("Speling matters") == "Spelling matters"  # capitalization kept
    assert spell_correct("Hello world") == "Hello world"


def test_spell_correct_leaves_acronyms_names_and_other_scripts_alone() -> None:
    untouched = "NASA iPhone café don't x86 snake_case 東京"
    assert spell_correct(untouched) == untouched


def test_pipeline_applies_steps_in_order() -> None:
    text = "Ã‰COLE,  ﬁrst!"
    pipe = Pipeline.from_names(
        ["fix_mojibake", "nfkc", "lowercase", "remove_punctuation", "clean_whitespace"]
    )
    assert pipe(text) == "école first"
    assert pipe.names == ["fix_mojibake", "nfkc", "lowercase", "remove_punctuation", "clean_whitespace"]
    # order matters: collapsing spaces before removing a control character leaves a double space
    assert Pipeline.from_names(["remove_control", "clean_whitespace"])("a \x00 b") == "a b"
    assert Pipeline.from_names(["clean_whitespace", "remove_control"])("a \x00 b") == "a  b"


def test_pipeline_map_is_lazy_and_empty_pipeline_is_identity() -> None:
    pipe = Pipeline.from_names(["lowercase"])
    seen: list[str] = []

    def source() -> Iterator[str]:
        for text in ("A", "B"):
            seen.append(text)
            yield text

    mapped = pipe.map(source())
    assert seen == []
    assert list(mapped) == ["a", "b"]
    assert Pipeline.from_names([])(" As Is ") == " As Is "
    assert len(Pipeline()) == 0


def test_unknown_step_names_the_nearest_valid_one() -> None:
    with pytest.raises(UserError) as info:
        Pipeline.from_names(["nfkc", "clean_whitespaces"])
    message = str(info.value)
    assert "'clean_whitespaces'" in message
    assert "did you mean 'clean_whitespace'?" in message
    assert "fix_mojibake" in message  # the valid names are listed
    assert "\n" not in message


def test_unknown_step_without_close_match_still_lists_valid_steps() -> None:
    with pytest.raises(UserError, match=r"unknown normalization step 'zzz' \(valid steps: .*nfkc"):
        Pipeline.from_names(["zzz"])
