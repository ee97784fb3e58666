"""Structured output on SmolLM2's real tokenizer and model: every constrained output parses and
validates (JSON Schema) or fullmatches (regex); bad schemas and regexes are one-line ValueErrors."""

from __future__ import annotations

import json
import re
import statistics
import time
from pathlib import Path
from typing import Any

import jsonschema
import llguidance
import pytest
import torch

from genloop.checkpoint import load_model
from genloop.generate.constrained import (
    Constraint,
    GrammarConstraint,
    _ll_tokenizer,
    constrained_greedy,
    json_object_constraint,
    json_schema_constraint,
    regex_constraint,
)
from genloop.preprocess import Tokenizer

MAX_NEW = 150
MaskTime = tuple[bool, float, float | None]  # (first mask of its constraint, mask seconds, rest of the step)
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def tok(smollm2: Path) -> Tokenizer:
    return Tokenizer.load(smollm2)


def allowed(c: Constraint, vocab: int) -> set[int]:
    return set(c.allowed_mask(vocab).nonzero().flatten().tolist())


# ---- without the model ---------------------------------------------------------------------------


def test_index_is_built_once_per_tokenizer_json(smollm2: Path, tok: Tokenizer) -> None:
    start = time.perf_counter()
    llguidance.LLTokenizer(tok.backend.to_str(), n_vocab=tok.vocab_size, eos_token=tok.eos_token_id)
    build = time.perf_counter() - start
    first = _ll_tokenizer(tok)[0]
    other = Tokenizer.load(smollm2)
    start = time.perf_counter()
    again = _ll_tokenizer(other)[0]  # another object, same files: hashed, not rebuilt
    by_hash = time.perf_counter() - start
    start = time.perf_counter()
    assert _ll_tokenizer(tok)[0] is first is again
    by_object = time.perf_counter() - start
    print(
        f"\nindex build {build * 1e3:.0f} ms; cache hit by hash {by_hash * 1e3:.1f} ms, by object "
        f"{by_object * 1e6:.0f} us (vocab {tok.vocab_size})"
    )


def test_mask_follows_a_valid_json_text_and_then_allows_only_eos(tok: Tokenizer) -> None:
    c = json_schema_constraint(PERSON, tok)
    assert isinstance(c, Constraint)
    vocab = tok.vocab_size + 128  # models pad the embedding table past the tokenizer
    eos = tok.eos_token_id
    ids = tok.encode('{"name": "Ada", "age": 36}', add_special_tokens=False)
    for token in ids:
        ok = allowed(c, vocab)
        assert token in ok and eos not in ok and max(ok) < tok.vocab_size
        assert not c.is_finished()
        c.advance(token)
    assert c.is_finished() and allowed(c, vocab) == {eos}
    c.advance(eos)  # the engine may still report the EOS it sampled
    assert c.is_finished()


def test_eos_is_allowed_exactly_where_the_output_may_end(tok: Tokenizer) -> None:
    c = regex_constraint(r"\d{1,3}", tok)
    eos = tok.eos_token_id
    assert eos not in allowed(c, tok.vocab_size)  # empty is not a match
    c.advance(tok.encode("4", add_special_tokens=False)[0])
    ok = allowed(c, tok.vocab_size)
    assert eos in ok and len(ok) > 1 and not c.is_finished()  # "4" may end or go on
    c.advance(eos)
    assert c.is_finished()


def test_a_forbidden_token_is_a_value_error_and_copies_are_independent(tok: Tokenizer) -> None:
    c = regex_constraint("(yes|no)", tok)
    fork = c.copy()
    c.advance(tok.encode("yes", add_special_tokens=False)[0])
    assert c.is_finished() and not fork.is_finished()
    fork.advance(tok.encode("no", add_special_tokens=False)[0])
    assert fork.is_finished()
    broken = regex_constraint("(yes|no)", tok)
    with pytest.raises(ValueError, match="not allowed by the constraint"):
        broken.advance(tok.encode("maybe", add_special_tokens=False)[0])
    assert not broken.is_finished()
    with pytest.raises(ValueError, match="constraint failed"):  # no silent EOS-only mask after that
        broken.allowed_mask(tok.vocab_size)


