"""GGUF loading speed: genloop's import (dequantize + convert) vs transformers' GGUF loader, same file.

    .venv/bin/python benchmarks/bench_gguf.py [GGUF_FILE]

Without an argument it pulls SmolLM2-135M-Instruct (Q4_1) first. Prints seconds, the ratio, tensors
per second and peak resident memory.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch
import transformers

from genloop.checkpoint import load_model
from genloop.checkpoint.importer import import_gguf
from genloop.home import cache_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf", nargs="?", help="GGUF file (default: the pulled SmolLM2 Q4_1 file)")
    args = ap.parse_args()
    if args.gguf:
        path = Path(args.gguf)
    else:
        from genloop.checkpoint.pull import pull

        pull(progress=False)
        path = cache_dir() / "gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf"

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        import_gguf(path, Path(tmp) / "m", progress=False)
        model = load_model(Path(tmp) / "m")
        ours = time.perf_counter() - start
    n = sum(p.numel() for p in model.parameters())
    del model

    start = time.perf_counter()
    transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    theirs = time.perf_counter() - start

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{path.name}: {n / 1e6:.0f}M parameters")
    print(f"genloop import + load   {ours:6.1f} s")
    print(f"transformers gguf_file  {theirs:6.1f} s")
    print(f"ratio (transformers / genloop) {theirs / ours:.2f}x; peak RSS {peak:.0f} MiB")


if __name__ == "__main__":
    main()
