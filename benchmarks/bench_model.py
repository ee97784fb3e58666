"""Forward (prefill) and training-step speed of genloop's model vs transformers on identical weights.

Both run in this process on the same random weights, same inputs, same threads; prints tokens/s,
the genloop/transformers ratio and peak resident memory. Usage:

    .venv/bin/python benchmarks/bench_model.py [--preset smollm2-135m] [--seq 512] [--batch 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
import transformers

from genloop.checkpoint import save_model
from genloop.model import build_model, preset


def _timed(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: allocator, kernels, lazy init
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="smollm2-135m", help="genloop preset with a Llama or GPT-2 layout")
    ap.add_argument("--seq", type=int, default=512, help="tokens per sequence")
    ap.add_argument("--batch", type=int, default=1, help="sequences per batch")
    ap.add_argument("--repeats", type=int, default=3, help="timed repetitions (median reported)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    ours = build_model(preset(args.preset)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        save_model(ours, tmp)
        theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
    ids = torch.randint(0, ours.config.vocab_size, (args.batch, args.seq))
    tokens = args.batch * args.seq
    print(f"{args.preset}: batch {args.batch} x {args.seq} tokens, {args.threads} threads, fp32")

    with torch.inference_mode():
        diff = (ours(ids) - theirs(input_ids=ids).logits).abs().max().item()
    print(f"max |logit difference| = {diff:.2e}")

    def fwd(model: torch.nn.Module, hf: bool) -> Callable[[], object]:
        def run() -> object:
            with torch.inference_mode():
                return model(input_ids=ids).logits if hf else model(ids)

        return run

    def train_step(model: torch.nn.Module, hf: bool) -> Callable[[], object]:
        def run() -> object:
            model.train()
            logits = model(input_ids=ids).logits if hf else model(ids)
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
            loss.backward()
            model.zero_grad(set_to_none=True)
            return loss

        return run

    rows = []
    for name, (a, b) in {
        "prefill": (fwd(ours, False), fwd(theirs, True)),
        "train step": (train_step(ours, False), train_step(theirs, True)),
    }.items():
        t_ours, t_theirs = _timed(a, args.repeats), _timed(b, args.repeats)
        rows.append((name, tokens / t_ours, tokens / t_theirs))
    print(f"{'':<11} {'genloop tok/s':>14} {'transformers tok/s':>19} {'ratio':>6}")
    for name, ours_tps, theirs_tps in rows:
        print(f"{name:<11} {ours_tps:>14.0f} {theirs_tps:>19.0f} {ours_tps / theirs_tps:>6.2f}x")
    print(f"peak RSS (both models loaded) {_peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
