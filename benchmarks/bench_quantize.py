"""Weight-only quantization on SmolLM2-135M-Instruct: batch-1 decode and 512-token prefill in fp32,
bf16, int8 and int4 (genloop.model.quantize), and torch.compile of the fastest, in one run.

    .venv/bin/python benchmarks/bench_quantize.py [--variants fp32,bf16,int8,int4,int4-head4]
                                                  [--compile auto|none|VARIANT] [--repeats 3]

Each variant runs in its own process, so its peak RSS is its own and no variant inherits another's
warm caches. Decode: greedy with a DynamicCache, 128 new tokens after a short chat prompt, timed
from the first decode step (prefill excluded). Prefill: 512 tokens in one forward keeping only the
last position's logits, as the engine does. Medians of --repeats. The model comes from `pull()`
(GENLOOP_HOME / GENLOOP_CACHE). Timings on a shared machine are noisy: compare within one run.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

VARIANTS = {  # name -> (load dtype, quantize mode, head)
    "fp32": (torch.float32, None, None),
    "bf16": (torch.bfloat16, None, None),
    "int8": (torch.float32, "int8", "int8"),
    "int4": (torch.float32, "int4", "int8"),
    "int4-head4": (torch.float32, "int4", "int4"),
}


def _load(path: Path, variant: str) -> tuple[torch.nn.Module, float]:
    from genloop.checkpoint import load_model
    from genloop.model.quantize import quantize_model

    dtype, mode, head = VARIANTS[variant]
    model = load_model(path, dtype=dtype)
    start = time.perf_counter()
    if mode is not None:
        quantize_model(model, mode, head=head)
    return model, time.perf_counter() - start


def _weight_mib(model: torch.nn.Module) -> float:
    tensors = {t.data_ptr(): t for t in (*model.parameters(), *model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values()) / 2**20


@torch.inference_mode()
def _decode_rate(forward: Any, prompt: torch.Tensor, new_tokens: int) -> float:
    from genloop.model import DynamicCache

    cache = DynamicCache()
    nxt = forward(prompt, cache=cache)[:, -1].argmax(-1, keepdim=True)
    start = time.perf_counter()
    for _ in range(new_tokens):
        nxt = forward(nxt, cache=cache)[:, -1].argmax(-1, keepdim=True)
    return new_tokens / (time.perf_counter() - start)


@torch.inference_mode()
def _prefill_rate(forward: Any, ids: torch.Tensor) -> float:
    from genloop.model import DynamicCache

    start = time.perf_counter()
    forward(ids, cache=DynamicCache(), logits_to_keep=1)
    return ids.shape[1] / (time.perf_counter() - start)


def run_one(path: Path, variant: str, repeats: int, new_tokens: int, compile_: bool) -> dict[str, Any]:
    """One variant, in this process: the figures as a dict."""
    from genloop.preprocess import Tokenizer

    tok = Tokenizer.load(path)
    chat = [{"role": "user", "content": "Write a short story about a robot learning to paint."}]
    prompt = torch.tensor([tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)])
    text = " ".join(["The quick brown fox jumps over the lazy dog while the sun sets behind the hills."] * 60)
    long_ids = torch.tensor([tok.encode(text, add_special_tokens=False)[:512]])
    model, quantize_s = _load(path, variant)
    forward: Any = model
    first_call_s = None
    if compile_:
        torch._dynamo.config.recompile_limit = 64  # the growing DynamicCache changes shapes and strides
        forward = torch.compile(model.forward, dynamic=True)
        start = time.perf_counter()
        _decode_rate(forward, prompt, 8)
        _prefill_rate(forward, long_ids)
        first_call_s = time.perf_counter() - start
    _decode_rate(forward, prompt, 8)  # warm-up
    _prefill_rate(forward, long_ids[:, :64])
    decode = statistics.median(_decode_rate(forward, prompt, new_tokens) for _ in range(repeats))
    prefill = statistics.median(_prefill_rate(forward, long_ids) for _ in range(repeats))
    return {
        "variant": variant + ("+compile" if compile_ else ""),
        "decode_tok_s": decode,
        "prefill_512_tok_s": prefill,
        "weights_mib": _weight_mib(model),
        "quantize_s": quantize_s,
        "compile_first_calls_s": first_call_s,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
    }


def _spawn(path: Path, variant: str, args: argparse.Namespace, compile_: bool) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--one", variant, "--path", str(path), "--repeats", str(args.repeats)]
    cmd += ["--new-tokens", str(args.new_tokens)] + (["--compiled"] if compile_ else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="fp32,bf16,int8,int4,int4-head4")
    ap.add_argument("--compile", default="auto", help="auto (the fastest decoder), none, or a variant")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    ap.add_argument("--compiled", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        result = run_one(Path(args.path), args.one, args.repeats, args.new_tokens, args.compiled)
        print(json.dumps(result))
        return

    from genloop.checkpoint.pull import pull

    path = pull(progress=False)
    rows = []
    for variant in args.variants.split(","):
        rows.append(_spawn(path, variant, args, compile_=False))
        print(f"  {variant}: {rows[-1]['decode_tok_s']:.1f} tok/s decode", file=sys.stderr, flush=True)
    if args.compile != "none":
        best = (
            max(rows, key=lambda r: r["decode_tok_s"])["variant"] if args.compile == "auto" else args.compile
        )
        rows.append(_spawn(path, best, args, compile_=True))
    ref = next((r for r in rows if r["variant"] == "fp32"), rows[0])
    print(f"\nSmolLM2-135M-Instruct, batch 1, {ref['threads']} threads, median of {args.repeats}")
    print(
        f"{'variant':<16}{'decode tok/s':>13}{'x fp32':>8}{'prefill512':>12}{'x fp32':>8}"
        f"{'weights MiB':>13}{'peak RSS MiB':>14}{'quantize s':>12}"
    )
    for r in rows:
        print(
            f"{r['variant']:<16}{r['decode_tok_s']:>13.1f}{r['decode_tok_s'] / ref['decode_tok_s']:>8.2f}"
            f"{r['prefill_512_tok_s']:>12.0f}{r['prefill_512_tok_s'] / ref['prefill_512_tok_s']:>8.2f}"
            f"{r['weights_mib']:>13.0f}{r['peak_rss_mib']:>14.0f}{r['quantize_s']:>12.2f}"
        )
    for r in rows:
        if r["compile_first_calls_s"] is not None:
            print(f"{r['variant']}: the first compiled calls took {r['compile_first_calls_s']:.0f} s")


if __name__ == "__main__":
    main()
