"""genloop's own AVX2 kernels for quantized inference: int4/int8 weights times int8 activations,
and the small per-layer ops of a decode step (RMSNorm, rotary, one-query attention) as one call each.

On a CPU with AVX2 but no VNNI (the issue's 2-core AMD EPYC) PyTorch's int4 and int8 kernels take
bf16 activations and reach ~46 GFLOP/s at 32 rows, below an fp32 matmul, and spend most of a
batch-1 step converting activations around each call. These kernels (avx2_kernels.cpp) quantize
activations to int8 per row and per block of 32 (llama.cpp's Q8_0), multiply bytes with
`vpmaddubsw`, and read and write fp32. One 576 x 1536 SmolLM2 layer on that CPU: 1 row 15 us
(torch int4 98, fp32 84), 32 rows 0.22 ms (0.85, 0.56), 512 rows 3.5 ms (6.3, 5.4).

They are compiled on first use with the machine's C++ compiler through torch.utils.cpp_extension
(~15 s once; the build is kept under $GENLOOP_HOME/cache/kernels, or TORCH_EXTENSIONS_DIR). Where that
fails (the reason is in `build_error`), or the CPU lacks AVX2, or GENLOOP_AVX2_KERNELS=0, `ops()`
is None and layers keep PyTorch's kernels.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from genloop.home import cache_dir

SOURCES = [
    Path(__file__).with_name(name) for name in ("avx2_kernels.cpp", "avx2_block.cpp", "avx2_refine.cpp")
]
HEADER = Path(__file__).with_name("avx2_kernels.h")
FLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-ffp-contract=off"]  # products rounded as written
BLOCK = 32  # K per activation block and int4 group
COLS = 8  # output columns per packed weight block
log = logging.getLogger(__name__)
build_error: str | None = None  # why the kernels did not build, if they did not


def supported_shape(in_features: int, out_features: int) -> bool:
    return in_features % BLOCK == 0 and out_features % COLS == 0


def ops() -> Any | None:
    """torch.ops.genloop (int4_mm, int8_mm, rms_norm, rotary, decode_attention, silu_mul, decode_block,
    refine_top), built and loaded on first call; None where unusable (then nothing calls them: layers
    keep PyTorch's ops)."""
    if os.environ.get("GENLOOP_AVX2_KERNELS", "1") == "0":
        return None
    return _load()


@functools.cache
def _load() -> Any | None:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return None
    global build_error
    try:
        _build()
    except Exception as exc:  # no compiler, no ninja, a build error: the PyTorch kernels still work
        build_error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log.info("genloop's AVX2 kernels are not available (%s); using PyTorch's", build_error)
        return None
    return torch.ops.genloop


def _build() -> None:
    from torch.utils import cpp_extension

    if shutil.which("ninja") is None:  # the ninja wheel's binary, when the venv is not activated
        try:
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except ImportError:
            pass
    source = b"".join(path.read_bytes() for path in (*SOURCES, HEADER))
    key = hashlib.sha256(source + " ".join(FLAGS).encode() + torch.__version__.encode()).hexdigest()[:12]
    name = f"genloop_avx2_{key}"
    folder = _build_folder(name)
    library = folder / f"{name}.so"
    if library.is_file():  # built before: no compiler needed, nothing to check
        torch.ops.load_library(str(library))
    else:
        quiet = logging.getLogger("torch.utils.cpp_extension")
        level, quiet.level = quiet.level, logging.ERROR  # its compiler-compatibility banner
        try:
            cpp_extension.load(name, [str(path) for path in SOURCES], extra_cflags=FLAGS,
                               build_directory=str(folder), is_python_module=False)  # fmt: skip
        finally:
            quiet.setLevel(level)
    for op in ("int4_mm", "int8_mm"):
        torch.library.register_fake(f"genloop::{op}")(_fake_mm)
    for op in ("rms_norm", "rotary", "decode_attention", "decode_block"):
        torch.library.register_fake(f"genloop::{op}")(_fake_like_input)
    torch.library.register_fake("genloop::silu_mul")(_fake_half)
    torch.library.register_fake("genloop::refine_top")(_fake_in_place)


def _build_folder(name: str) -> Path:
    """$GENLOOP_HOME/cache/kernels/NAME (GENLOOP_CACHE), or TORCH_EXTENSIONS_DIR/NAME where that is
    set (the tests point every process at one shared folder, so the suite builds once)."""
    chosen = os.environ.get("TORCH_EXTENSIONS_DIR")
    folder = Path(chosen) / name if chosen else cache_dir() / "kernels" / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _fake_mm(x: Tensor, w: Tensor, *args: Tensor) -> Tensor:
    """Output shape for torch.compile: [M, N] fp32, N = 8 per packed block."""
    return x.new_empty(x.shape[0], w.shape[0] * COLS)


def _fake_like_input(x: Tensor, *args: Any) -> Tensor:
    """Output shape for torch.compile: that of the first input, contiguous."""
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _fake_in_place(*args: Any) -> None:
    """torch.compile: the op only writes into its first input."""


def _fake_half(x: Tensor) -> Tensor:
    """Output shape for torch.compile: the input's with the last dim halved."""
    return x.new_empty(*x.shape[:-1], x.shape[-1] // 2)


def pack_int4(codes: Tensor, scale: Tensor, zero: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """codes uint8 [N, K] in 0..15, scale/zero [N, K/32] (w = (q - 8) * scale + zero) -> the kernel's
    (weights uint8 [N/8, K/32 * 128], scales fp32 [N/8, K/32, 8], zeros fp32 (zero - 8 * scale))."""
    n, k = codes.shape
    g = k // BLOCK
    c = codes.view(n // COLS, COLS, g, 2, 4, 4).permute(0, 2, 4, 1, 5, 3)  # [nb, g, j, col, i, half]
    w = (c[..., 0] | (c[..., 1] << 4)).reshape(n // COLS, g * 128).contiguous()

    def blocked(t: Tensor) -> Tensor:
        return t.float().reshape(n // COLS, COLS, g).transpose(1, 2).contiguous()

    return w, blocked(scale), blocked(zero.float() - 8 * scale.float())


def unpack_int4(w: Tensor) -> Tensor:
    """pack_int4's weights back to codes uint8 [N, K]."""
    nb, g = w.shape[0], w.shape[1] // 128
    b = w.view(nb, g, 4, COLS, 4)  # [nb, g, j, col, i]
    c = torch.stack((b & 15, b >> 4), -1)  # [..., half]
    return c.permute(0, 3, 1, 5, 2, 4).reshape(nb * COLS, g * BLOCK)


def pack_int8(codes: Tensor) -> Tensor:
    """codes int8 [N, K] -> the kernel's [N/8, K/32 * 256]: load j of group g, 4 bytes per column."""
    n, k = codes.shape
    g = k // BLOCK
    return (
        codes.view(n // COLS, COLS, g, 8, 4).permute(0, 2, 3, 1, 4).reshape(n // COLS, g * 256).contiguous()
    )
