"""Structured output: JSON Schema, any-JSON-object and regex constraints applied as token masks.

The engine asks a `Constraint` which tokens may come next, masks the rest of the logits to -inf,
samples, and reports the token back, so every finished output is valid by construction: it parses
and matches the schema/regex, not "usually" but always.

Library: llguidance (Rust core with Python bindings, maintained by Microsoft/guidance-ai; one of the
structured-output backends of vLLM, SGLang and llama.cpp). Chosen over xgrammar 0.2.8, outlines-core
0.2.14 and lm-format-enforcer 0.11.3 after trying each on SmolLM2's 49,152-token vocabulary:

- Install: one 3 MB abi3 wheel, no dependencies, nothing touching torch. xgrammar pulls triton
  and transformers; outlines-core and lm-format-enforcer (pure Python) install cleanly too.
- Offline, from our own tokenizer: `LLTokenizer` takes the tokenizer.json text our `tokenizers`
  object serializes (0.3 s, cached per tokenizer here). outlines-core needs a bytes -> ids table we
  would rebuild from byte-level BPE ourselves; lm-format-enforcer works on decoded strings.
- Cost per schema: ~1 ms (an Earley parser over a grammar, masks computed lazily against a token
  trie). outlines-core compiles a regex DFA x vocabulary index per schema (0.17 s for a 3-field
  schema, growing with maxLength and nesting): a cost on every request with a new schema.
- Cost per token: allowed_mask() takes ~0.35 ms median, ~1 ms p99 on 2 CPU cores (parser plus
  ~40 us to unpack the bitmask to bool), well under a forward pass. lm-format-enforcer took
  0.05-1.4 ms in Python and returns id lists, as does outlines-core (up to 0.7 ms).
- Coverage: a real grammar, so nested/recursive JSON (any JSON object), anyOf/oneOf, $ref and
  number bounds work, and keywords it cannot enforce (e.g. uniqueItems, not) are errors instead of
  being silently dropped: "always valid" stays true or the request is refused (ValueError).

JSON is generated compactly (`{"a": 1, "b": [2, 3]}`, no free whitespace): a small model left free
to emit whitespace can loop on newlines until max_tokens and never close the object.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
import weakref
from collections import OrderedDict
from typing import Any, Protocol, runtime_checkable

import llguidance
import numpy as np
import torch
from torch import Tensor

from genloop.model import DecoderLM, DynamicCache
from genloop.preprocess.tokenizer import Tokenizer

__all__ = [
    "Constraint",
    "GrammarConstraint",
    "constrained_greedy",
    "json_object_constraint",
    "json_schema_constraint",
    "regex_constraint",
]

# Compact separators, no optional whitespace (see the module docstring); a schema's own
# "x-guidance" options still override these defaults.
_JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_CACHE_SIZE = 8  # distinct tokenizers kept; an LLTokenizer takes ~33 MB for a 49k vocab


@runtime_checkable
class Constraint(Protocol):
    """Per-sequence state of a structured-output constraint, driven by the engine token by token.

    Loop: `mask = c.allowed_mask(V)`, sample among True, `c.advance(token)`; stop once
    `c.is_finished()` (or when EOS was sampled, which the mask allows exactly when the output may end).
    """

    def allowed_mask(self, vocab_size: int) -> Tensor:
        """bool [vocab_size] on the CPU, True = may come next. Ids past the tokenizer's vocabulary
        (models pad their embedding table) are False."""
        ...

    def advance(self, token_id: int) -> None:
        """Accept the sampled token; a token the mask forbade is a ValueError (an engine bug)."""
        ...

    def is_finished(self) -> bool:
        """The output is complete and valid and nothing may follow: the mask now allows only EOS."""
        ...

    def copy(self) -> Constraint:
        """An independent copy of the current state (n > 1 and beam search fork sequences)."""
        ...


class GrammarConstraint:
    """A `Constraint` backed by an llguidance matcher over one tokenizer's vocabulary."""

    def __init__(self, matcher: llguidance.LLMatcher, n_vocab: int, eos_token_id: int) -> None:
        self._matcher = matcher
        self._n_vocab = n_vocab
        self.eos_token_id = eos_token_id

    def allowed_mask(self, vocab_size: int) -> Tensor:
        mask = torch.zeros(vocab_size, dtype=torch.bool)
        if self.is_finished():  # complete: EOS only, no need to ask the parser
            if self.eos_token_id < vocab_size:
                mask[self.eos_token_id] = True
            return mask
        # One bit per token, little-endian: token i is bit i % 8 of byte i // 8.
        raw = np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8)
        if self._matcher.is_error():  # a rejected token earlier, or a parser limit: never a silent mask
            raise ValueError(f"constraint failed: {_first_line(self._matcher.get_error())}")
        bits = np.unpackbits(raw, bitorder="little")
        n = min(vocab_size, self._n_vocab)
        mask[:n] = torch.from_numpy(bits[:n].view(np.bool_))
        return mask

    def advance(self, token_id: int) -> None:
        if not self._matcher.consume_token(int(token_id)):
            raise ValueError(
                f"token {token_id} is not allowed by the constraint here "
                f"({_first_line(self._matcher.get_error())}): sample only where allowed_mask() is True"
            )

    def is_finished(self) -> bool:
        return self._matcher.is_stopped() and not self._matcher.is_error()

    def can_end(self) -> bool:
        """The output so far is already valid (EOS is allowed), though it may still go on."""
        return self._matcher.is_accepting()

    def copy(self) -> GrammarConstraint:
        """Cheap: the parser state is copied, the compiled grammar and token trie are shared."""
        return GrammarConstraint(self._matcher.deep_copy(), self._n_vocab, self.eos_token_id)

    def __repr__(self) -> str:
        state = "finished" if self.is_finished() else "can end" if self.can_end() else "running"
        return f"GrammarConstraint({state})"


