"""ClassificationDataset: label names map to ids by sorted order or a given list, batches pad to the
longest text, bad lines name file and line, and batches follow the step/rank/resume contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from genloop.config import TokenizerConfig
from genloop.errors import UserError
from genloop.model import build_model, preset
from genloop.preprocess.tokenizer import Tokenizer
from genloop.train.classify_data import ClassificationDataset
from genloop.train.objectives import classification

TEXTS = ["the cat sat on the mat", "dogs ran over the hills", "rain in spring", "a mat", "hills and rivers"]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(TEXTS * 10, TokenizerConfig(vocab_size=300), progress=False)


def records(n: int, labels: list) -> list[dict]:
    return [{"text": TEXTS[i % len(TEXTS)] * (1 + i % 3), "label": labels[i % len(labels)]} for i in range(n)]


def make(source: object, tok: Tokenizer, seq_len: int = 64, batch_size: int = 4, **kw: object):
    kw = {"seed": 0, "rank": 0, "world_size": 1, **kw}
    return ClassificationDataset(source, tok, seq_len, batch_size, **kw)  # type: ignore[arg-type]


def write(path: Path, rows: list) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def test_string_labels_map_by_sorted_order(tok: Tokenizer, tmp_path: Path) -> None:
    path = write(tmp_path / "c.jsonl", records(20, ["spam", "ham", "eggs"]))
    ds = make(path, tok)
    assert ds.labels == ["eggs", "ham", "spam"] and ds.num_labels == 3
    assert ds.targets.tolist() == [[2, 1, 0][i % 3] for i in range(20)]
    assert ds.counts == {"eggs": 6, "ham": 7, "spam": 7}


def test_given_labels_fix_the_mapping_for_validation_data(tok: Tokenizer) -> None:
    train = make(records(20, ["pos", "neg"]), tok)
    val = make(records(8, ["neg"]), tok, labels=train.labels)  # one class only: the mapping must hold
    assert val.labels == ["neg", "pos"] and set(val.targets.tolist()) == {0}
    custom = make(records(8, ["pos", "neg"]), tok, labels=["pos", "neg"])
    assert custom.targets.tolist()[:2] == [0, 1]


def test_integer_labels_are_class_ids(tok: Tokenizer) -> None:
    ds = make(records(12, [0, 3, 1]), tok)
    assert ds.labels == ["0", "1", "2", "3"] and ds.targets.tolist()[:3] == [0, 3, 1]
    named = make(records(12, [0, 1]), tok, labels=["neg", "pos"])
    assert named.targets.tolist()[:2] == [0, 1]


def test_batches_pad_to_the_longest_text(tok: Tokenizer) -> None:
    ds = make(records(20, ["a", "b"]), tok, batch_size=5)
    for step in range(len(ds)):
        batch = ds.batch(step)
        chosen = ds.order(0)[step * 5 : (step + 1) * 5]
        lengths = [len(ds.tokens[j]) for j in chosen]
        assert batch["input_ids"].shape == batch["attention_mask"].shape == (5, max(lengths))
        assert batch["attention_mask"].sum(1).tolist() == lengths
        assert batch["labels"].shape == (5,) and batch["labels"].tolist() == ds.targets[chosen].tolist()
        for row, (j, n) in enumerate(zip(chosen, lengths, strict=True)):
            assert batch["input_ids"][row, :n].tolist() == tok.encode(TEXTS[j % 5] * (1 + j % 3))
            assert (batch["input_ids"][row, n:] == tok.pad_token_id).all()


def test_a_batch_trains_an_encoder_classifier(tok: Tokenizer) -> None:
    torch.manual_seed(0)
    model = build_model(preset("tiny-encoder", vocab_size=tok.vocab_size, num_labels=2))
    loss, count = classification(model, make(records(8, ["a", "b"]), tok).batch(0))
    loss.backward()
    assert count == 4 and torch.isfinite(loss)


def test_long_texts_are_truncated_and_empty_ones_skipped_with_counts(tok: Tokenizer) -> None:
    rows = [*records(6, ["a", "b"]), {"text": "the cat " * 100, "label": "a"}, {"text": "", "label": "b"}]
    ds = make(rows, tok, seq_len=16, batch_size=2)
    assert ds.truncated >= 1 and ds.skipped == {"empty_text": 1} and len(ds.tokens) == 7
    assert max(len(t) for t in ds.tokens) == 16
    with pytest.raises(UserError, match=r"no usable examples \(1 empty text\)"):
        make([{"text": "", "label": "a"}], tok)


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        ("[1, 2]", "expected a JSON object"),
        ('{"text": "x"}', "no 'label' field"),
        ('{"label": "x"}', "no 'text' field"),
        ('{"text": 3, "label": "x"}', "'text' must be a string"),
        ('{"text": "x", "label": true}', "must be a string or an integer"),
        ('{"text": "x", "label": -1}', "negative"),
        ('{"text": "x", "label": 2.5}', "must be a string or an integer"),
    ],
)
def test_bad_lines_name_file_and_line(tok: Tokenizer, tmp_path: Path, row: str, needle: str) -> None:
    path = write(tmp_path / "c.jsonl", [*records(2, ["a"]), row])
    with pytest.raises(UserError, match=r"c\.jsonl:3: ") as info:
        make(path, tok, batch_size=1)
    assert needle in str(info.value)


def test_labels_that_do_not_fit_are_user_errors(tok: Tokenizer, tmp_path: Path) -> None:
    path = write(tmp_path / "c.jsonl", records(4, ["pos", "neg", "meh"]))
    with pytest.raises(UserError, match=r"c\.jsonl:3: 'label' 'meh' is not one of the labels \(neg, pos\)"):
        make(path, tok, batch_size=1, labels=["neg", "pos"])
    with pytest.raises(UserError, match="out of range for 2 labels"):
        make(records(4, [0, 2]), tok, batch_size=1, labels=["neg", "pos"])
    with pytest.raises(UserError, match="mix strings and integers"):
        make(records(4, [0, "a"]), tok, batch_size=1)
    with pytest.raises(UserError, match="distinct names"):
        make(records(4, ["a"]), tok, batch_size=1, labels=["a", "a"])
    with pytest.raises(UserError, match="no 'y' field"):
        make(records(4, ["a"]), tok, batch_size=1, label_field="y")


def test_batches_are_deterministic_disjoint_across_ranks_and_resumable(tok: Tokenizer) -> None:
    data = records(40, ["a", "b", "c"])
    a, b = make(data, tok, seed=1), make(data, tok, seed=1)
    assert all(torch.equal(a.batch(3)[k], v) for k, v in b.batch(3).items())
    assert not np.array_equal(a.order(0), a.order(1))  # each epoch its own order
    r0, r1 = make(data, tok, rank=0, world_size=2), make(data, tok, rank=1, world_size=2)
    assert len(r0) == len(r1) == 5 and not set(r0.order(0).tolist()) & set(r1.order(0).tolist())
    it = iter(a)
    reference = [next(it) for _ in range(len(a) + 4)]
    resumed = make(data, tok, seed=1)
    resumed.load_state_dict(json.loads(json.dumps({**a.state_dict(), "step": 7})))
    it = iter(resumed)
    for expected in reference[7:]:
        got = next(it)
        assert all(torch.equal(got[k], expected[k]) for k in expected)
    with pytest.raises(UserError, match="labels"):
        make(data, tok, labels=["c", "b", "a"]).load_state_dict(a.state_dict())
