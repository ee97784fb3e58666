"""Weight-only int8 and int4 quantization for CPU decoding, on PyTorch's packed-weight kernels or,
where the CPU has AVX2, genloop's own (avx2.py): int4 layers and the int8 output head run there.

Batch-1 decoding reads every weight once per token, so its speed is set by the bytes of weight read:
int8 halves that against bf16 and int4 quarters it. Activations stay in the model's dtype; inside a
layer they go to bf16 for the kernels, because the kernels' fp32-activation paths are scalar
reference code here (5-30x slower than an fp32 matmul), their bf16 paths vectorized.

Kernels (torch 2.13, CPU):
- ``aten._weight_int8pack_mm(x [M, K], w int8 [N, K], scales [N]) -> [M, N]``; x 2-D and
  contiguous, scales in x's dtype; y = x @ (w * scales[:, None]).T. With bf16 x it corrupts
  memory (segfaults) when K % 16 != 0, so such layers never call it.
- ``aten._convert_weight_to_int4pack_for_cpu(q int32 [N, K] in 0..15, inner_k_tiles) -> uint8
  [N, K/2]`` (an ISA-dependent blocked layout; inner_k_tiles is unused on CPU) and
  ``aten._weight_int4pack_mm_for_cpu(x [M, K], packed, group_size, scales_and_zeros [K/G, N, 2])``
  with w = (q - 8) * scale + zero per group of G along K; G in {32, 64, 128, 256}, K % G == 0,
  N % 16 == 0, scales_and_zeros in x's dtype.

Long prompts are compute-bound, and there both kernels lose to a dense matmul, so the layers
multiply dequantized weights instead. Where the CPU has native bf16 (AVX512-BF16/AMX) that copy is
bf16, made on first use and kept (2 bytes a weight: for SmolLM2 270 MB next to int4's 70), and the
choice goes by new tokens per sequence, never by batch size: DENSE_TOKENS or more take the copy,
decoding and short prompts take the kernel however many sequences run, so a sequence's numbers do
not depend on its batch (a dense matmul would be ~1.6x faster at 32 decoding rows, but it rounds
differently, and that flips near-ties: SmolLM2's first answer token to "What is the capital of
France?" is 'The' on the kernel, 'L' on the dense path). Without native bf16 the copy would be
fp32: it is made per call, and only for inputs of many rows, as before.

The output head (49k x 576 for SmolLM2, a fifth of a step's FLOPs) multiplies int8 by int8 where
the CPU has VNNI: each row of activations quantized to int8 with its own scale (so rows stay
independent of each other), one `torch._int_mm`, then rescaled. 1.5x faster than the int8 kernel at
one row, 5x at 32. Its top candidates are re-scored in fp32 anyway (`refine_top`), so greedy choices do
not move. The body keeps bf16 activations: int8 activations there cost SmolLM2 8 points of top-1
agreement with fp32 (89%), 3.5 with SmoothQuant scaling, 0.6 with a rotation. Two ways back to 97%
both lose the speed: each row's 16 largest inputs kept out of the int8 part (their weight gathers
took 85 ms a 32-row step against 23 for the int8 matmuls), or the rounding residue as a second row
of int8 codes (twice the int8 work: 55 ms a step compiled, bf16's is 54). A third way keeps the
speed, simulated only: a randomized Hadamard rotation of the residual stream folded into the weights
(norm weights folded into the next linears first), v/o rotated per head, an online 12 x 128
Hadamard before `down`, and GPTQ codes of the rotated weights: 97.3% top-1, perplexity -0.1%.

On AVX2 without VNNI (a 2-core AMD EPYC) PyTorch's kernels ran at ~46 GFLOP/s at 32 rows against
an fp32 matmul's 85 (`torch._int_mm` is reference code there, 4 GOPS), so genloop's AVX2 kernels
take int4 layers and the head: int8 activations per block of 32, as llama.cpp's Q8_0, keep SmolLM2
int4 at 96.7% top-1 (perplexity +0.4%, with an int4 head whose top 64 are re-scored from the float
table: `refine_top`). The int8 body stays on PyTorch's kernel: with block-32 int8 activations it
fell to 96.25%, below the 97% bar.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genloop.model import avx2
from genloop.model.attention import Attention
from genloop.model.head_refine import refine_top
from genloop.model.int4_packing import _int4_pack, int4_layout, unpack_int4
from genloop.model.layers import MLP, RMSNorm

KERNEL_DTYPE = torch.bfloat16
INT4_GROUP_SIZES = (32, 64, 128, 256)
DEFAULT_GROUP_SIZE = 32
QUANT_ROWS = 4096  # a multiple of the int4 packing's row blocks (32/64)
HEAD_REFINE_TOP = 64  # output-head logits recomputed in fp32 per row (see Int8Linear._refine)


def _dense_dtype() -> torch.dtype:
    """bf16 for the dequantized matmul only where oneDNN has native bf16 (AVX512-BF16/AMX); on plain
    AVX2 a bf16 matmul is emulated and several times slower than fp32."""
    try:
        return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32
    except (AttributeError, RuntimeError):
        return torch.float32


DENSE_DTYPE = _dense_dtype()
KEEP_DENSE = DENSE_DTYPE is torch.bfloat16  # keep the dequantized copy (see the module docstring)
# Without native bf16: row counts from which dequantize + dense matmul beats the kernel (2-core AVX2).
DENSE_ROWS_INT8 = 32
DENSE_ROWS_INT4 = 256
# The output head's dense copy (113 MB of fp32 for SmolLM2's 49k x 576) is made per call and leaves
# the caches: at 32 rows the kernel took 32 ms, dequantize + matmul 73; they meet near 100 rows.
DENSE_ROWS_INT8_HEAD = 128
DENSE_TOKENS = 256  # with native bf16: new tokens per sequence from which the kept copy is used


def _op(name: str) -> Any:
    """torch.NAME (the C++ binding; ~1.5 us a call less than torch.ops.aten.NAME), None if absent."""
    return getattr(torch, name, None) or getattr(torch.ops.aten, name, None)


_int8_mm = _op("_weight_int8pack_mm")
_int4_mm = _op("_weight_int4pack_mm_for_cpu")
HAS_INT8_KERNEL = _int8_mm is not None
HAS_INT4_KERNEL = _int4_pack is not None and _int4_mm is not None
_int_mm = _op("_int_mm")
# int8 x int8 products in hardware (AVX512-VNNI / AVX-VNNI); without them _int_mm is no faster
HAS_VNNI = _int_mm is not None and bool(getattr(torch.cpu, "_is_vnni_supported", lambda: False)())


def _row_chunks(n: int) -> list[slice]:
    """Quantize this many rows at a time: the fp32 temporaries of a 49k-row head would be 100s of MB."""
    return [slice(i, min(i + QUANT_ROWS, n)) for i in range(0, n, QUANT_ROWS)]


def _kernel_rows(x: Tensor, rows: int, dense_rows: int) -> bool:
    """Whether x ([..., T, K]) goes to the kernel: fewer than DENSE_TOKENS new tokens per sequence
    where a dense copy is kept (see the module docstring), else fewer rows than `dense_rows`."""
    if KEEP_DENSE:
        return x.dim() < 3 or x.shape[-2] < DENSE_TOKENS
    return rows < dense_rows


def _fp32_input(x2: Tensor) -> Tensor:
    """[M, K] fp32 and contiguous, as genloop's AVX2 kernels take it."""
    return x2.to(torch.float32, memory_format=torch.contiguous_format)


