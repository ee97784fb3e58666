"""A labelled set of PII and look-alikes: recall and precision per kind, through the pipeline."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from genloop.data.pii import PII_KINDS, PLACEHOLDERS, scrub
from genloop.postprocess import load_postprocess

CASES = [json.loads(line) for line in (Path(__file__).parent / "pii_cases.jsonl").read_text().splitlines()]


def test_the_set_is_large_and_has_both_sides() -> None:
    assert len(CASES) >= 100
    assert sum(not c["kinds"] for c in CASES) >= 40  # look-alikes
    assert {k for c in CASES for k in c["kinds"]} == set(PII_KINDS)


def test_recall_and_precision_per_kind() -> None:
    pipeline = load_postprocess({"format": {"normalize_whitespace": False}})
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for case in CASES:
        result = pipeline.process(case["text"])
        found = {e.rule.removeprefix("pii:") for e in result.events if e.rule.startswith("pii:")}
        expected = set(case["kinds"])
        tp.update(found & expected)
        fp.update(found - expected)
        fn.update(expected - found)
        # the pipeline and the data scrubber are one implementation: same text out
        assert result.text == scrub(case["text"])[0]
        assert all(e.detail in PLACEHOLDERS.values() for e in result.events if e.rule.startswith("pii:"))
    lines = [f"{'kind':12} {'recall':>7} {'precision':>9}  (tp fp fn)"]
    for kind in (*PII_KINDS, "overall"):
        t, f, n = (
            (sum(c.values()) for c in (tp, fp, fn)) if kind == "overall" else (tp[kind], fp[kind], fn[kind])
        )
        lines.append(f"{kind:12} {t / max(t + n, 1):7.3f} {t / max(t + f, 1):9.3f}  ({t} {f} {n})")
    print("\nPII labelled set, " + f"{len(CASES)} strings\n" + "\n".join(lines), file=sys.__stderr__)
    for kind in ("credit_card", "email", "iban"):
        assert fn[kind] == 0, f"missed a true {kind}"
    assert sum(tp.values()) / (sum(tp.values()) + sum(fn.values())) >= 0.95
    assert sum(tp.values()) / (sum(tp.values()) + sum(fp.values())) >= 0.95


def test_find_reports_spans_of_the_original_text() -> None:
    from genloop.data.pii import find

    text = "token: Zk39fQ1xLp0aB7mN2cV8 then mail a@b.io and IBAN DE89370400440532013000 ok"
    spans = [(text[m.start : m.end], m.kind) for m in find(text)]
    assert spans == [
        ("Zk39fQ1xLp0aB7mN2cV8", "secret"),
        ("a@b.io", "email"),
        ("DE89370400440532013000", "iban"),
    ]
