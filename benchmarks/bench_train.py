"""Training speed: genloop's trainer against a plain reference loop, same model size and batch, one run.

    .venv/bin/python benchmarks/bench_train.py [--steps 8] [--skip-compiled]

Model: a GPT-2-style decoder, 6 layers, 384 wide, 6 heads, vocabulary 50304, context 256; batch
16 x 256 tokens, fp32, the machine's threads. The reference is a minimal GPT-2 written here (pre-norm
blocks, one fused QKV projection, SDPA causal attention, GELU MLP, tied head) trained with
torch.optim.AdamW in eager mode; genloop runs its own `Trainer` (data from shards through
`PackedDataset`, fused AdamW, schedule, clipping, logging) in fp32, and once more with its default
`dtype: auto` (bf16 autocast only where bf16 matmuls are measured faster). Both are also timed under
torch.compile (genloop in its default dtype). Tokens/s is the median over the steps after two
warm-up steps; MFU divides the model's training FLOPs per token (6N + attention) by the matmul peak
of the dtype the run computed in, measured in the same run.
Writes benchmarks/results/train.json.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

RESULTS = Path(__file__).parent / "results" / "train.json"
LAYERS, WIDTH, HEADS, VOCAB, CONTEXT, BATCH = 6, 384, 6, 50304, 256, 16


class RefBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.qkv = nn.Linear(WIDTH, 3 * WIDTH)
        self.proj = nn.Linear(WIDTH, WIDTH)
        self.fc, self.out = nn.Linear(WIDTH, 4 * WIDTH), nn.Linear(4 * WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(WIDTH, dim=2)
        q, k, v = (z.view(b, t, HEADS, WIDTH // HEADS).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, WIDTH)
        x = x + self.proj(y)
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class RefGPT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(VOCAB, WIDTH), nn.Embedding(CONTEXT, WIDTH)
        self.blocks = nn.ModuleList(RefBlock() for _ in range(LAYERS))
        self.ln = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, VOCAB, bias=False)
        self.head.weight = self.tok.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


def genloop_config() -> Any:
    from genloop.model import preset

    return preset(
        "tiny-gpt2", n_layers=LAYERS, d_model=WIDTH, n_heads=HEADS, d_ff=4 * WIDTH, vocab_size=VOCAB,
        max_seq_len=CONTEXT, dropout=0.0,
    )  # fmt: skip


def bench_reference(steps: int, compiled: bool) -> list[float]:
    torch.manual_seed(0)
    model = RefGPT()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    step_fn = model
    if compiled:
        step_fn = torch.compile(model)
    times = []
    for _ in range(steps + 2):
        x = torch.randint(0, VOCAB, (BATCH, CONTEXT + 1))
        start = time.perf_counter()
        logits = step_fn(x[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), x[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times[2:]


def random_shards(folder: Path) -> Path:
    from genloop.data.shards import FORMAT, MANIFEST, ShardWriter

    folder.mkdir(parents=True, exist_ok=True)
    tokens = np.random.default_rng(0).integers(0, VOCAB, size=2_000_000, dtype=np.uint16)
    splits = {}
    for split in ("train", "validation"):
        writer = ShardWriter(folder, split, np.dtype(np.uint16), 10_000_000)
        writer.add(tokens)
        splits[split] = {"tokens": tokens.size, "documents": 1, "shards": writer.close()}
    manifest = {"format": FORMAT, "version": 1, "dtype": "uint16", "splits": splits, "sources": []}
    manifest["tokenizer"] = {"path": "tokenizer", "vocab_size": VOCAB, "eos_token_id": None}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return folder


def bench_genloop(steps: int, compiled: bool, peak: float, dtype: str = "float32") -> tuple[list[float], str]:
    from genloop.config import TrainConfig
    from genloop.data.loader import PackedDataset
    from genloop.model import build_model, model_stats
    from genloop.train.loop import Trainer
    from genloop.train.objectives import LMBatches, causal_lm

    torch.manual_seed(0)
    cfg = genloop_config()
    model = build_model(cfg)
    if compiled:
        model.compile()
    with tempfile.TemporaryDirectory() as tmp:
        data = LMBatches(PackedDataset(random_shards(Path(tmp) / "shards"), "train", CONTEXT, BATCH, 0, 0, 1))
        config = TrainConfig(
            max_steps=steps + 2, batch_size=BATCH, warmup_steps=1, log_every=1, save_every=10**6,
            eval_every=10**6, dtype=dtype, compile=compiled,
        )  # fmt: skip
        trainer = Trainer(
            model, causal_lm, data, None, config, Path(tmp) / "run", lambda *a: None,
            tokens_per_step=BATCH * CONTEXT, flops_per_token=model_stats(cfg, CONTEXT).train_flops_per_token,
            peak_flops=peak, progress=False,
        )  # fmt: skip
        trainer.fit()
        used = str(trainer.autocast_dtype or torch.float32).removeprefix("torch.")
        rows = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r][2:]
    return [BATCH * CONTEXT / r for r in rates], used


def child(kind: str, steps: int, peak: float) -> dict[str, Any]:
    impl, mode = kind.split(":")
    compiled = mode == "compiled"
    start = time.perf_counter()
    dtype = "float32"
    if impl == "reference":
        times = bench_reference(steps, compiled)
    else:  # default and compiled: genloop's dtype choice (auto: bf16 autocast only where measured faster)
        times, dtype = bench_genloop(steps, compiled, peak, "float32" if mode == "eager" else "auto")
    step = statistics.median(times)
    return {
        "kind": kind,
        "dtype": dtype,
        "tokens_per_s": BATCH * CONTEXT / step,
        "step_seconds": step,
        "wall_seconds": time.perf_counter() - start,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--steps", type=int, default=8, help="timed steps per configuration (after 2 warm-up)"
    )
    parser.add_argument("--skip-compiled", action="store_true", help="eager only (no torch.compile runs)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--peak", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.peak)))
        return
    from genloop.model import model_stats
    from genloop.train.hardware import matmul_peak

    peaks = {str(d).removeprefix("torch."): matmul_peak("cpu", d, size=2048, seconds=2.0)
             for d in (torch.float32, torch.bfloat16)}  # fmt: skip
    peak = peaks["float32"]
    flops = model_stats(genloop_config(), CONTEXT).train_flops_per_token
    print(f"matmul peak {peak / 1e9:.0f} GFLOP/s fp32, {peaks['bfloat16'] / 1e9:.0f} bf16 on "
          f"{torch.get_num_threads()} threads; {flops / 1e6:.0f} MFLOP per training token")  # fmt: skip
    kinds = ["reference:eager", "genloop:eager", "genloop:default"]
    if not args.skip_compiled:
        kinds += ["reference:compiled", "genloop:compiled"]
    results = {}
    for kind in kinds:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", kind, str(args.steps), "--peak", str(peak)],
            capture_output=True, text=True,
        )  # fmt: skip
        if proc.returncode != 0:
            print(f"{kind}: failed\n{proc.stderr[-2000:]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r["mfu"] = r["tokens_per_s"] * flops / peaks[r["dtype"]]  # against the peak of the dtype it ran in
        results[kind] = r
        print(f"{kind:<20} {r['dtype']:<9} {r['tokens_per_s']:7.0f} tokens/s  MFU {100 * r['mfu']:4.1f}%  "
              f"step {r['step_seconds']:.2f} s  peak RSS {r['peak_rss_mib']:,.0f} MiB")  # fmt: skip
    base = results.get("reference:eager")
    for kind, r in results.items():
        if base and kind != "reference:eager":
            print(f"{kind} / reference:eager = {r['tokens_per_s'] / base['tokens_per_s']:.2f}x")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"peak_flops": peaks, "flops_per_token": flops, "runs": results}, indent=2))
    print(f"wrote {RESULTS}")
    assert math.isfinite(peak)


if __name__ == "__main__":
    main()
