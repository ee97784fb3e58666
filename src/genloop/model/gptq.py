"""GPTQ rounding for int8 weights (Frantar et al., 2022): choose each layer's int8 codes to minimize the
error of the layer's *outputs* on calibration text, not of its weights.

Round-to-nearest per-row int8 of SmolLM2 (whose weights come from a 4-bit Q4_1 file, a grid one int8
scale per row cannot hold) keeps the float model's top-1 token at 96.5% of positions; GPTQ's codes,
with the same per-row scales and the same kernel, keep it at about 97%. The procedure, per linear
layer with inputs X: H = 2 XᵀX / n, then columns are rounded left to right and each rounding error is
spread over the columns not yet rounded through the Cholesky factor of H⁻¹, so later columns
compensate it. Calibration inputs come from the float model (one pass, all layers at once).

It costs seconds per model, so `cached_int8_codes` keeps the result under the cache folder, keyed by
the model's weight files; a later load of the same model in int8 reads it back.
"""

from __future__ import annotations

import hashlib
import json
import os
import sysconfig
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from genloop.home import cache_dir

REVISION = 1  # bump when the codes for the same weights would change
CALIBRATION_TOKENS = 1024
BLOCK = 128
DAMP = 0.01  # of the mean diagonal of H, added to it: keeps H invertible when inputs are degenerate


def calibration_text() -> str:
    """English prose from Python's own documentation topics (shipped with every CPython), never the
    texts genloop's tests measure quality on."""
    topics = Path(sysconfig.get_paths()["stdlib"]) / "pydoc_data" / "topics.py"
    try:
        return topics.read_text(encoding="utf-8")[20_000:80_000]
    except OSError:
        return ""


@torch.no_grad()
def hessians(model: nn.Module, ids: Tensor, skip: tuple[str, ...] = ("lm_head",)) -> dict[str, Tensor]:
    """2 XᵀX / n of every nn.Linear's inputs over the calibration batch `ids` [B, T]."""
    found: dict[str, Tensor] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name not in skip:

            def hook(mod: nn.Module, inputs: tuple[Tensor, ...], out: Tensor, name: str = name) -> None:
                x = inputs[0].reshape(-1, inputs[0].shape[-1]).float()
                h = 2 * x.T @ x / x.shape[0]
                found[name] = found[name] + h if name in found else h

            hooks.append(module.register_forward_hook(hook))
    try:
        model(ids)
    finally:
        for h in hooks:
            h.remove()
    return found


def gptq_codes(weight: Tensor, hessian: Tensor, scales: Tensor) -> Tensor:
    """int8 codes [N, K] for `weight` with per-row `scales` [N], minimizing ||X(W - Q·s)ᵀ|| for
    the inputs X whose 2XᵀX/n is `hessian` [K, K]."""
    w = weight.detach().float().clone()
    k = w.shape[1]
    h = hessian.clone()
    dead = torch.diag(h) == 0  # inputs that are always zero: their weights do not matter
    h[dead, dead] = 1
    w[:, dead] = 0
    h += DAMP * torch.diag(h).mean() * torch.eye(k)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    s = scales.float()
    codes = torch.zeros_like(w)
    for start in range(0, k, BLOCK):
        end = min(start + BLOCK, k)
        block, errors = w[:, start:end].clone(), torch.zeros(w.shape[0], end - start)
        hinv_block = hinv[start:end, start:end]
        for i in range(end - start):
            column = block[:, i]
            q = torch.round(column / s).clamp_(-127, 127)
            codes[:, start + i] = q
            err = (column - q * s) / hinv_block[i, i]
            block[:, i:] -= err[:, None] * hinv_block[i, i:][None, :]
            errors[:, i] = err
        w[:, end:] -= errors @ hinv[start:end, end:]
    return codes.to(torch.int8)


def int8_scales(weight: Tensor) -> Tensor:
    """Per-row scales as `Int8Linear` stores them: max |w| / 127, rounded to bf16."""
    return (weight.detach().float().abs().amax(1) / 127).clamp_min(1e-12).to(torch.bfloat16)


def calibrate_int8(model: nn.Module, ids: Tensor) -> dict[str, Tensor]:
    """{linear name: codes, linear name + '.scales': scales} for every linear but the head."""
    out: dict[str, Tensor] = {}
    for name, h in hessians(model, ids).items():
        weight = model.get_submodule(name).weight
        scales = int8_scales(weight)
        out[name], out[f"{name}.scales"] = gptq_codes(weight, h, scales), scales
    return out


def apply_int8_codes(model: nn.Module, codes: dict[str, Tensor]) -> None:
    """Put GPTQ codes into an int8-quantized model's layers (same scales as it computed).

    Copied into the layers' own buffers, never assigned: tensors read from a safetensors file sit at
    the file's offsets (8-byte aligned), and the AVX-512 int8 kernel's aligned loads segfault on
    those from 4 rows up (torch 2.13)."""
    for name, value in codes.items():
        if not name.endswith(".scales"):
            layer = model.get_submodule(name)
            layer.weight.copy_(value)
            layer.scales.copy_(codes[f"{name}.scales"])


def cached_int8_codes(path: Path, model: nn.Module, tokenizer: object) -> dict[str, Tensor] | None:
    """GPTQ codes of the model in `path`, computed once and cached; None when no calibration text."""
    weights = sorted(path.glob("*.safetensors"))
    identity = [str(path.resolve()), [(w.name, w.stat().st_size, w.stat().st_mtime_ns) for w in weights]]
    key = hashlib.sha256(json.dumps([identity, REVISION]).encode()).hexdigest()[:24]
    file = cache_dir() / "quantized" / f"int8-gptq-{key}.safetensors"
    if file.is_file():
        try:
            return load_file(file)
        except Exception:  # a damaged cache is recomputed, never trusted
            pass
    text = calibration_text()
    ids = tokenizer.encode(text, add_special_tokens=False)[:CALIBRATION_TOKENS] if text else []  # type: ignore[attr-defined]
    width = min(getattr(model.config, "max_seq_len", 512), 512)
    rows = [ids[i : i + width] for i in range(0, len(ids) - width + 1, width)]
    if not rows:
        return None
    codes = calibrate_int8(model, torch.tensor(rows))
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in codes.items()}, str(tmp))
    os.replace(tmp, file)
    return codes
