"""The moderation hook with an encoder-only genloop classifier directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from genloop.checkpoint import save_model
from genloop.config import ModelConfig, TokenizerConfig
from genloop.errors import UserError
from genloop.model import build_model
from genloop.postprocess import load_postprocess
from genloop.preprocess.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny encoder whose head says 'unsafe' (class 1) with ~0.98 probability for any text."""
    tokenizer = Tokenizer.train(
        ["some text to learn bytes from"] * 20, TokenizerConfig(vocab_size=300), progress=False
    )
    cfg = ModelConfig(
        arch="encoder",
        vocab_size=len(tokenizer),
        d_model=32,
        n_layers=1,
        n_heads=2,
        d_ff=64,
        max_seq_len=64,
        num_labels=2,
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, 4.0]))
    path = save_model(model, tmp_path_factory.mktemp("moderation") / "clf", tokenizer=tokenizer)
    (path / "labels.json").write_text(json.dumps(["safe", "unsafe"]))
    return path


def test_model_probability_of_the_label_blocks(classifier: Path) -> None:
    unsafe = load_postprocess(
        {"filter": {"moderation": {"model": str(classifier), "label": "unsafe", "threshold": 0.9}}}
    )
    result = unsafe.process("any answer at all")
    assert result.blocked and result.events[-1].rule == "moderation"
    assert float(result.events[-1].detail.split()[-1]) == pytest.approx(
        torch.sigmoid(torch.tensor(4.0)).item(), abs=1e-3
    )
    safe = load_postprocess(
        {"filter": {"moderation": {"model": str(classifier), "label": 0, "threshold": 0.9}}}
    )
    assert not safe.process("any answer at all").blocked


def test_model_label_must_exist(classifier: Path) -> None:
    with pytest.raises(UserError, match="not listed"):
        load_postprocess({"filter": {"moderation": {"model": str(classifier), "label": "toxic"}}})
    with pytest.raises(UserError, match="out of range"):
        load_postprocess({"filter": {"moderation": {"model": str(classifier), "label": 5}}})
    with pytest.raises(UserError, match="not a directory"):
        load_postprocess({"filter": {"moderation": {"model": str(classifier / "nope")}}})
