"""Weight-only int8/int4 layers: each kernel path against the fp32 matmul of the weights it claims to
hold, the fallbacks for shapes the kernels refuse, whole models, and quality on the real SmolLM2."""

from __future__ import annotations

import math
import sysconfig
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from genloop.generate import greedy_decode
from genloop.model import DynamicCache, avx2, build_model, preset
from genloop.model import quantize as q
from genloop.model.quantize import Int4Linear, Int8Linear, quantize_model


def _linear(k: int, n: int, bias: bool = True) -> nn.Linear:
    torch.manual_seed(0)
    lin = nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        lin.weight.normal_(0, 0.02).mul_(torch.rand(n, 1) + 0.5)  # rows of different ranges
    return lin


def _check(mod: nn.Module, lin: nn.Linear, rows: int, loose: float) -> None:
    x = torch.randn(2, rows, lin.in_features)
    y = mod(x)
    assert y.shape == (2, rows, lin.out_features) and y.dtype == x.dtype
    # tight: the same weights in fp32 on the bf16-rounded input; left over is the bf16 output rounding
    exact = F.linear(x.bfloat16().float(), mod.dequantize(), lin.bias)
    assert (y - exact).abs().max() <= 8e-3 * exact.abs().max()
    # loose: the original layer, off by the quantization error itself
    ref = lin(x)
    assert (y - ref).norm() / ref.norm() < loose


@pytest.mark.parametrize("rows", [1, 5, 300])  # the kernel (decode) and the dense path (prefill)
def test_int8_linear_matches_its_dequantized_weights(rows: int) -> None:
    lin = _linear(576, 1536)
    mod = Int8Linear.from_linear(lin)
    assert mod.use_kernel and mod.weight.dtype == torch.int8
    _check(mod, lin, rows, loose=0.02)


def _int4_on_torch_kernel(lin: nn.Linear, group_size: int) -> Int4Linear:
    """The layer on PyTorch's int4 kernel even where genloop's AVX2 kernel would take it."""
    mod = Int4Linear.from_linear(lin, group_size)
    mod.set_codes(mod.codes(), mod.scales_and_zeros, native=False)
    return mod


@pytest.mark.parametrize("rows", [1, 5, 300])
@pytest.mark.parametrize("group_size", [32, 64])
def test_int4_linear_matches_its_dequantized_weights(rows: int, group_size: int) -> None:
    lin = _linear(576, 1536)
    mod = _int4_on_torch_kernel(lin, group_size)
    assert mod.use_kernel and not mod.native and mod.weight.shape == (1536, 288)
    _check(mod, lin, rows, loose=0.15)


@pytest.mark.parametrize("n", [64, 176, 48])  # full blocks, full + partial, partial only
def test_int4_codes_read_back_from_the_kernel_packing(n: int) -> None:
    lin = _linear(96, n)
    codes, _, _ = q._int4_qparams(lin.weight.detach(), 32)
    assert torch.equal(_int4_on_torch_kernel(lin, 32).codes(), codes)


@pytest.mark.parametrize("cls", [Int8Linear, Int4Linear])
def test_quantizing_in_row_chunks_changes_nothing(cls: type, monkeypatch: pytest.MonkeyPatch) -> None:
    lin = _linear(96, 176)
    whole = cls.from_linear(lin)
    monkeypatch.setattr(q, "QUANT_ROWS", 64)
    chunked = cls.from_linear(lin)
    for name, buf in whole.named_buffers():
        assert torch.equal(buf, getattr(chunked, name)), name


def test_int4_weights_on_a_4bit_grid_come_back_exactly() -> None:
    """A weight that is already asymmetric 4-bit per group (as in a Q4_1 file) loses nothing but the
    bf16 rounding of its scale and zero."""
    torch.manual_seed(0)
    scale, low = torch.rand(32, 4, 1) * 0.01 + 1e-3, torch.randn(32, 4, 1) * 0.01
    codes = torch.randint(0, 16, (32, 4, 32))
    codes[..., 0], codes[..., 1] = 0, 15  # every group spans the full range
    w = (codes * scale + low).view(32, 128)
    lin = nn.Linear(128, 32, bias=False)
    lin.weight.data = w
    mod = Int4Linear.from_linear(lin, 32)
    err = (mod.dequantize() - w).abs().view(32, 4, 32)
    assert (err < 0.1 * scale).all()  # a fraction of a step: every code recovered