def _kernel_input(x2: Tensor) -> Tensor:
    """[M, K] in bf16 with a contiguous last dim, as both kernels require: one op, none if it is."""
    return x2.to(KERNEL_DTYPE, memory_format=torch.contiguous_format)


class _KernelDtypes(nn.Module):
    """Keeps the float buffers the kernels read in bf16 through model.float()/.half()/.to(dtype), so
    forward needs no dtype check (a decode step calls these layers ~200 times), and holds the dense
    copy of the weights that many-row inputs multiply (dropped whenever the layer is moved)."""

    _kernel_buffers: tuple[str, ...] = ()
    _fp32_buffers = ("native_scales", "native_zeros")  # what genloop's AVX2 kernels read
    _dense_copy: Tensor | None = None
    native = False  # multiplies through genloop's AVX2 kernels (avx2.py)

    def _apply(self, fn: Any, recurse: bool = True) -> nn.Module:
        super()._apply(fn, recurse)
        for name in self._kernel_buffers:
            setattr(self, name, getattr(self, name).to(KERNEL_DTYPE))
        for name in self._fp32_buffers:
            if getattr(self, name, None) is not None:
                setattr(self, name, getattr(self, name).float())
        self._dense_copy = None
        return self

    def _dense_weight(self) -> Tensor:
        """[N, K] in DENSE_DTYPE: kept after the first call where that is bf16, else made per call."""
        if self._dense_copy is not None:
            return self._dense_copy
        w = self._make_dense(DENSE_DTYPE)
        if KEEP_DENSE:
            self._dense_copy = w
        return w

    def _make_dense(self, dtype: torch.dtype) -> Tensor:
        raise NotImplementedError


