"""`Pipeline`: formatting and filtering of one answer, whole (`process`) or streamed (`stream`).

Stages, in order: special-token stripping -> filters (PII, blocklist, regex) -> sentence trim
(only with `trim_to_sentence`) -> whitespace and code fences -> capitalization -> end punctuation.
Each stage releases text that no later piece can change, so the concatenation of a stream's
`feed` results and `finish` equals `process(whole).text` for any split of the answer. Rules that
are whole-text by nature act at the edges: capitalization at the first letter, trimming, fence
closing and end punctuation at `finish`; hooks at `finish` (see hooks.py).

A blocked answer: `process` returns the refusal as its text; a stream stops releasing text (it
never releases the blocked match, nor anything after it) and the caller appends `refusal` and ends
with finish_reason "content_filter".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from genloop.errors import UserError
from genloop.postprocess.blocklist import Blocklist, read_blocklists
from genloop.postprocess.config import PostprocessConfig
from genloop.postprocess.filters import CONTEXT, FilterStage
from genloop.postprocess.formatting import (
    Capitalize,
    SentenceTrim,
    SpecialStripper,
    Whitespace,
    end_punctuation,
)
from genloop.postprocess.hooks import ModelScorer, import_callable


@dataclass(frozen=True)
class Event:
    """A rule that fired. `detail` never holds matched PII (the placeholder instead)."""

    rule: str
    action: str
    detail: str | None


@dataclass
class Result:
    text: str
    blocked: bool
    events: list[Event]


@dataclass
class _Hook:
    name: str
    score: Callable[..., float]
    threshold: float
    fires_below: bool
    action: str
    hold: bool
    needs_prompt: bool


class Pipeline:
    """Built by `load_postprocess`; stateless and shareable: per-answer state lives in `StreamState`."""

    def __init__(self, config: PostprocessConfig, special_tokens: Sequence[str] = ()) -> None:
        self.config = config
        fmt, flt = config.format, config.filter
        self.special_tokens = tuple(special_tokens)
        self.refusal = flt.refusal
        self.inputs = flt.inputs
        entries = read_blocklists(flt.blocklist, flt.blocklist_files)
        blocklist = Blocklist(entries, flt.leetspeak) if entries else None
        self.filters = FilterStage(
            tuple(k for k in ("secret", "email", "iban", "credit_card", "ip", "phone") if k in flt.pii),
            blocklist,
            flt.blocklist_action,
            flt.regex,
        )
        self.hooks: list[_Hook] = []
        if flt.moderation is not None:
            m = flt.moderation
            score = (
                ModelScorer(m.model, m.label) if m.model else import_callable(m.callable, "filter.moderation")
            )
            self.hooks.append(_Hook("moderation", score, m.threshold, False, m.action, m.hold, False))
        if flt.relevance is not None:
            r = flt.relevance
            score = import_callable(r.callable, "filter.relevance")
            self.hooks.append(_Hook("relevance", score, r.threshold, True, r.action, r.hold, True))
        self.hold_all = any(h.hold and h.action == "block" for h in self.hooks)
        self.holdback = max(
            [36 if fmt.strip_special else 0, *(len(t) for t in self.special_tokens)]
            + [r.max_length for r in flt.regex]
            + [blocklist.longest if blocklist else 0]
            + [CONTEXT if self.filters.pii_kinds else 0]
        )
        """Typical characters a stream holds back (the longest fixed-length rule). PII and blocklist
        holds are dynamic: usually the trailing word, a PEM block until its END line."""

    def is_noop(self) -> bool:
        f = self.config.format
        return (
            not (f.strip_special or f.normalize_whitespace or f.close_code_fence or f.trim_to_sentence)
            and not (f.capitalize or f.end_punctuation)
            and self.filters.is_noop()
            and not self.hooks
        )

    def stream(self, *, prompt: str | None = None) -> StreamState:
        return StreamState(self, prompt)

    def process(self, text: str, *, truncated: bool = False, prompt: str | None = None) -> Result:
        state = self.stream(prompt=prompt)
        out = state.feed(text) + state.finish(truncated=truncated)
        return Result(self.refusal if state.blocked else out, state.blocked, state.events)

    def check_input(self, text: str) -> Result:
        """The filters (PII, blocklist, regex) and moderation on a prompt; no formatting. Callers apply
        it when `pipeline.inputs` (the config's `filter.inputs`) is set."""
        events: list[Event] = []
        blocked = False
        pieces: list[str] = []
        last = 0
        for hit in self.filters.hits(text):
            events.append(Event(hit.rule, hit.action, hit.detail))
            if hit.replacement is None:
                blocked = True
            elif hit.start >= last:
                pieces += [text[last : hit.start], hit.replacement]
                last = hit.end
        out = "".join(pieces) + text[last:]
        for hook in self.hooks:
            if not hook.needs_prompt:
                blocked = _run_hook(hook, events, out, None) or blocked
        return Result(self.refusal if blocked else out, blocked, events)


def _run_hook(hook: _Hook, events: list[Event], text: str, prompt: str | None) -> bool:
    """True when the hook fires with action block."""
    try:
        score = float(hook.score(prompt or "", text) if hook.needs_prompt else hook.score(text))
    except UserError:
        raise
    except Exception as exc:  # a broken hook must not take the server down; it blocks, visibly
        events.append(Event(hook.name, "block", f"hook failed: {type(exc).__name__}"))
        return True
    fired = score < hook.threshold if hook.fires_below else score >= hook.threshold
    if fired:
        events.append(Event(hook.name, hook.action, f"score {score:.3f}"))
    return fired and hook.action == "block"


@dataclass
class _FilterWindow:
    """The filter stage's stream state: `buf` is the text from absolute offset `base`; everything
    before `done` has been released."""

    buf: str = ""
    base: int = 0
    done: int = 0


class StreamState:
    """One streamed answer. `feed` returns the text safe to release now; `finish` the rest."""

    def __init__(self, pipeline: Pipeline, prompt: str | None) -> None:
        self.pipeline = pipeline
        self.prompt = prompt
        self.blocked = False
        self.events: list[Event] = []
        self.finished = False
        fmt = pipeline.config.format
        emit = self._emit
        self._special = SpecialStripper(pipeline.special_tokens, emit) if fmt.strip_special else None
        self._window = _FilterWindow()
        self._trim = SentenceTrim(emit) if fmt.trim_to_sentence else None
        self._space = (
            Whitespace(fmt.normalize_whitespace, fmt.close_code_fence, emit)
            if fmt.normalize_whitespace or fmt.close_code_fence
            else None
        )
        self._capitalize = Capitalize(emit) if fmt.capitalize else None
        self._last = ""
        self._held: list[str] = []  # everything, when a hook holds the answer
        self._released: list[str] = []  # what the hooks will see

    def _emit(self, rule: str, action: str, detail: str | None) -> None:
        self.events.append(Event(rule, action, detail))

    def _filter(self, piece: str, final: bool) -> str:
        stage, w = self.pipeline.filters, self._window
        if stage.is_noop():
            return piece
        w.buf += piece
        start = w.done - w.base
        cut = len(w.buf) if final else stage.hold_from(w.buf, start)
        if cut <= start:
            return ""
        hits = stage.hits(w.buf)
        for h in hits:
            if h.start < cut < h.end or (not final and h.end > len(w.buf) - 2 and h.start < cut):
                cut = min(cut, h.start)
        out: list[str] = []
        pos = start
        for h in hits:
            if h.end <= start or h.start >= cut:
                continue
            self._emit(h.rule, h.action, h.detail)
            if h.replacement is None:
                self.blocked = True
                return ""
            if h.start < pos:  # overlaps what went out already: never happens for whole-text-equal windows
                if h.end > pos:
                    out.append(h.replacement if h.action == "redact" else "*" * (h.end - pos))
                    pos = h.end
                continue
            out += [w.buf[pos : h.start], h.replacement]
            pos = h.end
        out.append(w.buf[pos:cut])
        w.done = w.base + cut
        drop = max(0, cut - CONTEXT)
        w.buf, w.base = w.buf[drop:], w.base + drop
        return "".join(out)

    def _run(self, piece: str, final: bool, truncated: bool) -> str:
        if self._special is not None:
            piece = self._special.feed(piece) + (self._special.finish() if final else "")
        piece = self._filter(piece, final)
        if self.blocked:
            return ""
        if self._trim is not None:
            piece = self._trim.feed(piece) + (self._trim.finish(truncated) if final else "")
        if self._space is not None:
            piece = self._space.feed(piece) + (self._space.finish() if final else "")
        if self._capitalize is not None:
            piece = self._capitalize.feed(piece)
        if final and self.pipeline.config.format.end_punctuation:
            mark = end_punctuation((piece or self._last)[-1:])
            if mark:
                self._emit("format:end_punctuation", "format", mark)
                piece += mark
        if piece:
            self._last = piece[-1]
        return piece

    def feed(self, piece: str) -> str:
        """Text safe to release now ('' while holding back, and always '' once blocked)."""
        if self.blocked or self.finished:
            return ""
        out = self._run(piece, False, False)
        if self.pipeline.hold_all:
            self._held.append(out)
            return ""
        self._released.append(out)
        return out

    def finish(self, *, truncated: bool = False) -> str:
        """The rest of the answer, formatted; then the hooks run on the whole answer."""
        if self.blocked or self.finished:
            return ""
        self.finished = True
        out = self._run("", True, truncated)
        if self.blocked:
            return ""
        whole = "".join(self._held or self._released) + out
        for hook in self.pipeline.hooks:
            if _run_hook(hook, self.events, whole, self.prompt):
                self.blocked = True
        if self.pipeline.hold_all:
            return "" if self.blocked else whole
        return "" if self.blocked else out


def load_postprocess(
    data: dict[str, Any] | PostprocessConfig | None, *, special_tokens: Sequence[str] = ()
) -> Pipeline:
    """The pipeline a config describes (None: the defaults). Bad config is one UserError line."""
    if data is None:
        config = PostprocessConfig()
    elif isinstance(data, PostprocessConfig):
        config = data
    else:
        try:
            config = PostprocessConfig.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "postprocess"
            raise UserError(
                f"postprocess config: {where}: {err['msg']} (fix the `postprocess:` section)"
            ) from None
    return Pipeline(config, special_tokens)
