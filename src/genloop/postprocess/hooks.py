"""Moderation and relevance hooks: a score from a callable or from an encoder-only genloop model.

Hooks see the whole answer, so in a stream they run at finish: they cannot un-send text already
released, only block the end (the caller appends the refusal, finish_reason content_filter). Set
`hold: true` to make the stream hold the whole answer until the hook has run.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from genloop.errors import UserError


def import_callable(spec: str | Callable[..., float], where: str) -> Callable[..., float]:
    """A Python callable, or one named 'package.module:function'."""
    if callable(spec):
        return spec
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UserError(
            f"{where}: {spec!r} is not 'module:function'; name a function, e.g. mypkg.safety:score"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(
            f"{where}: cannot import {module_name!r} ({exc}); check the name and PYTHONPATH"
        ) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UserError(f"{where}: {module_name!r} has no function {attr!r}")
    return fn


class ModelScorer:
    """P(label | text) from an encoder-only genloop classifier directory (weights, config, tokenizer;
    optional labels.json naming the classes in training order). Loaded once, run on CPU or the
    device given, without gradients."""

    def __init__(self, path: str, label: str | int, device: str = "cpu", max_tokens: int = 512) -> None:
        from genloop.checkpoint import load_model
        from genloop.model.transformer import EncoderModel
        from genloop.preprocess.tokenizer import Tokenizer

        directory = Path(path).expanduser()
        if not directory.is_dir():
            raise UserError(
                f"moderation model {str(directory)!r} is not a directory; give a genloop model directory"
            )
        model = load_model(directory, device=device)
        if not isinstance(model, EncoderModel):
            raise UserError(
                f"moderation model {str(directory)!r} is not an encoder-only classifier (arch: encoder)"
            )
        self.model = model
        self.tokenizer = Tokenizer.load(directory)
        self.index = self._label_index(directory, label, model.config.num_labels)
        self.device = device
        self.max_tokens = max_tokens

    @staticmethod
    def _label_index(directory: Path, label: str | int, num_labels: int) -> int:
        if isinstance(label, int):
            index = label
        else:
            names_file = directory / "labels.json"
            names: Any = json.loads(names_file.read_text()) if names_file.is_file() else None
            if not isinstance(names, list) or label not in names:
                raise UserError(
                    f"moderation label {label!r} is not listed in {names_file}; give the class index instead"
                )
            index = names.index(label)
        if not 0 <= index < num_labels:
            raise UserError(f"moderation label index {index} is out of range for {num_labels} classes")
        return index

    def __call__(self, text: str) -> float:
        import torch

        ids = self.tokenizer.encode(text)[: self.max_tokens] or [0]
        with torch.no_grad():
            logits = self.model(torch.tensor([ids], device=self.device))
        return float(torch.softmax(logits.float(), dim=-1)[0, self.index])