@pytest.mark.parametrize(
    ("schema", "needle"),
    [
        ({"type": "objekt"}, "Invalid type: objekt"),
        ('{"type": "object", ', "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ({"type": "array", "uniqueItems": True}, "uniqueItems"),
        ({"not": {"type": "string"}}, "not"),
        ({"type": "string", "format": "shoe-size"}, "Unknown format: shoe-size"),
        ({"type": "integer", "minimum": 5, "maximum": 1}, "minimum (5) is greater than maximum (1)"),
        ({"$ref": "#/$defs/missing"}, "does not exist"),
        ({"type": "string", "pattern": "[a-"}, "pattern '[a-': unclosed character class"),
        ({"type": "number", "maximum": float("nan")}, "not JSON-serializable"),
    ],
)
def test_invalid_schema_is_a_one_line_value_error(tok: Tokenizer, schema: Any, needle: str) -> None:
    with pytest.raises(ValueError) as info:
        json_schema_constraint(schema, tok)
    message = str(info.value)
    assert message.startswith("invalid JSON Schema: ") and needle in message and "\n" not in message


@pytest.mark.parametrize(
    ("pattern", "needle"),
    [
        ("[a-", "unclosed character class"),
        ("(?=a)b", "look-around"),
        ("a{3,2}", "invalid repetition count range"),
        ("(ab", "unclosed group"),
    ],
)
def test_invalid_regex_is_a_one_line_value_error(tok: Tokenizer, pattern: str, needle: str) -> None:
    with pytest.raises(ValueError) as info:
        regex_constraint(pattern, tok)
    message = str(info.value)
    assert message.startswith(f"invalid regex {pattern!r}: ")
    assert needle in message and "\n" not in message


# ---- with SmolLM2 --------------------------------------------------------------------------------


class Timed:
    """A real constraint, recording per allowed_mask() call: whether it was the constraint's first
    (which also sets up the lexer), its seconds, and the seconds since the previous call ended (the
    rest of a decoding step, mostly the forward pass; None for the first)."""

    def __init__(self, inner: GrammarConstraint, times: list[MaskTime]) -> None:
        self.inner, self.times, self.last_end = inner, times, None

    def allowed_mask(self, vocab_size: int) -> torch.Tensor:
        start = time.perf_counter()
        mask = self.inner.allowed_mask(vocab_size)
        end = time.perf_counter()
        self.times.append(
            (self.last_end is None, end - start, None if self.last_end is None else start - self.last_end)
        )
        self.last_end = end
        return mask

    def advance(self, token_id: int) -> None:
        self.inner.advance(token_id)

    def is_finished(self) -> bool:
        return self.inner.is_finished()

    def copy(self) -> Timed:
        return Timed(self.inner.copy(), self.times)


@pytest.fixture(scope="module")
def model(smollm2: Path):
    torch.manual_seed(0)
    return load_model(smollm2).eval()


@pytest.fixture(scope="module")
def mask_times() -> list[MaskTime]:
    return []


def generate(
    model, tok: Tokenizer, request: str, constraint: GrammarConstraint, times: list[MaskTime]
) -> str:
    prompt = tok.apply_chat_template([{"role": "user", "content": request}], add_generation_prompt=True)
    ids = tok.encode(prompt, add_special_tokens=False)
    return constrained_greedy(model, tok, ids, Timed(constraint, times), MAX_NEW)


def obj(required: list[str] | None = None, **props: Any) -> dict[str, Any]:
    """An object schema with no extra properties (a small model would keep inventing them)."""
    return {
        "type": "object",
        "properties": props,
        "required": list(props) if required is None else required,
        "additionalProperties": False,
    }


S = {"type": "string", "maxLength": 20}
POINT = obj(
    x={"type": "integer", "minimum": -10, "maximum": 10}, y={"type": "integer", "minimum": -10, "maximum": 10}
)
SCHEMAS: list[tuple[str, dict[str, Any]]] = [
    ("Describe a person: name and age.", PERSON),
    ("What color is the sky?", obj(color={"enum": ["red", "green", "blue"]})),
    ("Is Paris the capital of France?", obj(answer={"type": "boolean"})),
    ("Give a JSON object whose value field is null.", obj(value={"type": "null"})),
    (
        "List two or three fruits.",
        obj(
            fruits={
                "type": "array",
                "items": {"type": "string", "maxLength": 12},
                "minItems": 2,
                "maxItems": 3,
            }
        ),
    ),
    (
        "Give some lucky numbers.",
        obj(
            numbers={
                "type": "array",
                "items": {"type": "integer", "minimum": 1, "maximum": 99},
                "minItems": 1,
                "maxItems": 4,
            }
        ),
    ),
    ("Where is the Eiffel Tower?", obj(place=obj(city=S, country=S))),
    (
        "What is the temperature in Rome today?",
        obj(celsius={"type": "number", "minimum": -50, "maximum": 60}),
    ),
    ("Describe a pet. The nickname is optional.", obj(["name"], name=S, nickname=S)),
    ("What is 6 times 7?", obj(answer={"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 10}]})),
    ("Give two points on a plane.", {"type": "array", "items": POINT, "minItems": 2, "maxItems": 2}),
    ("Rate the movie Titanic from 1 to 5.", obj(rating={"enum": [1, 2, 3, 4, 5]})),
    ("Report that the system is fine.", obj(status={"const": "ok"}, detail=S)),
    (
        "When did the Apollo 11 landing happen?",
        obj(date={"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"}),
    ),
    (
        "Give a user with an optional nickname.",
        obj(user=S, nickname={"type": ["string", "null"], "maxLength": 10}),
    ),
    (
        "A shopping list with quantities.",
        obj(
            items={
                "type": "array",
                "maxItems": 2,
                "items": obj(name=S, qty={"type": "integer", "minimum": 1, "maximum": 9}),
            }
        ),
    ),
    (
        "A percentage between 0 and 100, exclusive.",
        obj(pct={"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 100}),
    ),
    (
        "A line segment from a start point to an end point.",
        {"$defs": {"p": POINT}, **obj(start={"$ref": "#/$defs/p"}, end={"$ref": "#/$defs/p"})},
    ),
    (
        "An airport code for London.",
        obj(code={"type": "string", "minLength": 3, "maxLength": 3, "pattern": "^[A-Z]+$"}),
    ),
    (
        "Describe a book.",
        obj(
            ["title", "year"],
            title={"type": "string", "maxLength": 30},
            year={"type": "integer", "minimum": 1000, "maximum": 2100},
            in_print={"type": "boolean"},
            genres={"type": "array", "items": {"enum": ["novel", "poetry", "history"]}, "maxItems": 2},
        ),
    ),
]


@pytest.mark.slow
def test_twenty_schemas_give_valid_json(model, tok: Tokenizer, mask_times: list[MaskTime]) -> None:
    start, failures = time.perf_counter(), []
    for request, schema in SCHEMAS:
        c = json_schema_constraint(schema, tok)
        text = generate(model, tok, f"{request} Reply in JSON.", c, mask_times)
        try:
            jsonschema.validate(json.loads(text), schema)
        except (json.JSONDecodeError, jsonschema.ValidationError) as exc:
            failures.append((request, text, str(exc).splitlines()[0]))
        print(f"\n{request!r} -> {text}", end="")
        assert c.is_finished(), text  # closed by the grammar, not cut by max_new_tokens
    print(f"\n{len(SCHEMAS) - len(failures)}/{len(SCHEMAS)} valid in {time.perf_counter() - start:.1f} s")
    assert not failures


@pytest.mark.slow
@pytest.mark.parametrize(
    ("request_text", "pattern"),
    [
        ("When was the Berlin Wall torn down? Give the date.", r"\d{4}-\d{2}-\d{2}"),
        ("Make up a US phone number.", r"\(\d{3}\) \d{3}-\d{4}"),
        ("Is water wet? Answer yes, no or maybe.", r"(yes|no|maybe)"),
        ("What time is lunch?", r"([01]\d|2[0-3]):[0-5]\d"),
        ("Make up an email address.", r"[a-z]{1,10}@[a-z]{1,10}\.(com|org)"),
        ("Name a primary color in capitals.", r"(RED|YELLOW|BLUE)"),
    ],
)
def test_regex_outputs_fullmatch(
    model, tok: Tokenizer, mask_times: list[MaskTime], request_text, pattern
) -> None:
    text = generate(model, tok, request_text, regex_constraint(pattern, tok), mask_times)
    print(f"\n{pattern!r} -> {text!r}")
    assert re.fullmatch(pattern, text), text


@pytest.mark.slow
def test_json_object_output_is_an_object(model, tok: Tokenizer, mask_times: list[MaskTime]) -> None:
    c = json_object_constraint(tok)
    text = generate(model, tok, "Give a JSON object describing a cat with its name and age.", c, mask_times)
    print(f"\njson_object -> {text}")
    assert isinstance(json.loads(text), dict) and c.is_finished()


@pytest.mark.slow
def test_mask_cost_per_token(model, tok: Tokenizer, mask_times: list[MaskTime]) -> None:
    """Runs after the generation tests in this module and reports what their masks cost."""
    if len(mask_times) < 50:  # run alone: make some masks to measure
        generate(
            model,
            tok,
            "Describe a book. Reply in JSON.",
            json_schema_constraint(SCHEMAS[-1][1], tok),
            mask_times,
        )
    first = [t * 1e3 for is_first, t, _ in mask_times if is_first]
    ms = sorted(t * 1e3 for is_first, t, _ in mask_times if not is_first)
    step = statistics.median(rest * 1e3 for _, _, rest in mask_times if rest is not None)
    p99 = ms[int(len(ms) * 0.99)]
    print(
        f"\nmask per token, vocab {tok.vocab_size}: first of a constraint mean {statistics.mean(first):.2f}"
        f" ms, max {max(first):.2f} ms ({len(first)}); others mean {statistics.mean(ms):.3f} ms, median"
        f" {statistics.median(ms):.3f} ms, p99 {p99:.3f} ms, max {ms[-1]:.3f} ms ({len(ms)}); rest of a"
        f" decoding step (forward pass) median {step:.1f} ms"
    )
    # Relative, so a busy machine slows both sides: ~0.35 ms against ~20 ms on 2 idle CPU cores.
    assert statistics.median(ms) < 0.25 * step