@pytest.mark.parametrize(
    ("cls", "k", "n", "kw"),
    [
        (Int8Linear, 13, 7, {}),  # K % 16: the int8 kernel's bf16 path segfaults there, never called
        (Int4Linear, 80, 48, {"group_size": 32}),  # K % group_size
        (Int4Linear, 96, 100, {"group_size": 32}),  # N % 16
    ],
)
def test_shapes_the_kernels_refuse_take_the_fallback(cls: type, k: int, n: int, kw: dict) -> None:
    lin = _linear(k, n)
    mod = cls.from_linear(lin, **kw)
    assert not mod.use_kernel and not mod.native
    for rows in (1, 300):
        _check(mod, lin, rows, loose=0.02 if cls is Int8Linear else 0.15)


def test_any_leading_dims_and_bias_kept() -> None:
    lin = _linear(64, 32)
    for mod in (Int8Linear.from_linear(lin), Int4Linear.from_linear(lin, 32)):
        x = torch.randn(3, 2, 4, 64)
        assert mod(x).shape == (3, 2, 4, 32)
        assert mod(torch.randn(64)).shape == (32,)
        torch.testing.assert_close(mod(torch.zeros(1, 64)), lin.bias[None].detach(), atol=1e-6, rtol=0)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="group_size"):
        Int4Linear.from_linear(_linear(64, 32), 16)
    model = build_model(preset("tiny"))
    with pytest.raises(ValueError, match="mode"):
        quantize_model(model, "int2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="group_size"):
        quantize_model(model, "int4", group_size=48)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantize_model_replaces_every_linear_and_unties_the_head(mode: str) -> None:
    torch.manual_seed(0)
    model = build_model(preset("tiny")).eval()
    table = model.embed.tokens.weight
    ids = torch.randint(0, 512, (2, 12))
    with torch.no_grad():
        before = model(ids)
        assert quantize_model(model, mode) is model
        after = model(ids)
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    # the head: int8, or int4 for an int4 model on genloop's AVX2 kernel (re-scored from the table)
    int4_head = mode == "int4" and avx2.ops() is not None and not q.HAS_VNNI
    assert isinstance(model.lm_head, Int4Linear if int4_head else Int8Linear)
    assert model.lm_head.refine_from is table and model.lm_head.refine_top == q.HEAD_REFINE_TOP
    assert model.embed.tokens.weight is table and table.dtype == torch.float32
    assert model.decoder.blocks[0].mlp.down.use_kernel == (mode == "int8")  # tiny d_ff 176 % 32 != 0
    assert (after - before).norm() / before.norm() < (0.02 if mode == "int8" else 0.15)


def cached_steps(model: nn.Module, ids: torch.Tensor, prefix: int = 9) -> list[torch.Tensor]:
    """Logits of a prefill of `prefix` tokens, then one token at a time, through a DynamicCache."""
    cache = DynamicCache()
    first = [model(ids[:, :prefix], cache=cache)]
    return first + [model(ids[:, i : i + 1], cache=cache) for i in range(prefix, ids.shape[1])]


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_model_decodes_with_a_kv_cache(mode: str) -> None:
    torch.manual_seed(0)
    model = quantize_model(build_model(preset("tiny")).eval(), mode)
    ids = torch.randint(0, 512, (3, 16))
    with torch.no_grad():
        full = model(ids)
        steps = cached_steps(model, ids)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=2e-2, rtol=2e-2)
    out = greedy_decode(model, ids[:, :5], 6)
    assert out.shape == (3, 11)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_a_quantized_model_can_change_float_dtype(mode: str) -> None:
    """model.to(bf16) turns norms and embeddings to bf16; the kernels' scales must stay bf16 too."""
    torch.manual_seed(0)
    model = quantize_model(build_model(preset("tiny")).eval(), mode)
    ids = torch.randint(0, 512, (1, 8))
    with torch.no_grad():
        ref = model(ids)
        model.to(torch.bfloat16)
        out = model(ids)
        model.float()
        again = model(ids)
    assert out.dtype == torch.bfloat16 and again.dtype == torch.float32
    head = model.lm_head
    assert (head.scales if isinstance(head, Int8Linear) else head.scales_and_zeros).dtype == torch.bfloat16
    for y in (out, again):  # norms and embeddings went through bf16 once
        assert (y.float() - ref).norm() / ref.norm() < 0.05


def test_a_row_of_head_logits_does_not_depend_on_its_batch() -> None:
    """Decode-step head inputs [B, 1, d]: each row's logits are the same alone or among up to
    DENSE_ROWS_INT8_HEAD - 1 others (to fp32 rounding of the re-scored top candidates). Without
    native bf16 the head used to switch to its dense path at 32 rows, which rounds the activations
    differently (~1e-3 here) and, for SmolLM2's 49k-row head, was 2.3x slower than the kernel."""
    torch.manual_seed(0)
    model = quantize_model(build_model(preset("tiny")).eval(), "int8")
    head = model.lm_head
    x = torch.randn(q.DENSE_ROWS_INT8_HEAD - 1, 1, head.in_features)
    with torch.no_grad():
        batched = head(x)
        alone = torch.cat([head(x[i : i + 1]) for i in (0, 31, 40, x.shape[0] - 1)])
    assert (batched[[0, 31, 40, x.shape[0] - 1]] - alone).abs().max() < 1e-5


