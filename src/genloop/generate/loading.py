"""Loading a model for generation in the dtype asked for (float, or weight-only int8/int4)."""

from __future__ import annotations

from pathlib import Path

import torch

from genloop.checkpoint import load_model
from genloop.model import DecoderLM, EncoderDecoderLM

DTYPES = ("float32", "bfloat16", "int8", "int4")


def load_for_inference(path: Path, dtype: str) -> DecoderLM | EncoderDecoderLM:
    """The model in the dtype asked for; int8/int4 are weight-only, activations stay float."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype '{dtype}' is not supported; choose one of {', '.join(DTYPES)}")
    torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    model = load_model(path, dtype=torch_dtype)
    if dtype in ("int8", "int4"):
        from genloop.model.quantize import quantize_model

        codes = _gptq_codes(path, model) if dtype == "int8" else None
        model = quantize_model(model, dtype)
        if codes:
            from genloop.model.gptq import apply_int8_codes

            apply_int8_codes(model, codes)
    if not isinstance(model, DecoderLM | EncoderDecoderLM):
        raise ValueError(f"{path} is an encoder-only model; it embeds and classifies, it cannot generate")
    return model


def _gptq_codes(path: Path, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """int8 codes chosen by GPTQ on calibration text (cached); None for a model without a tokenizer
    or an encoder-decoder, which then keep round-to-nearest codes."""
    if not isinstance(model, DecoderLM) or not (path / "tokenizer.json").is_file():
        return None
    from genloop.model.gptq import cached_int8_codes
    from genloop.preprocess import Tokenizer

    return cached_int8_codes(path, model, Tokenizer.load(path))
