"""`genloop rl MODEL`: GRPO with a verifiable reward, on a prompts file or a built-in task."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from genloop.errors import UserError

# flag -> (reward option, the rewards that take it)
_REWARD_FLAGS = {
    "max_words": ("n", ("max_words",)),
    "min_words": ("min_words", ("max_words",)),
    "soft": ("soft", ("max_words",)),
    "pattern": ("pattern", ("regex",)),
    "full_match": ("full", ("regex",)),
    "answer_field": ("field", ("exact_answer",)),
    "match": ("match", ("exact_answer",)),
    "tests_field": ("field", ("unit_tests",)),
    "test_timeout": ("timeout", ("unit_tests",)),
    "reward_model": ("path", ("reward_model",)),
}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "rl", help="policy-gradient RL (GRPO) with a verifiable reward",
        description="Sample G answers per prompt, score them with a reward function, and move the model "
        "towards the answers that beat their group (GRPO). Prints the held-out reward before and after.",
    )  # fmt: skip
    p.add_argument("model", help="model directory or registered name to start from")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--prompts",
        type=Path,
        metavar="FILE",
        help='JSONL: {"prompt": str | messages, ...fields the reward reads}',
    )
    src.add_argument(
        "--task", choices=("addition", "short"), help="built-in task: two-digit sums, or short answers"
    )
    p.add_argument(
        "--eval-prompts",
        type=Path,
        metavar="FILE",
        help="held-out JSONL (default: --holdout rows of --prompts)",
    )
    p.add_argument(
        "--holdout", type=int, default=32, help="held-out prompts for the before/after reward (32)"
    )
    p.add_argument("--task-size", type=int, default=400, help="training prompts a --task generates (400)")

    r = p.add_argument_group("reward")
    r.add_argument(
        "--reward",
        metavar="NAME",
        help="exact_answer, max_words, regex, unit_tests or reward_model (default: the --task's reward)",
    )
    r.add_argument("--max-words", type=int, help="max_words: the word limit (also the `short` task's; 8)")
    r.add_argument("--min-words", type=int, help="max_words: fewer words than this score 0 (default 1)")
    r.add_argument(
        "--soft", action="store_true", default=None, help="max_words: partial credit past the limit"
    )
    r.add_argument("--pattern", help="regex: the pattern the completion must match")
    r.add_argument(
        "--full-match", action="store_true", default=None, help="regex: match the whole completion"
    )
    r.add_argument("--answer-field", help="exact_answer: the row field holding the answer (default answer)")
    r.add_argument(
        "--match", choices=("last_number", "exact", "contains"), help="exact_answer: how to compare"
    )
    r.add_argument("--tests-field", help="unit_tests: the row field holding the tests (default tests)")
    r.add_argument("--test-timeout", type=float, help="unit_tests: seconds per completion (default 5)")
    r.add_argument("--reward-model", metavar="DIR", help="reward_model: a model trained with `genloop rm`")

    t = p.add_argument_group("training")
    t.add_argument("--group-size", type=int, default=8, help="completions per prompt, G (default 8)")
    t.add_argument("--prompts-per-step", type=int, default=4, help="prompts per step (default 4)")
    t.add_argument("--steps", type=int, default=100, help="training steps (default 100)")
    t.add_argument("--max-minutes", type=float, help="time budget for the steps: stop when it is spent")
    t.add_argument("--lr", type=float, default=1e-5, help="learning rate (default 1e-5; LoRA wants ~1e-4)")
    t.add_argument("--beta", type=float, default=0.0, help="KL penalty to the starting model (default 0)")
    t.add_argument("--epsilon", type=float, default=0.2, help="clip range of the ratio (default 0.2)")
    t.add_argument("--epsilon-high", type=float, help="upper clip range (default: --epsilon; DAPO: 0.28)")
    t.add_argument(
        "--loss-type", choices=("dapo", "grpo", "bnpo", "dr_grpo"), default="dapo",
        help="how per-token terms are averaged (default dapo, as TRL)",
    )  # fmt: skip
    t.add_argument(
        "--scale-rewards", choices=("group", "batch", "none"), default="group",
        help="divide advantages by the group's or batch's reward std, or not (default group)",
    )  # fmt: skip
    t.add_argument("--num-iterations", type=int, default=1, help="updates per rollout (default 1)")
    t.add_argument(
        "--micro-batch", type=int, default=16, help="completions per forward/backward (default 16)"
    )
    t.add_argument("--max-new-tokens", type=int, default=64, help="longest completion (default 64)")
    t.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1)")
    t.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default 1: off)")
    t.add_argument("--lora", action="store_true", help="train LoRA adapters (merged into the saved model)")
    t.add_argument("--lora-r", type=int, default=16, help="LoRA rank (default 16)")
    t.add_argument("--lora-alpha", type=float, default=32, help="LoRA alpha (default 32)")
    t.add_argument(
        "--lora-targets", default="q,k,v,o,gate,up,down", help="projections to adapt (default all)"
    )
    t.add_argument(
        "--eval-every", type=int, default=0, help="held-out evaluation every N steps (0: ends only)"
    )
    t.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto", help="autocast dtype")
    t.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default cpu)")
    t.add_argument("--seed", type=int, default=0, help="seed for prompt order and sampling (default 0)")

    o = p.add_argument_group("output")
    o.add_argument(
        "--out", type=Path, metavar="DIR", help="where to save the trained model (default RUN_DIR/model)"
    )
    o.add_argument(
        "--run-dir",
        type=Path,
        metavar="DIR",
        help="metrics, curves and summary (default GENLOOP_HOME/runs/...)",
    )
    o.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    p.set_defaults(handler=_rl)


def reward_options(args: argparse.Namespace, reward: str | None) -> dict[str, Any]:
    """The reward flags that were given, as options of `reward`; a flag for another reward is an error."""
    options: dict[str, Any] = {}
    for flag, (option, rewards) in _REWARD_FLAGS.items():
        value = getattr(args, flag, None)
        if value is None or (flag == "max_words" and args.task == "short"):
            continue
        if reward is not None and reward not in rewards:
            raise UserError(
                f"--{flag.replace('_', '-')} is an option of {', '.join(rewards)}, not of '{reward}'"
            )
        options[option] = value
    return options


def config_from_args(args: argparse.Namespace) -> Any:
    from genloop.config import validate
    from genloop.train.rewards import REWARDS
    from genloop.train.rl import TASK_REWARDS, RLConfig

    reward = args.reward or (TASK_REWARDS[args.task] if args.task else None)
    if args.reward is None and args.reward_model:
        reward = "reward_model"
    if reward is None:
        raise UserError(f"--prompts needs --reward: one of {', '.join(sorted(REWARDS))}")
    if reward not in REWARDS:
        raise UserError(f"unknown reward '{reward}'; choose from {', '.join(sorted(REWARDS))}")
    data: dict[str, Any] = {
        "model": args.model, "prompts": str(args.prompts) if args.prompts else None,
        "eval_prompts": str(args.eval_prompts) if args.eval_prompts else None, "task": args.task,
        "task_size": args.task_size, "holdout": args.holdout, "reward": reward,
        "reward_options": reward_options(args, reward), "group_size": args.group_size,
        "prompts_per_step": args.prompts_per_step, "steps": args.steps, "max_minutes": args.max_minutes,
        "learning_rate": args.lr, "beta": args.beta, "epsilon": args.epsilon,
        "epsilon_high": args.epsilon_high, "loss_type": args.loss_type, "scale_rewards": args.scale_rewards,
        "num_iterations": args.num_iterations, "micro_batch": args.micro_batch,
        "max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p,
        "eval_every": args.eval_every, "dtype": args.dtype, "device": args.device, "seed": args.seed,
    }  # fmt: skip
    if args.task == "short" and args.max_words is not None:
        data["short_words"] = args.max_words
    if args.lora:
        data["lora"] = {"r": args.lora_r, "alpha": args.lora_alpha, "target_modules": args.lora_targets}
    return validate(RLConfig, data, "flags")


def _rl(args: argparse.Namespace) -> int:
    from genloop.train.rl import train_grpo

    config = config_from_args(args)
    result = train_grpo(config, args.run_dir, args.out, progress=not args.no_progress)
    print(
        f"{result.steps} steps ({result.stopped}) in {result.seconds / 60:.1f} min; "
        f"train reward {result.train_reward_first:.3f} -> {result.train_reward_last:.3f}"
    )
    print(
        f"held-out reward ({result.heldout_prompts} prompts, greedy): untrained {result.heldout_before:.3f}  "
        f"trained {result.heldout_after:.3f}  margin {result.margin:+.3f}"
    )
    print(f"  model: {result.model_dir}; curves: {result.run_dir / 'curves.png'}")
    return 0
