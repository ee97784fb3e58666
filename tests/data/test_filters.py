"""Quality filters: each keeps prose and drops what it is for, with its reason key; the default spec
on real English, German, symbol soup, repeated lines, digits and stubs; building from configs."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from genloop.data.filters import (
    DEFAULT_FILTERS,
    FILTERS,
    AlphaWordsFilter,
    BadWordsFilter,
    DigitRatioFilter,
    Filter,
    LanguageFilter,
    LengthFilter,
    MeanWordLengthFilter,
    StopWordsFilter,
    SymbolRatioFilter,
    build_filters,
    check,
)
from genloop.data.repetition import LineRepetitionFilter, NgramRepetitionFilter
from genloop.errors import UserError

PROSE = (
    "The river runs quietly through the old town, past the market square and the stone bridge that was "
    "built more than three centuries ago. In the morning, traders set up their stalls along the bank and "
    "sell bread, cheese and fresh vegetables to people on their way to work. Children stop to watch the "
    "boats, and older residents sit on the benches with a newspaper. When the weather is warm, the cafés "
    "put tables outside, and the whole street fills with conversation until late in the evening.\n\n"
    "Visitors who arrive by train in 1998 or today find the same view from the station: roofs of red "
    "tile, the tower of the church, and the hills beyond, covered with vineyards that have belonged to "
    "the same families for generations."
)
GERMAN = (
    "Der Fluss fließt ruhig durch die Altstadt, vorbei am Marktplatz und an der steinernen Brücke, die "
    "vor mehr als dreihundert Jahren gebaut wurde. Am Morgen bauen die Händler ihre Stände am Ufer auf "
    "und verkaufen Brot, Käse und frisches Gemüse an die Leute, die zur Arbeit gehen. Kinder bleiben "
    "stehen, um den Booten zuzusehen, und ältere Bewohner sitzen mit einer Zeitung auf den Bänken. Wenn "
    "das Wetter warm ist, stellen die Cafés Tische nach draußen, und die ganze Straße ist bis spät in "
    "den Abend voller Gespräche."
)
SYMBOL_SOUP = "#### $$$ ### ..."
SAME_LINE = "\n".join(["Click here to see all of the offers that we have for you today."] * 50)
DIGITS = " ".join(str(1000 + 7 * i) for i in range(80))


def drop(f: Filter, text: str) -> str | None:
    """Call a filter and check that whatever it answers is one of its declared reason keys."""
    reason = f(text)
    assert reason is None or reason in f.reasons
    return reason


# --- each filter: one text kept, one dropped with its key -------------------------------------------


def test_length() -> None:
    f = LengthFilter()
    assert drop(f, PROSE) is None
    assert drop(f, "A twenty char text.") == "too_short"
    assert drop(LengthFilter(min_words=0, max_words=20), PROSE) == "too_long"
    assert drop(LengthFilter(min_words=0, min_chars=1000), PROSE) == "too_short"
    assert drop(LengthFilter(max_chars=100), PROSE) == "too_long"


def test_mean_word_length() -> None:
    f = MeanWordLengthFilter()
    assert drop(f, PROSE) is None
    assert drop(f, " ".join(["a b c d"] * 20)) == "mean_word_length"
    assert drop(f, " ".join(["internationalization-considerations"] * 20)) == "mean_word_length"
    assert drop(f, "") == "mean_word_length"


def test_symbol_ratio() -> None:
    f = SymbolRatioFilter()
    assert drop(f, PROSE) is None
    assert drop(f, SYMBOL_SOUP) == "symbol_ratio"
    assert drop(f, "Read more… " * 10) == "symbol_ratio"  # one ellipsis per two words
    assert drop(SymbolRatioFilter(symbols=["$"]), "$$$ money $$$ talks") == "symbol_ratio"


def test_digit_ratio() -> None:
    f = DigitRatioFilter()
    assert drop(f, PROSE) is None  # "1998" is not enough
    assert drop(f, DIGITS) == "digit_ratio"
    assert drop(DigitRatioFilter(max_ratio=1.0), DIGITS) is None


def test_alpha_words() -> None:
    f = AlphaWordsFilter()
    assert drop(f, PROSE) is None
    assert drop(f, "| 12 | 13 | 14 | total | 39 |") == "alpha_words"
    assert drop(AlphaWordsFilter(min_ratio=0.05), "| 12 | 13 | 14 | total | 39 |") is None


def test_stop_words() -> None:
    f = StopWordsFilter()
    assert drop(f, PROSE) is None
    assert drop(f, "apple banana cherry damson elderberry fig grape " * 10) == "stop_words"
    assert drop(f, GERMAN) == "stop_words"  # English function words: German needs its own list
    assert drop(StopWordsFilter(words=["der", "die", "und", "den"]), GERMAN) is None


def test_line_repetition() -> None:
    f = LineRepetitionFilter()
    assert drop(f, PROSE) is None
    assert drop(f, SAME_LINE) == "duplicate_lines"
    unique = [f"Line number {i} says something different." for i in range(10)]
    long_line = "This long line is repeated twice and carries most of the characters of the page. " * 6
    assert drop(f, "\n".join([*unique, long_line, long_line])) == "duplicate_line_chars"
    assert drop(f, "\n".join(f"* item {i}" for i in range(20))) == "bullet_lines"
    assert (
        drop(f, "\n".join(f"Story {i} begins like this and then..." for i in range(10))) == "ellipsis_lines"
    )
    lenient = LineRepetitionFilter(max_duplicate_lines=1, max_duplicate_line_chars=1)
    paragraphs = "\n\n".join(["First line of a block.\nSecond line of the block."] * 3 + ["The end."])
    assert drop(lenient, paragraphs) == "duplicate_paragraphs"


def test_ngram_repetition() -> None:
    f = NgramRepetitionFilter()
    assert drop(f, PROSE) is None
    topics = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    stuffed = " ".join(f"machine learning {w}" for w in topics)
    assert drop(f, stuffed) == "top_ngram"
    one_line = PROSE.replace("\n", " ")
    assert drop(f, one_line + " " + one_line) == "duplicate_ngram"  # no repeated line, repeated text
    assert drop(NgramRepetitionFilter(max_duplicate_ngram_chars={5: 0.6}), one_line + " " + one_line) is None
    assert drop(f, "word") is None  # too short to have n-grams at all


def test_ngram_repetition_counts_only_repeats_of_earlier_ngrams() -> None:
    """A phrase said twice in a long text is normal: only the second occurrence counts."""
    f = NgramRepetitionFilter(max_top_ngram_chars={}, max_duplicate_ngram_chars={5: 0.3})
    text = PROSE.replace("\n", " ")
    assert drop(f, text + " " + text[: len(text) // 4]) is None  # ~20% repeated
    assert drop(f, text + " " + text[: len(text) // 2]) == "duplicate_ngram"  # ~33% repeated


def test_language() -> None:
    f = LanguageFilter()
    assert drop(f, PROSE) is None
    assert drop(f, GERMAN) == "language"
    assert drop(LanguageFilter(keep=["de"]), GERMAN) is None
    assert drop(LanguageFilter(keep=["de", "en"]), PROSE) is None
    assert drop(f, "12345 67890") == "language"  # no language at all


def test_bad_words(tmp_path: Path) -> None:
    f = BadWordsFilter()
    assert drop(f, PROSE) is None
    spam = "hot porn videos, free porn, the best porno site " * 5 + PROSE
    assert drop(f, spam) == "bad_words"
    assert drop(f, PROSE + " What the hell, damn it, he said.") is None  # not in the list
    inline = BadWordsFilter(words=["bread", "cheese"], max_ratio=0.01)
    assert drop(inline, PROSE) == "bad_words"
    listed = tmp_path / "words.txt"
    listed.write_text("# fruit we do not want\nVegetables\n\n", encoding="utf-8")
    assert BadWordsFilter(words_file=str(listed)).words == frozenset({"vegetables"})
    assert drop(BadWordsFilter(words_file=str(listed), max_ratio=0.005), PROSE) == "bad_words"
    with pytest.raises(UserError, match=r"words_file .*missing\.txt does not exist"):
        BadWordsFilter(words_file=str(tmp_path / "missing.txt"))


# --- the default spec --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def defaults() -> list[Filter]:
    return build_filters(DEFAULT_FILTERS)


def test_defaults_keep_english_prose(defaults: list[Filter]) -> None:
    assert check(defaults, PROSE) is None
    licence = Path("/usr/share/common-licenses/GPL-3")
    if licence.is_file():  # Debian-based machines: 35 kB of real English legal prose
        assert check(defaults, licence.read_text(encoding="utf-8")) is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (GERMAN, "language"),
        (SYMBOL_SOUP, "too_short"),
        ("\n".join([SYMBOL_SOUP] * 20), "symbol_ratio"),
        (SAME_LINE, "duplicate_lines"),
        (DIGITS, "digit_ratio"),
        ("A twenty char text.", "too_short"),
    ],
    ids=["german", "symbol-soup", "symbol-soup-long", "same-line-50x", "digits", "20-chars"],
)
def test_defaults_drop(defaults: list[Filter], text: str, reason: str) -> None:
    assert check(defaults, text) == reason


def test_default_spec_names_every_filter_in_cheap_first_order() -> None:
    assert set(DEFAULT_FILTERS) == set(FILTERS)
    names = list(DEFAULT_FILTERS)
    assert names[0] == "length" and names.index("language") < names.index("stop_words")


def test_every_option_documents_its_default() -> None:
    for cls in FILTERS.values():
        assert cls.reasons and cls.name in FILTERS
        for name, field in cls.options_model.model_fields.items():
            assert field.description, f"{cls.name}.{name} has no description"


# --- building from a config --------------------------------------------------------------------------


def test_build_respects_order_true_false_and_none() -> None:
    filters = build_filters(
        {"language": True, "length": {"min_words": 3}, "bad_words": False, "digit_ratio": None}
    )
    assert [f.name for f in filters] == ["language", "length"]
    assert filters[1].options.min_words == 3
    assert build_filters({"length": {}})[0].options.min_words == 50


def test_unknown_filter_names_it_the_nearest_and_the_list() -> None:
    with pytest.raises(UserError) as err:
        build_filters({"lenght": {}})
    message = str(err.value)
    assert "'lenght'" in message and "did you mean 'length'" in message and "ngram_repetition" in message


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"length": {"min_words": "many"}}, "filter 'length': option 'min_words'.*valid integer.*'many'"),
        ({"length": {"min_word": 3}}, "filter 'length': unknown option 'min_word'.*did you mean 'min_words'"),
        (
            {"length": {"min_words": 10, "max_words": 5}},
            "min_words \\(10\\) must not exceed max_words \\(5\\)",
        ),
        (
            {"digit_ratio": {"max_ratio": 2}},
            "filter 'digit_ratio': option 'max_ratio'.*less than or equal to 1",
        ),
        ({"language": {"keep": ["english"]}}, "'english' is not a language py3langid knows.*ISO 639"),
        ({"ngram_repetition": {"max_top_ngram_chars": {0: 0.1}}}, "n-gram size 0 is out of range"),
        ({"length": "yes"}, "filter 'length': expected a mapping of options, true or false"),
    ],
)
def test_bad_options_are_user_errors(spec: dict, expected: str) -> None:
    with pytest.raises(UserError, match=expected):
        build_filters(spec)


def test_spec_must_be_a_mapping() -> None:
    with pytest.raises(UserError, match="mapping of filter name to options"):
        build_filters(["length"])  # type: ignore[arg-type]


def test_filters_pickle_and_decide_the_same(defaults: list[Filter], tmp_path: Path) -> None:
    """Workers receive filters by pickling: same options, same decisions, no model inside."""
    listed = tmp_path / "words.txt"
    listed.write_text("bread\n", encoding="utf-8")
    filters = [*defaults, BadWordsFilter(words_file=str(listed)), LanguageFilter(keep=["de"])]
    blob = pickle.dumps(filters)
    assert len(blob) < 20_000  # the language model (~30 MB) is not in there
    copies = pickle.loads(blob)
    assert [f.config() for f in copies] == [f.config() for f in filters]
    for text in (PROSE, GERMAN, SAME_LINE, DIGITS, SYMBOL_SOUP):
        assert [f(text) for f in copies] == [f(text) for f in filters]


def test_ngram_decisions_do_not_depend_on_the_process_hash_seed() -> None:
    """Workers are separate processes with their own str-hash seeds: a tie between equally frequent
    n-grams must break the same way in each, or 1 and 2 workers keep different documents."""
    import subprocess
    import sys

    script = (
        "from genloop.data.filters import build_filters\n"
        "f = build_filters({'ngram_repetition': {}})[0]\n"
        "texts = [('alpha beta gamma delta ' * k + 'epsilon zeta eta ' * j + 'x y ' * (k + j)) "
        "for k in range(1, 9) for j in range(1, 9)]\n"
        "print([f(t) for t in texts])\n"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", script], env={**os.environ, "PYTHONHASHSEED": str(seed)},
            capture_output=True, text=True, check=True,
        ).stdout
        for seed in (1, 2, 3, 4)
    }  # fmt: skip
    assert len(outputs) == 1