# ---- per-tokenizer index --------------------------------------------------------------------------

_by_hash: OrderedDict[str, llguidance.LLTokenizer] = OrderedDict()
_by_object: weakref.WeakKeyDictionary[Tokenizer, tuple[int, llguidance.LLTokenizer]] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()


def _ll_tokenizer(tokenizer: Tokenizer) -> tuple[llguidance.LLTokenizer, int]:
    """llguidance's view of `tokenizer` (token bytes trie, ~0.3 s for 49k tokens), built once.

    Cached by the SHA-256 of tokenizer.json plus the EOS id, so every `Tokenizer` loaded from the same
    files shares one; a second map keyed by the object itself skips re-serializing (~20 ms) per request
    (so a tokenizer whose backend is changed in place after first use keeps its old index).
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(
            "the tokenizer has no EOS token: constrained decoding needs one to end the output "
            "(set eos_token in tokenizer_config.json)"
        )
    with _lock:
        hit = _by_object.get(tokenizer)
        if hit is not None and hit[0] == eos:
            return hit[1], eos
        backend = tokenizer.backend
        if backend.padding is not None or backend.truncation is not None:
            backend = copy.copy(backend)  # llguidance re-tokenizes text: padding would corrupt that
            backend.no_padding()
            backend.no_truncation()
        text = backend.to_str()
        key = f"{hashlib.sha256(text.encode()).hexdigest()}:{eos}"
        ll = _by_hash.get(key)
        if ll is None:
            ll = llguidance.LLTokenizer(text, n_vocab=tokenizer.vocab_size, eos_token=eos)
            _by_hash[key] = ll
            if len(_by_hash) > _CACHE_SIZE:
                _by_hash.popitem(last=False)
        _by_hash.move_to_end(key)
        _by_object[tokenizer] = (eos, ll)
        return ll, eos


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else "no detail given"


def _problem(message: str, name_pattern: bool = True) -> str:
    """llguidance's errors can span lines (a regex caret diagram): keep the line naming the problem."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    detail = next((line.removeprefix("error: ") for line in lines if line.startswith("error: ")), None)
    if detail is None:
        return " ".join(" ".join(lines).split())[:300] or "no detail given"
    if name_pattern and "regex parse error" in lines[0] and len(lines) > 1:  # a pattern inside a schema
        detail = f"pattern {lines[1]!r}: {detail}"
    return detail[:300]