class Int8Linear(_KernelDtypes):
    """y = x @ (q * scale).T + b with q int8 per output channel, symmetric (zero is exact)."""

    weight: Tensor
    scales: Tensor
    _kernel_buffers = ("scales",)

    def __init__(self, in_features: int, out_features: int, bias: Tensor | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        # the kernel's bf16 path corrupts memory (segfaults) when K % 16 != 0 (torch 2.13)
        self.use_kernel = HAS_INT8_KERNEL and in_features % 16 == 0
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scales", torch.ones(out_features, dtype=KERNEL_DTYPE))
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None
        self.refine_top = 0  # > 0: recompute this many top outputs per row in fp32 (the output head)
        # Float weights to recompute them from (a tied head's embedding table, kept anyway for the
        # lookup): then the top candidates' logits are the float model's own. Not a buffer: shared.
        self.refine_from: Tensor | None = None
        self.int8_activations = False  # the head: int8 x int8 on VNNI (see the module docstring)
        self.dense_rows = DENSE_ROWS_INT8  # without native bf16: rows from which the dense path is used

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        mod = cls(linear.in_features, linear.out_features, linear.bias)
        w = linear.weight.detach()
        mod.weight = torch.empty(w.shape, dtype=torch.int8, device=w.device)
        mod.scales = torch.empty(w.shape[0], dtype=KERNEL_DTYPE, device=w.device)
        for rows in _row_chunks(w.shape[0]):
            wf = w[rows].float()
            # the scale is rounded to the kernel's dtype first and the codes chosen against that value
            scales = (wf.abs().amax(1) / 127).clamp_min(1e-12).to(KERNEL_DTYPE)
            mod.scales[rows] = scales
            mod.weight[rows] = torch.round(wf / scales.float()[:, None]).clamp_(-127, 127)
        return mod

    def pack_avx2(self) -> None:
        """Multiply through genloop's AVX2 int8 kernel from now on, where it runs and VNNI does not
        (the output head: its int8 x int8 rounding is what `_refine` is there for)."""
        if (
            HAS_VNNI
            or not self.weight.is_cpu
            or not avx2.supported_shape(self.in_features, self.out_features)
        ):
            return
        if avx2.ops() is not None:
            self.register_buffer("native_weight", avx2.pack_int8(self.weight))
            self.register_buffer("native_scales", self.scales.float())
            self.native = True

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The weights the kernel multiplies by, [N, K]."""
        return (self.weight.float() * self.scales.float()[:, None]).to(dtype)

    def _make_dense(self, dtype: torch.dtype) -> Tensor:
        return self.weight.to(dtype)  # codes are exact in bf16 (|q| <= 127); scales go on the output

    def forward(self, x: Tensor) -> Tensor:
        shape = (*x.shape[:-1], self.out_features)
        x2 = x.reshape(-1, self.in_features)
        if not x.is_cpu:
            y = F.linear(x2, self.weight.to(x.dtype)) * self.scales.to(x.dtype)
        elif self.native:
            y = torch.ops.genloop.int8_mm(_fp32_input(x2), self.native_weight, self.native_scales)
        elif self.int8_activations and HAS_VNNI:
            y = _int8_activation_mm(x2, self.weight, self.scales)
        elif self.use_kernel and _kernel_rows(x, x2.shape[0], self.dense_rows):
            y = _int8_mm(_kernel_input(x2), self.weight, self.scales)
        else:
            y = F.linear(x2.to(DENSE_DTYPE), self._dense_weight()) * self.scales.to(DENSE_DTYPE)
        if self.refine_top and self.out_features > self.refine_top and x.dtype == torch.float32:
            y = self._refine(x2, y.float())
        y = y.view(shape).to(x.dtype)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def _refine(self, x2: Tensor, y: Tensor) -> Tensor:
        """The kernel's outputs are bf16: 0.125 apart near a logit of 25, so close candidates tie and
        greedy picks by token id (SmolLM2: 'The' 25.33 vs 'L' 25.24 in fp32 both became 25.125).
        The top rows are recomputed in fp32, from the float weights when the head has them (a tied
        embedding: the candidates are then ranked exactly as the float model ranks them), else from
        the int8 codes: a [k, K] gather per row."""
        if self.refine_from is not None:
            return refine_top(x2, y, self.refine_top, self.refine_from, native=self.native)
        return refine_top(x2, y, self.refine_top, self.weight, self.scales)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        )


def _int8_activation_mm(x2: Tensor, weight: Tensor, scales: Tensor) -> Tensor:
    """x2 [M, K] @ (weight int8 [N, K] * scales).T with x2 quantized to int8 per row (absmax / 127):
    the int32 products are exact, so a row's result never depends on the other rows. fp32 out."""
    xf = x2.float()
    step = xf.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127
    codes = torch.round(xf / step).to(torch.int8)
    return _int_mm(codes, weight.t()).float().mul_(step).mul_(scales.float())


def path_rows(model: nn.Module) -> tuple[int, ...]:
    """Row counts at which one of the model's quantized layers changes path for a one-token step: a
    compiled decode step needs one graph per range between them. None where the choice goes by
    tokens per sequence (native bf16), for float layers, for genloop's AVX2 kernels (one path for
    any rows), or for the int8 x int8 head on VNNI."""
    if KEEP_DENSE:
        return ()
    rows = set()
    for mod in model.modules():
        if getattr(mod, "native", False):
            continue
        if isinstance(mod, Int8Linear) and mod.use_kernel and not (mod.int8_activations and HAS_VNNI):
            rows.add(mod.dense_rows)
        elif isinstance(mod, Int4Linear) and mod.use_kernel and mod.readable:
            rows.add(DENSE_ROWS_INT4)
    return tuple(sorted(rows))


def _int4_qparams(w: Tensor, group_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Asymmetric min/max quantization per group of `group_size` along K: (q uint8 [N, K] in 0..15,
    scale [N, K/G], zero [N, K/G]) with w ~ (q - 8) * scale + zero, scale/zero already rounded to the
    kernel's dtype so the codes are chosen against the values the kernel will use."""
    n, k = w.shape
    g = w.float().view(n, k // group_size, group_size)
    lo, hi = g.amin(-1), g.amax(-1)
    scale = ((hi - lo) / 15).clamp_min(1e-8).to(KERNEL_DTYPE).float()
    zero = (lo + 8 * scale).to(KERNEL_DTYPE).float()
    q = torch.round((g - zero[..., None]) / scale[..., None] + 8).clamp_(0, 15).to(torch.uint8)
    return q.view(n, k), scale, zero


class Int4Linear(_KernelDtypes):
    """y = x @ dequant(q).T + b, q 4-bit in groups of `group_size` along K, each with a scale and a
    zero. Shapes the kernel cannot take (N % 16, K % group_size) keep a plain nibble packing and
    dequantize on every call: correct, not fast."""

    weight: Tensor
    scales_and_zeros: Tensor
    _kernel_buffers = ("scales_and_zeros",)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        group_size: int = DEFAULT_GROUP_SIZE,
        bias: Tensor | None = None,
    ) -> None:
        super().__init__()
        if group_size not in INT4_GROUP_SIZES:
            raise ValueError(f"group_size must be one of {INT4_GROUP_SIZES}, got {group_size}")
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.use_kernel = HAS_INT4_KERNEL and out_features % 16 == 0 and in_features % group_size == 0
        # packed codes can be read back (a dense copy for long inputs) only in a packing we know
        self.readable = int4_layout() is not None
        k_pad = -(-in_features // group_size) * group_size
        self.register_buffer("weight", torch.zeros(out_features, k_pad // 2, dtype=torch.uint8))
        # [K/G, N, 2]: the kernel's layout, kept for the fallback too so there is one format
        self.register_buffer(
            "scales_and_zeros", torch.zeros(k_pad // group_size, out_features, 2, dtype=KERNEL_DTYPE)
        )
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None
        self.refine_top = 0  # > 0 (a tied output head): this many top outputs per row from refine_from
        self.refine_from: Tensor | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = DEFAULT_GROUP_SIZE) -> Int4Linear:
        mod = cls(linear.in_features, linear.out_features, group_size, linear.bias)
        w = linear.weight.detach()
        pad = -w.shape[1] % group_size
        codes, qparams = [], []
        for rows in _row_chunks(w.shape[0]):
            wf = w[rows].float()
            if pad:  # repeat the last column: the partial group keeps its own min/max
                wf = F.pad(wf[None], (0, pad), mode="replicate")[0]
            q, scale, zero = _int4_qparams(wf, group_size)
            codes.append(q)
            qparams.append(torch.stack((scale, zero), -1).to(KERNEL_DTYPE))
        mod.set_codes(torch.cat(codes), torch.cat(qparams).transpose(0, 1).contiguous())
        return mod

    def set_codes(
        self, codes: Tensor, scales_and_zeros: Tensor, native: bool = True, kernel: bool = True
    ) -> None:
        """Hold codes uint8 [N, K] and their scales/zeros [K/G, N, 2] in the packing this layer
        multiplies with: genloop's AVX2 kernel where it runs and `native` allows, else PyTorch's int4
        kernel where it takes the shape and `kernel` allows, else plain nibbles."""
        n, k, g = self.out_features, self.in_features, self.group_size
        cpu = codes.device.type == "cpu"
        self.native = (
            native and cpu and g == avx2.BLOCK and avx2.supported_shape(k, n) and avx2.ops() is not None
        )
        self.use_kernel = (
            kernel and cpu and not self.native and HAS_INT4_KERNEL and n % 16 == 0 and k % g == 0
        )
        self.scales_and_zeros = scales_and_zeros
        if self.native:
            scale, zero = scales_and_zeros.permute(2, 1, 0)  # [N, K/G] each
            weight, native_scales, native_zeros = avx2.pack_int4(codes, scale, zero)
            self.register_buffer("native_scales", native_scales)
            self.register_buffer("native_zeros", native_zeros)
        elif self.use_kernel:  # in chunks of whole kernel blocks (the packings concatenate)
            weight = torch.cat(
                [_int4_pack(codes[rows].to(torch.int32), 2) for rows in _row_chunks(len(codes))]
            )
        else:
            weight = codes[:, 0::2] | (codes[:, 1::2] << 4)
        self.weight = weight

    def codes(self) -> Tensor:
        """The 4-bit codes as uint8 [N, K (padded to the group size)], whichever packing holds them."""
        if self.native:
            return avx2.unpack_int4(self.weight)
        if not self.use_kernel:
            return torch.stack((self.weight & 15, self.weight >> 4), -1).view(self.out_features, -1)
        return unpack_int4(self.weight, self.out_features)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The weights the kernel multiplies by, [N, K]. In-place fp32 steps with contiguous
        scale/zero: a broadcast addcmul, or bf16 arithmetic, is several times slower here."""
        n, g = self.out_features, self.group_size
        scale, zero = self.scales_and_zeros.permute(2, 1, 0).float().contiguous()[..., None]  # [N, K/G, 1]
        w = self.codes().view(n, -1, g).float().sub_(8).mul_(scale).add_(zero)
        return w.view(n, -1)[:, : self.in_features].to(dtype)

    def _make_dense(self, dtype: torch.dtype) -> Tensor:
        return self.dequantize(dtype)

    def forward(self, x: Tensor) -> Tensor:
        # genloop's AVX2 kernel: one path for any rows (long prompts take the kept bf16 copy if any);
        # returns first, as a decode step calls these layers ~120 times
        if self.native and x.is_cpu and (not KEEP_DENSE or _kernel_rows(x, 0, 0)):
            x2 = _fp32_input(x.reshape(-1, self.in_features))
            y = torch.ops.genloop.int4_mm(x2, self.weight, self.native_scales, self.native_zeros)
            if self.refine_top and self.refine_from is not None and x.dtype == torch.float32:
                y = refine_top(x2, y, self.refine_top, self.refine_from, native=True)
            y = y.view(*x.shape[:-1], self.out_features).to(x.dtype)
            return y if self.bias is None else y + self.bias.to(y.dtype)
        shape = (*x.shape[:-1], self.out_features)
        x2 = x.reshape(-1, self.in_features)
        kernel = not self.readable or _kernel_rows(x, x2.shape[0], DENSE_ROWS_INT4)
        if kernel and self.use_kernel and x.is_cpu:
            y = _int4_mm(_kernel_input(x2), self.weight, self.group_size, self.scales_and_zeros)
        elif x.is_cpu:
            y = F.linear(x2.to(DENSE_DTYPE), self._dense_weight())
        else:
            y = F.linear(x2, self.dequantize(x.dtype))
        if self.refine_top and self.refine_from is not None and x.dtype == torch.float32:
            y = refine_top(x2, y.float(), self.refine_top, self.refine_from)
        y = y.view(shape).to(x.dtype)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"group_size={self.group_size}, bias={self.bias is not None}, "
            f"kernel={'avx2' if self.native else 'aten' if self.use_kernel else 'none'}"
        )


def _int4_group(k: int, group_size: int) -> int:
    """The largest kernel group size <= group_size that divides K (576 = 4.5 x 128), so one setting
    works for every layer; group_size itself when none does (those layers take the fallback)."""
    fits = [g for g in INT4_GROUP_SIZES if g <= group_size and k % g == 0]
    return max(fits) if fits else group_size


def _tied(model: nn.Module, weight: Tensor) -> bool:
    """Whether `weight` is also an embedding table of the model (which keeps it in float)."""
    return any(isinstance(m, nn.Embedding) and m.weight is weight for m in model.modules())


def quantize_model(
    model: nn.Module,
    mode: Literal["int8", "int4"],
    group_size: int = DEFAULT_GROUP_SIZE,
    head: Literal["int8", "int4", "auto"] | None = "auto",
) -> nn.Module:
    """Replace every nn.Linear (attention, MLP, output head) by its weight-only quantized version, in
    place; returns the model. A head tied to the embedding is untied: the lookup keeps its float
    table, the head (the largest matmul of a decode step) gets its own quantized copy, and its top
    candidates are re-scored from that float table, so greedy picks what the float head would.

    `head` is the head's own precision (None: leave it as it is). "auto": int4 for an int4 model
    whose head is tied and runs on genloop's AVX2 kernel without VNNI, else int8. Re-scored from the
    float table, SmolLM2's int4 head keeps int8's top-1 agreement with fp32 (96.7%; unre-scored
    88.9%) at perplexity +0.4% against +0.1%, and takes 5.9 ms against 8.4 at 32 rows (0.37 / 0.72
    at one). Where VNNI multiplies int8 x int8, the int8 head is the faster one.
    `group_size` (int4) is a maximum: each layer takes the largest kernel group size dividing its K.
    """
    if mode not in ("int8", "int4") or head not in ("int8", "int4", "auto", None):
        raise ValueError(f"mode must be 'int8' or 'int4', head also 'auto' or None; got {mode!r}, {head!r}")
    if group_size not in INT4_GROUP_SIZES:
        raise ValueError(f"group_size must be one of {INT4_GROUP_SIZES}, got {group_size}")
    model.requires_grad_(False)  # inference only: the codes are buffers, and the ops have no backward
    if avx2.ops() is not None:  # the decode step's small ops in one call each
        for mod in model.modules():
            if isinstance(mod, RMSNorm | Attention | MLP):
                mod.native = True
    names = [name for name, mod in model.named_modules() if isinstance(mod, nn.Linear)]
    for name in names:  # one at a time, so each float weight is freed once replaced
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        linear = getattr(parent, child)
        kind = _head_kind(model, linear, mode, head) if name == "lm_head" else mode
        if kind == "int8":
            quantized = Int8Linear.from_linear(linear)
            if name == "lm_head":
                quantized.refine_top = HEAD_REFINE_TOP
                quantized.int8_activations = True
                quantized.dense_rows = DENSE_ROWS_INT8_HEAD
                quantized.refine_from = linear.weight if _tied(model, linear.weight) else None
                quantized.pack_avx2()
            setattr(parent, child, quantized)
        elif kind == "int4":
            quantized4 = Int4Linear.from_linear(linear, _int4_group(linear.in_features, group_size))
            if name == "lm_head" and _tied(model, linear.weight) and linear.out_features > HEAD_REFINE_TOP:
                quantized4.refine_top, quantized4.refine_from = HEAD_REFINE_TOP, linear.weight
            setattr(parent, child, quantized4)
        del linear
    return model


def _head_kind(model: nn.Module, linear: nn.Linear, mode: str, head: str | None) -> str | None:
    if head != "auto":
        return head
    native = avx2.ops() is not None and not HAS_VNNI and linear.weight.is_cpu
    fits = avx2.supported_shape(linear.in_features, linear.out_features)
    return "int4" if mode == "int4" and native and fits and _tied(model, linear.weight) else "int8"