def test_int4_head_can_be_chosen_or_left_alone() -> None:
    model = quantize_model(build_model(preset("tiny")).eval(), "int4", head="int4")
    assert isinstance(model.lm_head, Int4Linear)
    table, x = model.embed.tokens.weight, torch.randn(5, 64)
    with torch.no_grad():
        logits, exact = model.lm_head(x), x @ table.T
    top = exact.topk(8, dim=-1)  # the float head's best candidates come back with their float logits
    assert torch.equal(logits.argmax(-1), exact.argmax(-1))
    torch.testing.assert_close(logits.gather(1, top.indices), top.values, rtol=1e-6, atol=1e-6)
    model = quantize_model(build_model(preset("tiny")).eval(), "int8", head=None)
    assert isinstance(model.lm_head, nn.Linear) and model.lm_head.weight is model.embed.tokens.weight


# --- the real model -------------------------------------------------------------------------------


def _license_ids(path: Path, n: int = 2000) -> torch.Tensor:
    from genloop.preprocess import Tokenizer

    text = (Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt").read_text()
    ids = Tokenizer.load(path).encode(text, add_special_tokens=False)
    while len(ids) < n:
        ids = ids + ids
    return torch.tensor([ids[:n]])


@pytest.mark.slow
def test_smollm2_quality_teacher_forced(smollm2: Path) -> None:
    """Issue 4's bar: top-1 agreement with fp32, teacher-forced on 2,000 tokens of English (the
    Python licence; GPTQ calibrates on other text), int8 >= 97% and int4 >= 90%, perplexity printed.

    The models are loaded as the engine loads them. SmolLM2's weights come from a Q4_1 file (4-bit,
    groups of 32), a grid that one int8 scale per row cannot hold: round-to-nearest int8 keeps 96.5%
    (printed as int8-rtn), GPTQ's codes about 97.2%. int4 with groups of 32 recovers the grid almost
    exactly. The tied head's top candidates are re-scored from the float embedding table.
    """
    from genloop.checkpoint import load_model
    from genloop.generate.loading import load_for_inference

    ids = _license_ids(smollm2)
    results = {}
    with torch.no_grad():
        for mode in ("fp32", "int8-rtn", "int8", "int4"):
            if mode == "int8-rtn":
                model = quantize_model(load_model(smollm2, dtype=torch.float32), "int8")
            else:
                model = load_for_inference(smollm2, "float32" if mode == "fp32" else mode)
            logits = model(ids)[0]
            nll = F.cross_entropy(logits[:-1], ids[0, 1:]).item()
            results[mode] = (logits.argmax(-1), math.exp(nll))
    top1, ppl = results["fp32"]
    for mode, (pred, p) in results.items():
        agree = (pred == top1).float().mean().item()
        print(f"{mode}: top-1 agreement {agree:.4f}  perplexity {p:.3f} ({(p / ppl - 1) * 100:+.2f}%)")
    assert (results["int8"][0] == top1).float().mean() >= 0.97
    assert (results["int4"][0] == top1).float().mean() >= 0.90
    assert results["int8"][1] < ppl * 1.03 and results["int4"][1] < ppl * 1.03


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_smollm2_quantized_greedy_decode_with_cache(smollm2: Path, mode: str) -> None:
    """Greedy decoding through the kernels and a DynamicCache picks what fp32 would pick on the same
    prefix. (Whole continuations may part at a near-tie and both stay fluent: a 135M model has many.)"""
    from genloop.checkpoint import load_model
    from genloop.preprocess import Tokenizer

    tok = Tokenizer.load(smollm2)
    fp32 = load_model(smollm2, dtype=torch.float32)
    model = quantize_model(load_model(smollm2, dtype=torch.float32), mode)  # type: ignore[arg-type]
    hits, total = 0, 0
    for question in ("What is the capital of France?", "Name three primary colors.", "What is 12 times 12?"):
        chat = [{"role": "user", "content": question}]
        prompt = torch.tensor([tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)])
        out = greedy_decode(model, prompt, 24)
        new = out[0, prompt.shape[1] :]
        with torch.no_grad():
            ref = fp32(out[:, :-1])[0, prompt.shape[1] - 1 :]
        top5 = ref.topk(5, dim=-1).indices
        assert (top5 == new[:, None]).any(-1).all(), tok.decode(new.tolist())
        hits, total = hits + int((ref.argmax(-1) == new).sum()), total + len(new)
    print(f"{mode}: fp32 picks the same token at {hits}/{total} greedy steps")
    assert hits / total >= 0.85, hits / total