def _compile(grammar: str, tokenizer: Tokenizer, what: str, name_pattern: bool = True) -> GrammarConstraint:
    ll, eos = _ll_tokenizer(tokenizer)
    matcher = llguidance.LLMatcher(ll, grammar, log_level=0)
    if matcher.is_error():
        raise ValueError(f"{what}: {_problem(matcher.get_error(), name_pattern)}")
    return GrammarConstraint(matcher, ll.vocab_size, eos)


# ---- factories ------------------------------------------------------------------------------------


def json_schema_constraint(schema: dict[str, Any] | str, tokenizer: Tokenizer) -> GrammarConstraint:
    """Output = one JSON value valid against `schema` (a dict or its JSON text).

    Invalid schemas, and keywords llguidance cannot enforce (uniqueItems, not, unknown formats, ...),
    are a ValueError naming the problem: better to refuse a request than to return invalid output.
    """
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"invalid JSON Schema: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
            ) from None
    if not isinstance(schema, dict | bool):
        raise ValueError(f"invalid JSON Schema: must be a JSON object, got {type(schema).__name__}")
    try:
        text = json.dumps(schema, allow_nan=False)
    except (TypeError, ValueError) as exc:  # a dict holding a set, a NaN, ...: not JSON at all
        raise ValueError(f"invalid JSON Schema: not JSON-serializable ({exc})") from None
    grammar = llguidance.LLMatcher.grammar_from_json_schema(text, defaults=_JSON_OPTIONS)
    return _compile(grammar, tokenizer, "invalid JSON Schema")


def json_object_constraint(tokenizer: Tokenizer) -> GrammarConstraint:
    """Output = any JSON object (OpenAI's response_format {"type": "json_object"})."""
    return json_schema_constraint({"type": "object"}, tokenizer)


def regex_constraint(pattern: str, tokenizer: Tokenizer) -> GrammarConstraint:
    """Output fullmatches `pattern` (Rust regex syntax: like Python's `re` without look-around or
    backreferences, which a token mask cannot enforce; those are a ValueError)."""
    if not isinstance(pattern, str):
        raise ValueError(f"invalid regex: must be a string, got {type(pattern).__name__}")
    grammar = llguidance.LLMatcher.grammar_from_regex(pattern)
    return _compile(grammar, tokenizer, f"invalid regex {pattern!r}", name_pattern=False)


# ---- reference loop -------------------------------------------------------------------------------


@torch.no_grad()
def constrained_greedy(
    model: DecoderLM,
    tokenizer: Tokenizer,
    prompt_ids: list[int],
    constraint: Constraint,
    max_new_tokens: int,
) -> str:
    """Greedy decoding under `constraint`: the reference for how the engine applies masks.

    Stops when the constraint is finished (no EOS forward pass needed), when EOS is chosen (allowed
    only where the output may end) or after max_new_tokens, in which case the text may be incomplete.
    """
    eos = tokenizer.eos_token_id
    cache = DynamicCache()
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=model.device)
    logits = model(ids, cache=cache, logits_to_keep=1)[0, -1]
    out: list[int] = []
    for _ in range(max_new_tokens):
        if constraint.is_finished():
            break
        mask = constraint.allowed_mask(logits.shape[-1]).to(logits.device)
        token = int(logits.masked_fill(~mask, float("-inf")).argmax())
        constraint.advance(token)
        if token == eos:
            break
        out.append(token)
        if constraint.is_finished():
            break
        logits = model(torch.tensor([[token]], device=model.device), cache=cache)[0, -1]
    return tokenizer.decode(out)


def constraint_for(response_format: dict[str, Any], tokenizer: Tokenizer) -> Constraint:
    """The constraint for an OpenAI-style `response_format` (json_object, json_schema, regex)."""
    kind = response_format.get("type")
    if kind == "json_object":
        return json_object_constraint(tokenizer)
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema", spec) if isinstance(spec, dict) else spec
        return json_schema_constraint(schema, tokenizer)
    if kind == "regex":
        return regex_constraint(response_format.get("regex", ""), tokenizer)
    raise ValueError(
        f"response_format type '{kind}' is not supported; use text, json_object, json_schema or regex"
    )
