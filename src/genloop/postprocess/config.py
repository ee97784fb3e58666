"""`PostprocessConfig`: the `postprocess:` section of the server's YAML (also `genloop filter check`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from genloop.data.pii import PII_KINDS, PLACEHOLDERS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


class FormatConfig(_Strict):
    strip_special: bool = Field(
        True,
        description="remove special tokens (<|im_end|>, <|endoftext|>, the tokenizer's own) and C0/C1 "
        "control characters other than newline and tab",
    )
    normalize_whitespace: bool = Field(
        True,
        description="outside code fences: collapse runs of spaces inside a line, drop trailing spaces, "
        "keep at most one blank line, drop leading and trailing blank space of the answer",
    )
    close_code_fence: bool = Field(True, description="append a closing ``` when the answer ends inside one")
    trim_to_sentence: bool = Field(
        False,
        description="when the answer was cut by max_tokens, drop the unfinished last sentence (a stream "
        "then holds back the text after the last sentence end)",
    )
    capitalize: bool = Field(False, description="upper-case the answer's first letter")
    end_punctuation: bool = Field(
        False, description="end an answer whose last character is a letter or digit with '.' (or '。')"
    )


class RegexRule(_Strict):
    name: str = Field(description="rule name, shown in events as regex:<name>", pattern=r"^[A-Za-z0-9_.-]+$")
    pattern: str = Field(description="Python regular expression")
    action: Literal["mask", "redact", "block"] = Field(
        "mask", description="mask: replace with '*'; redact: replace with <NAME>; block: refuse the answer"
    )
    max_length: int = Field(
        64,
        ge=1,
        le=4096,
        description="the longest text the pattern can match; a stream holds back this many characters",
    )
    ignore_case: bool = Field(False, description="match case-insensitively")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            if re.compile(value).match(""):
                raise ValueError("the pattern matches the empty string; make it match at least one character")
        except re.error as exc:
            raise ValueError(f"invalid regular expression {value!r}: {exc}") from None
        return value


ScoreHook = Callable[..., float]


class ModerationConfig(_Strict):
    model: str | None = Field(
        None, description="directory of an encoder-only genloop classifier (with its tokenizer)"
    )
    callable: str | ScoreHook | None = Field(
        None, description="'module:function' (or a Python callable) taking the text, returning a score"
    )
    label: str | int = Field(
        1,
        description="for a model: the class whose probability is the score (index, or a name listed in "
        "the model directory's labels.json)",
    )
    threshold: float = Field(0.5, ge=0.0, le=1.0e9, description="a score at or above it fires")
    action: Literal["block", "log"] = Field("block", description="block the answer, or only record the event")
    hold: bool = Field(
        False,
        description="streams hold the whole answer until the hook ran (otherwise the hook can only block "
        "the end of a stream: text already sent stays sent)",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModerationConfig:
        if (self.model is None) == (self.callable is None):
            raise ValueError("moderation needs exactly one of `model` (a directory) or `callable`")
        return self


class RelevanceConfig(_Strict):
    callable: str | ScoreHook = Field(
        description="'module:function' (or a Python callable) taking (prompt, answer), returning a score"
    )
    threshold: float = Field(0.5, description="a score below it fires")
    action: Literal["block", "log"] = Field("block", description="block the answer, or only record the event")
    hold: bool = Field(False, description="streams hold the whole answer until the hook ran")


class FilterConfig(_Strict):
    blocklist: list[str] = Field(default_factory=list, description="banned words and phrases")
    blocklist_files: list[str] = Field(
        default_factory=list, description="files of banned words/phrases, one a line, '#' starts a comment"
    )
    leetspeak: bool = Field(
        True,
        description="also catch digit/symbol substitutions (b4d, $), repeated letters (baaad) and one "
        "separator repeated between letters (b.a.d, b a d)",
    )
    blocklist_action: Literal["mask", "block"] = Field(
        "mask", description="mask: replace the word with '*'; block: refuse the answer"
    )
    regex: list[RegexRule] = Field(default_factory=list, description="named regular expressions")
    pii: list[str] = Field(
        default_factory=lambda: list(PII_KINDS),
        description=f"PII kinds to redact with placeholders, of: {', '.join(PII_KINDS)}",
    )
    moderation: ModerationConfig | None = Field(None, description="a classifier score that blocks")
    relevance: RelevanceConfig | None = Field(
        None, description="a (prompt, answer) score that blocks when low"
    )
    refusal: str = Field("I can't help with that.", description="the text a blocked answer ends with")
    inputs: bool = Field(False, description="apply blocklist, regex, PII and moderation to prompts too")

    @field_validator("pii")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = [k for k in value if k not in PLACEHOLDERS]
        if unknown:
            raise ValueError(f"unknown PII kind(s) {unknown}; known: {', '.join(PII_KINDS)}")
        return value


class PostprocessConfig(_Strict):
    """Formatting and filtering of generated text; every field has a default."""

    format: FormatConfig = Field(default_factory=FormatConfig, description="formatting rules")
    filter: FilterConfig = Field(default_factory=FilterConfig, description="filtering and redaction rules")
