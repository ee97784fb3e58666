"""GPTQ int8 codes: lower output error than round-to-nearest on the calibration inputs (the quantity
GPTQ minimizes), same scales and value range as Int8Linear, cached per model and reused."""

from __future__ import annotations

from pathlib import Path

import torch

from genloop.generate.loading import load_for_inference
from genloop.home import cache_dir
from genloop.model.gptq import cached_int8_codes, gptq_codes, hessians, int8_scales
from genloop.model.quantize import Int8Linear
from genloop.preprocess import Tokenizer
from tests.serve.live import tiny_model


def test_gptq_lowers_the_output_error_of_every_layer(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tiny_model(tmp_path)
    model = load_for_inference(path, "float32")
    ids = torch.randint(0, model.config.vocab_size, (2, 48))
    found = hessians(model, ids)
    assert found and "lm_head" not in found
    for name, h in found.items():
        weight = model.get_submodule(name).weight.detach().float()
        scales = int8_scales(weight)
        rtn = Int8Linear.from_linear(model.get_submodule(name))
        codes = gptq_codes(weight, h, scales)
        assert codes.dtype == torch.int8 and int(codes.abs().max()) <= 127
        assert torch.equal(rtn.scales, scales)

        def error(
            q: torch.Tensor, h: torch.Tensor = h, w: torch.Tensor = weight, s: torch.Tensor = scales
        ) -> float:
            d = w - q.float() * s.float()[:, None]
            return float(torch.einsum("nk,kl,nl->", d, h, d))  # = 2/n ||X dᵀ||²

        assert error(codes) <= error(rtn.weight) * 1.0001, name


def test_codes_are_cached_and_used_by_int8_loading(tmp_path: Path) -> None:
    path = tiny_model(tmp_path)
    model = load_for_inference(path, "float32")
    first = cached_int8_codes(path, model, Tokenizer.load(path))
    assert first is not None and list((cache_dir() / "quantized").glob("int8-gptq-*.safetensors"))
    again = cached_int8_codes(path, model, Tokenizer.load(path))
    assert again is not None and all(torch.equal(first[k], again[k]) for k in first)
    quantized = load_for_inference(path, "int8")
    name = next(k for k in first if not k.endswith(".scales"))
    assert torch.equal(quantized.get_submodule(name).weight, first[name])


def test_cached_codes_land_in_aligned_buffers_the_kernel_can_read(tmp_path: Path) -> None:
    """Tensors read back from the cache file sit at 8-byte file offsets; the AVX-512 int8 kernel
    segfaulted on them from 4 rows up (a batched decode step), so the codes are copied in."""
    path = tiny_model(tmp_path)
    cached_int8_codes(path, load_for_inference(path, "float32"), Tokenizer.load(path))
    model = load_for_inference(path, "int8")  # codes from the file this time
    layers = [m for m in model.modules() if isinstance(m, Int8Linear)]
    assert layers and all(m.weight.data_ptr() % 64 == 0 for m in layers)
    with torch.no_grad():
        assert torch.isfinite(model(torch.randint(0, model.config.vocab_size, (8, 1)))).all()
