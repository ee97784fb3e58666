"""Blocklists (leetspeak, boundaries), named regexes, hooks, prompts, config errors."""

from __future__ import annotations

import json

import pytest

from genloop.errors import UserError
from genloop.postprocess import Event, load_postprocess


def moderation_score(text: str) -> float:
    return 0.9 if "forbidden" in text else 0.1


def relevance_score(prompt: str, answer: str) -> float:
    return len(set(prompt.lower().split()) & set(answer.lower().split())) / 3


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("a bad day", True),
        ("a B4D day", True),
        ("b.a.d", True),
        ("b a d!", True),
        ("baaaad", True),
        ("b-4-d", True),
        ("badge and abad", False),  # word boundaries
        ("b.a d", False),  # mixed separators
    ],
)
def test_leetspeak_variants(text: str, masked: bool) -> None:
    result = load_postprocess({"filter": {"blocklist": ["bad"], "pii": []}}).process(text)
    assert ("*" in result.text) is masked
    assert ("bad" in result.text.lower()) is (not masked and "bad" in text.lower())


def test_blocklist_is_on_word_boundaries_and_files_add_entries(tmp_path) -> None:
    words = tmp_path / "words.txt"
    words.write_text("# comment\nass\nKill   Yourself  # phrase\n\n")
    pipeline = load_postprocess({"filter": {"blocklist_files": [str(words)], "pii": []}})
    assert pipeline.process("the class passes").text == "the class passes"
    assert pipeline.process("you @$$, kill-yourself").text == "you ***, *************"
    off = load_postprocess({"filter": {"blocklist": ["ass"], "leetspeak": False, "pii": []}})
    assert off.process("@$$ and ASS").text == "@$$ and ***"


def test_named_regex_actions() -> None:
    rules = [
        {"name": "ticket", "pattern": r"TCK-\d{4}", "action": "redact"},
        {"name": "internal", "pattern": r"internal only", "action": "block", "ignore_case": True},
        {"name": "digits", "pattern": r"\d{6}", "action": "mask"},
    ]
    pipeline = load_postprocess({"filter": {"regex": rules, "pii": []}})
    assert pipeline.process("see TCK-1234 and 123456").text == "see <TICKET> and ******"
    blocked = pipeline.process("This is INTERNAL ONLY.")
    assert blocked.blocked and blocked.text == "I can't help with that."
    assert Event("regex:internal", "block", "internal") in blocked.events


def test_pii_events_never_carry_the_matched_text() -> None:
    result = load_postprocess(None).process("Write to jane.doe@example.org, key AKIAIOSFODNN7EXAMPLE.")
    assert result.text == "Write to <EMAIL>, key <SECRET>."
    assert [(e.rule, e.detail) for e in result.events] == [
        ("pii:email", "<EMAIL>"),
        ("pii:secret", "<SECRET>"),
    ]
    assert "jane" not in json.dumps([e.__dict__ for e in result.events])


def test_moderation_callable_blocks_at_finish_and_hold_holds_everything() -> None:
    callable_name = f"{__name__}:moderation_score"
    pipeline = load_postprocess({"filter": {"moderation": {"callable": callable_name, "threshold": 0.5}}})
    assert pipeline.process("all good").text == "all good"
    result = pipeline.process("this is forbidden talk")
    assert result.blocked and result.events[-1].rule == "moderation"
    # without hold the stream released text already; the hook can only block the end
    state = pipeline.stream()
    sent = state.feed("this is forbidden talk ")
    assert sent and state.finish() == "" and state.blocked
    held = load_postprocess(
        {"filter": {"moderation": {"callable": moderation_score, "threshold": 0.5, "hold": True}}}
    )
    state = held.stream()
    assert state.feed("this is forbidden talk ") == "" and state.finish() == "" and state.blocked
    state = held.stream()
    assert state.feed("fine text ") == "" and state.finish() == "fine text"


def test_relevance_hook_blocks_low_scores_and_log_only_records() -> None:
    pipeline = load_postprocess({"filter": {"relevance": {"callable": relevance_score, "threshold": 0.3}}})
    on_topic = pipeline.process("Paris is the capital of France", prompt="what is the capital of france")
    assert not on_topic.blocked
    off_topic = pipeline.process("Bananas are yellow", prompt="what is the capital of france")
    assert off_topic.blocked and off_topic.text == pipeline.refusal
    logging = load_postprocess(
        {"filter": {"relevance": {"callable": relevance_score, "threshold": 0.3, "action": "log"}}}
    )
    logged = logging.process("Bananas are yellow", prompt="capital of france")
    assert not logged.blocked and logged.events[-1] == Event("relevance", "log", "score 0.000")


def test_check_input_filters_a_prompt_without_formatting() -> None:
    pipeline = load_postprocess({"filter": {"blocklist": ["darn"], "inputs": True}})
    assert pipeline.inputs
    result = pipeline.check_input("my  mail is a.b@example.com, darn  it")
    assert result.text == "my  mail is <EMAIL>, **** it".replace("**** it", "****  it")
    assert {e.rule for e in result.events} == {"pii:email", "blocklist"}


def test_is_noop_and_holdback() -> None:
    nothing = {
        "format": {"strip_special": False, "normalize_whitespace": False, "close_code_fence": False},
        "filter": {"pii": []},
    }
    assert load_postprocess(nothing).is_noop()
    default = load_postprocess(None)
    assert not default.is_noop()
    regex = load_postprocess({"filter": {"regex": [{"name": "x", "pattern": "a+", "max_length": 200}]}})
    assert regex.holdback == 200 and default.holdback < 200


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"filter": {"blocklst": ["x"]}}, "filter.blocklst"),
        ({"filter": {"pii": ["emails"]}}, "unknown PII kind"),
        ({"filter": {"regex": [{"name": "x", "pattern": "("}]}}, "invalid regular expression"),
        ({"filter": {"regex": [{"name": "x", "pattern": "a*"}]}}, "empty string"),
        ({"filter": {"moderation": {"threshold": 0.5}}}, "exactly one of"),
        ({"filter": {"moderation": {"callable": "nomodule_zz:f"}}}, "cannot import"),
        ({"filter": {"moderation": {"callable": "no_colon"}}}, "module:function"),
        ({"filter": {"blocklist_files": ["/nonexistent/words.txt"]}}, "cannot read blocklist file"),
        ({"format": {"capitalize": "maybe"}}, "format.capitalize"),
    ],
)
def test_bad_config_is_one_clear_user_error(config: dict, message: str) -> None:
    with pytest.raises(UserError, match=message) as info:
        load_postprocess(config)
    assert "\n" not in str(info.value)
