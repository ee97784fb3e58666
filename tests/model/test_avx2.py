"""genloop's AVX2 kernels (int4/int8 weights x int8 activations): against a float64 oracle of the
arithmetic they claim, a row's result alone or in a batch, the packings, refused input, and the
switch that turns them off."""

from __future__ import annotations

import pytest
import torch

from genloop.model import avx2
from genloop.model import quantize as q
from genloop.model.quantize import Int4Linear, Int8Linear

pytestmark = pytest.mark.skipif(avx2.ops() is None, reason="needs an x86 CPU with AVX2 and a C++ compiler")


def _activation_codes(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row and block of 32: codes round(x * 127 / absmax) (fp32, half to even) and step absmax / 127."""
    blocks = x.view(x.shape[0], -1, 32)
    amax = blocks.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, 127 / amax, torch.zeros_like(amax))
    return torch.round(blocks * inv).double(), (amax / 127).double()


def _weights(n: int, k: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=gen) * (torch.rand(n, 1, generator=gen) + 0.5) * 0.02


def _inputs(m: int, k: int) -> torch.Tensor:
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(1))
    x[:, 5] *= 30  # an outlier channel, as real activations have
    if m > 2:
        x[2] = 0  # an all-zero row: step 0, no division by zero
    return x


SHAPES = [(1, 64, 8), (3, 96, 24), (4, 64, 16), (9, 576, 1536), (6, 1536, 576)]


@pytest.mark.parametrize(("m", "k", "n"), SHAPES)
def test_int4_kernel_matches_the_float64_oracle(m: int, k: int, n: int) -> None:
    codes, scale, zero = q._int4_qparams(_weights(n, k), 32)
    w, scales, zeros = avx2.pack_int4(codes, scale, zero)
    x = _inputs(m, k)
    y = avx2.ops().int4_mm(x, w, scales, zeros)
    c, step = _activation_codes(x)  # [M, G, 32], [M, G, 1]
    qw = codes.view(n, -1, 32).double()  # [N, G, 32]
    dots = torch.einsum("mgj,ngj->mng", c, qw)
    wz = (zero.float() - 8 * scale.float()).double()  # packed in fp32, as the kernel reads it
    ref = (step[..., 0][:, None] * (scale.double()[None] * dots + wz[None] * c.sum(-1)[:, None])).sum(-1)
    assert y.shape == (m, n) and y.dtype == torch.float32
    assert (y.double() - ref).abs().max() <= 1e-5 * ref.abs().max()


@pytest.mark.parametrize(("m", "k", "n"), SHAPES)
def test_int8_kernel_matches_the_float64_oracle(m: int, k: int, n: int) -> None:
    wf = _weights(n, k)
    scales = wf.abs().amax(1) / 127
    codes = torch.round(wf / scales[:, None]).clamp(-127, 127).to(torch.int8)
    x = _inputs(m, k)
    y = avx2.ops().int8_mm(x, avx2.pack_int8(codes), scales)
    c, step = _activation_codes(x)
    dots = torch.einsum("mgj,ngj->mng", c, codes.view(n, -1, 32).double())
    ref = (step[..., 0][:, None] * dots).sum(-1) * scales.double()
    assert (y.double() - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_a_row_gives_the_same_bits_alone_or_in_any_batch() -> None:
    """Rows go through tiles of 4 and a remainder of single rows; both do the same arithmetic."""
    k, n = 576, 64
    codes, scale, zero = q._int4_qparams(_weights(n, k), 32)
    w4 = avx2.pack_int4(codes, scale, zero)
    w8 = avx2.pack_int8(torch.randint(-127, 128, (n, k), dtype=torch.int8))
    s8 = torch.rand(n) * 1e-3
    x = _inputs(11, k)
    for mm in (lambda t: avx2.ops().int4_mm(t, *w4), lambda t: avx2.ops().int8_mm(t, w8, s8)):
        batched = mm(x)
        for i in (0, 3, 8, 10):
            assert torch.equal(mm(x[i : i + 1].clone()), batched[i : i + 1])
        assert torch.equal(mm(x[5:]), batched[5:])


def test_packings_read_back() -> None:
    codes = torch.randint(0, 16, (24, 96), dtype=torch.uint8)
    w, _, _ = avx2.pack_int4(codes, torch.ones(24, 3), torch.zeros(24, 3))
    assert w.shape == (3, 3 * 128) and torch.equal(avx2.unpack_int4(w), codes)
    lin = torch.nn.Linear(96, 48)
    mod = Int4Linear.from_linear(lin, 32)
    assert mod.native and not mod.use_kernel
    assert torch.equal(mod.codes(), q._int4_qparams(lin.weight.detach(), 32)[0])


def test_no_rows_and_refused_input() -> None:
    codes, scale, zero = q._int4_qparams(_weights(16, 64), 32)
    w, scales, zeros = avx2.pack_int4(codes, scale, zero)
    assert avx2.ops().int4_mm(torch.zeros(0, 64), w, scales, zeros).shape == (0, 16)
    bad = [
        (torch.zeros(2, 64, dtype=torch.bfloat16), "float32"),
        (torch.zeros(64, 2).t(), "contiguous"),
        (torch.zeros(2, 48), "multiple of 32"),
        (torch.zeros(2, 96), "packed weights"),
    ]
    for x, message in bad:
        with pytest.raises(RuntimeError, match=message):
            avx2.ops().int4_mm(x, w, scales, zeros)
    with pytest.raises(RuntimeError, match="scales"):
        avx2.ops().int4_mm(torch.zeros(2, 64), w, scales[:1], zeros)


def test_switched_off_the_layers_keep_pytorchs_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    lin = torch.nn.Linear(576, 1536)
    monkeypatch.setenv("GENLOOP_AVX2_KERNELS", "0")
    assert avx2.ops() is None
    off4, off8 = Int4Linear.from_linear(lin, 32), Int8Linear.from_linear(lin)
    off8.pack_avx2()
    assert not off4.native and off4.use_kernel == q.HAS_INT4_KERNEL and not off8.native
    monkeypatch.delenv("GENLOOP_AVX2_KERNELS")
    on4 = Int4Linear.from_linear(lin, 32)
    assert on4.native and torch.equal(on4.codes(), off4.codes())
    x = torch.randn(3, 576)
    ref = torch.nn.functional.linear(x, on4.dequantize(), lin.bias)
    for mod in (on4, off4):  # both within their rounding (int8 or bf16 activations) of the same weights
        assert (mod(x) - ref).norm() / ref.norm() < 0.01


def test_rms_norm_and_rotary_ops_match_the_pytorch_expressions() -> None:
    from genloop.model.layers import RMSNorm, apply_rotary

    norm = RMSNorm(576)
    torch.nn.init.normal_(norm.weight, 1.0, 0.1)
    x = torch.randn(3, 5, 576) * 4
    with torch.no_grad():
        ref = norm(x)
        norm.native = True
        out = norm(x)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)  # the sum of squares in another order
    q = torch.randn(2, 5, 9, 64).transpose(1, 2)  # [B, H, T, d] view of a projection, as in attention
    cos, sin = torch.randn(2, 1, 5, 64), torch.randn(2, 1, 5, 64)
    for c, s in ((cos, sin), (cos[:1], sin[:1])):  # per row, or one set broadcast over the batch
        assert torch.equal(apply_rotary(q, c, s, native=True), apply_rotary(q, c, s))


@pytest.mark.parametrize(("b", "s", "heads", "kv_heads"), [(1, 1, 9, 3), (5, 37, 9, 3), (3, 130, 4, 4)])
def test_decode_attention_matches_sdpa(b: int, s: int, heads: int, kv_heads: int) -> None:
    q = torch.randn(b, heads, 1, 64)
    cache_k, cache_v = torch.randn(2, b, kv_heads, s + 9, 64).unbind(0)
    k, v = cache_k[:, :, :s], cache_v[:, :, :s]  # views of a longer cache, as the engine passes them
    mask = torch.rand(b, 1, 1, s) < 0.7
    mask[..., -1] = True  # a query always sees itself
    out = torch.ops.genloop.decode_attention(q, k, v, mask.reshape(b, s), 64**-0.5)
    gqa = heads != kv_heads
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    unmasked = torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
    torch.testing.assert_close(torch.ops.genloop.decode_attention(q, k, v, None, 0.125), unmasked)
    hidden = torch.zeros(b, s, dtype=torch.bool)  # nothing visible: zeros, never NaN
    assert torch.equal(torch.ops.genloop.decode_attention(q, k, v, hidden, 0.125), torch.zeros_like(q))


def test_silu_mul_matches_the_pytorch_expression() -> None:
    x = torch.randn(7, 2 * 203) * 8  # an odd width: the vector loop and its scalar tail
    x[0, :6] = torch.tensor([-100.0, 100.0, 0.0, -0.0, 88.0, -88.0])  # exp's ends: no inf, no NaN
    gate, up = x.chunk(2, dim=-1)
    out = torch.ops.genloop.silu_mul(x)
    assert out.shape == (7, 203)
    torch.testing.assert_close(out, torch.nn.functional.silu(gate) * up, rtol=1e-6, atol=1e-6)
    with pytest.raises(RuntimeError, match="contiguous float32"):
        torch.ops.genloop.silu_mul(torch.zeros(2, 5))


def test_attention_queries_do_not_depend_on_length_padding_or_company() -> None:
    """Prefill queries (T per row) match SDPA within rounding, and each query's bits are those it
    gets alone: as one decode query over just its visible keys, or in a longer, padded, batched call."""
    b, t, s, heads, kv_heads = 3, 13, 37, 9, 3
    q = torch.randn(b, heads, t, 64)
    k, v = torch.randn(2, b, kv_heads, s + 11, 64).unbind(0)  # views of a longer cache
    past = torch.tensor([24, 5, 17])  # row r: queries at past[r] + i, keys up to each query's position
    mask = torch.arange(s + 11)[None, None, :] <= (past[:, None] + torch.arange(t))[:, :, None]
    out = torch.ops.genloop.decode_attention(q, k, v, mask, 0.125)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], enable_gqa=True)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    for row, i in ((0, 0), (0, 12), (1, 3), (2, 7)):
        n = int(past[row]) + i + 1  # this query alone, as a decode step sees it
        alone = torch.ops.genloop.decode_attention(
            q[row : row + 1, :, i : i + 1].contiguous(),
            k[row : row + 1, :, :n],
            v[row : row + 1, :, :n],
            None,
            0.125,
        )
        assert torch.equal(alone[0, :, 0], out[row, :, i])


@pytest.mark.parametrize(("m", "n", "k"), [(1, 100, 1), (5, 1003, 16), (3, 4096, 64), (2, 64, 64)])
def test_refine_top_rescores_exactly_the_top_k_of_each_row(m: int, n: int, k: int) -> None:
    """The op changes each row's k largest logits (topk's set; distinct values) and nothing else, to
    the fp32 dot products of the input with those table rows (float64 oracle); a row alone or in a
    batch gets the same bits."""
    gen = torch.Generator().manual_seed(3)
    table, x = torch.randn(n, 40, generator=gen), torch.randn(m, 40, generator=gen)
    y = torch.randn(m, n, generator=gen)
    out = y.clone()
    torch.ops.genloop.refine_top(out, x, table, k)
    top = torch.zeros_like(y, dtype=torch.bool).scatter_(1, y.topk(k, dim=-1).indices, True)
    assert torch.equal(out != y, top)
    exact = (x.double() @ table.double().T).float()
    torch.testing.assert_close(out[top], exact[top], rtol=1e-5, atol=1e-5)
    alone = y[m - 1 :].clone()
    torch.ops.genloop.refine_top(alone, x[m - 1 :].clone(), table, k)
    assert torch.equal(alone, out[m - 1 :])
    with pytest.raises(RuntimeError, match="k must be in"):
        torch.ops.genloop.refine_top(y.clone(), x, table, n + 1)


def test_attention_reads_an_fp16_cache_as_its_fp32_values() -> None:
    """fp16 K/V (the int4 engine's cache) give the bits the same values give as fp32 (a strided view
    of a longer cache, a mask with holes)."""
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(3, 6, 2, 64, generator=gen)
    k = torch.randn(3, 2, 40, 64, generator=gen).half()[:, :, :29]
    v = torch.randn(3, 2, 40, 64, generator=gen).half()[:, :, :29]
    mask = torch.rand(3, 2, 29, generator=gen) > 0.3
    half = torch.ops.genloop.decode_attention(q, k, v, mask, 0.125)
    full = torch.ops.genloop.decode_attention(q, k.float(), v.float(), mask, 0.125)
    assert torch.equal(half, full)
    with pytest.raises(RuntimeError, match="float32 or float16"):
        torch.ops.genloop.decode_attention(q, k.bfloat16(), v.bfloat16(), mask, 0.125)
