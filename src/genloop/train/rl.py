"""`genloop rl`: GRPO on a model directory with a verifiable reward.

Each step takes `prompts_per_step` prompts, samples `group_size` completions of each from the policy
(`rollout`), scores them (`rewards`), turns the scores into group-relative advantages and makes
`num_iterations` AdamW updates on the clipped GRPO loss (`grpo`), optionally held near a frozen
reference by a KL penalty: a copy of the starting model, or, with LoRA, the same model with its
adapters switched off (no second copy in memory). Held-out prompts, never trained on, are answered
greedily before and after training; both mean rewards are reported side by side.

Prompts come from JSONL (`{"prompt": str | messages, ...fields the reward reads}`: messages go
through the model's chat template, a string is used as raw text, as in TRL) or from a built-in task:
`addition` (two-digit sums, reward `exact_answer`) or `short` (questions to answer in at most N
words, reward `max_words`), whose held-out questions share no pair of numbers or topic with training.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from rich import progress as rp
from rich.console import Console
from torch import Tensor, nn

from genloop.atomic import atomic_write_text
from genloop.checkpoint import load_model, resolve, save_model
from genloop.config import Section
from genloop.errors import UserError
from genloop.model import DecoderLM
from genloop.model.lora import LoRAConfig, apply_lora, lora_modules, merge_lora
from genloop.preprocess.tokenizer import Tokenizer
from genloop.train.grpo import group_advantages, grpo_objective
from genloop.train.hardware import choose_autocast
from genloop.train.metrics import MetricsLog, save_step_figure
from genloop.train.rewards import Reward, check_rows, make_reward
from genloop.train.rl_prompts import TASK_REWARDS, addition_task, load_prompts, short_task
from genloop.train.rollout import (
    Policy,
    Rollout,
    completion_logps,
    encode_prompt,
    heldout_reward,
    prompt_text,
    sample_completions,
    stop_ids,
)
from genloop.train.run import new_run_dir

__all__ = ["TASK_REWARDS", "RLConfig", "addition_task", "load_prompts", "short_task", "train_grpo"]


class RLConfig(Section):
    """Everything a GRPO run needs; the defaults follow TRL's GRPOConfig where it has the same knob."""

    model: str = Field(description="model directory or registered name to start from")
    prompts: str | None = Field(None, description="JSONL of {prompt, ...fields for the reward}")
    eval_prompts: str | None = Field(None, description="held-out JSONL (default: the last `holdout` rows)")
    task: Literal["addition", "short"] | None = Field(None, description="a built-in generated task")
    task_size: int = Field(400, gt=0, description="training prompts a built-in task generates")
    short_words: int = Field(8, gt=0, description="the `short` task's word limit")
    holdout: int = Field(32, gt=0, description="held-out prompts for the before/after reward")
    reward: str | None = Field(None, description="reward name (default: the task's)")
    reward_options: dict[str, Any] = Field(default_factory=dict)
    group_size: int = Field(8, ge=2, description="completions per prompt (G)")
    prompts_per_step: int = Field(4, gt=0)
    steps: int = Field(100, gt=0)
    max_minutes: float | None = Field(None, gt=0, description="time budget for the training steps")
    learning_rate: float = Field(1e-5, gt=0)
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, ge=0)
    beta: float = Field(0.0, ge=0, description="KL penalty to the reference (0: no reference)")
    epsilon: float = Field(0.2, gt=0, description="lower clip range of the ratio")
    epsilon_high: float | None = Field(None, gt=0, description="upper clip range (default: epsilon)")
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = "dapo"
    scale_rewards: Literal["group", "batch", "none"] = "group"
    num_iterations: int = Field(1, gt=0, description="updates per rollout (mu)")
    micro_batch: int = Field(16, gt=0, description="completions per forward/backward pass")
    max_new_tokens: int = Field(64, gt=0)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    eval_every: int = Field(0, ge=0, description="held-out evaluation every N steps (0: before/after)")
    lora: dict[str, Any] | None = Field(None, description="LoRA options (r, alpha, target_modules)")
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    device: str = "cpu"
    seed: int = 0
    log_every: int = Field(1, gt=0)


@dataclass
class RLResult:
    run_dir: Path
    model_dir: Path
    steps: int
    seconds: float
    stopped: str  # "steps" or "time budget"
    heldout_before: float
    heldout_after: float
    train_reward_first: float
    train_reward_last: float
    heldout_prompts: int
    samples_before: list[str]
    samples_after: list[str]

    @property
    def margin(self) -> float:
        return self.heldout_after - self.heldout_before


def _prompt_rows(config: RLConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    if (config.prompts is None) == (config.task is None):
        raise UserError("give either prompts (a JSONL file) or a built-in task (addition or short)")
    if config.task == "addition":
        return addition_task(config.task_size, config.holdout, config.seed)
    if config.task == "short":
        return short_task(config.task_size, config.holdout, config.short_words, config.seed)
    assert config.prompts is not None
    rows = load_prompts(config.prompts)
    if config.eval_prompts:
        return rows, load_prompts(config.eval_prompts)
    if len(rows) <= config.holdout:
        raise UserError(
            f"{config.prompts} has {len(rows)} prompts, not more than holdout={config.holdout}: "
            "give more prompts, a smaller holdout, or a separate eval_prompts file"
        )
    rows = rows[:]
    random.Random(config.seed).shuffle(rows)
    return rows[config.holdout :], rows[: config.holdout]


# ---- model pieces -----------------------------------------------------------------------------------


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """The base model under LoRA: every adapter's scale set to 0 for the duration (PEFT's
    `disable_adapter`), so the frozen reference costs no second copy of the weights."""
    modules = list(lora_modules(model).values())
    saved = [m.scaling for m in modules]
    for m in modules:
        m.scaling = 0.0
    try:
        yield
    finally:
        for m, s in zip(modules, saved, strict=True):
            m.scaling = s


# ---- the trainer ------------------------------------------------------------------------------------


class GRPOTrainer:
    def __init__(self, config: RLConfig, policy: Policy, reward: Reward, ref: DecoderLM | None) -> None:
        self.config, self.policy, self.reward, self.ref = config, policy, reward, ref
        params = [p for p in policy.model.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        self.optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, betas=(0.9, 0.999))
        self.generator = torch.Generator().manual_seed(config.seed)

    def step(self, rows: Sequence[dict[str, Any]], ids: Sequence[list[int]], lr: float) -> dict[str, float]:
        """One GRPO step on a batch of prompts: rollout, rewards, advantages, updates; its metrics."""
        c, policy, model = self.config, self.policy, self.policy.model
        tick = time.perf_counter()
        rollout = sample_completions(
            model, ids, c.group_size, c.max_new_tokens, c.temperature, c.top_p, eos_ids=policy.eos,
            pad_id=policy.pad, generator=self.generator, autocast=policy.autocast,
        )  # fmt: skip
        gen_seconds = time.perf_counter() - tick
        texts = policy.texts(rollout)
        rep = [r for r in rows for _ in range(c.group_size)]
        rewards = torch.tensor(self.reward.batch([prompt_text(r["prompt"]) for r in rep], texts, rep))
        advantages = group_advantages(rewards, c.group_size, c.scale_rewards).to(model.device)
        plan = self.plan(rollout, advantages)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss = kl = clip = 0.0
        for _ in range(c.num_iterations if plan.chunks else 0):
            stats = self.backward(plan)
            loss, kl, clip = (x + y / c.num_iterations for x, y in zip((loss, kl, clip), stats, strict=True))
            if c.grad_clip > 0:
                params = [p for g in self.optimizer.param_groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(params, c.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - tick
        lengths = rollout.completion_lengths().float()
        metrics = {
            "reward": float(rewards.mean()), "reward_std": float(rewards.std()), "loss": loss,
            "completion_length": float(lengths.mean()), "finished": float(rollout.finished.float().mean()),
            "clip_ratio": clip, "lr": lr,
            "frac_reward_zero_std": float((rewards.view(-1, c.group_size).std(1) == 0).float().mean()),
            "trained_rows": sum(len(ch.rows) for ch in plan.chunks) / plan.total_rows,
            "tokens_per_s": float(lengths.sum()) / seconds, "gen_seconds": gen_seconds,
            "step_seconds": seconds,
        }  # fmt: skip
        if c.beta:
            metrics["kl"] = kl
        return metrics

    def plan(self, rollout: Rollout, advantages: Tensor) -> _Plan:
        """Split a rollout into micro-batches, with the old policy's and the reference's log-probs.

        Without a KL term, a completion whose advantage is 0 (its whole group scored alike) adds
        exactly nothing to the loss or its gradient under grpo, dr_grpo and dapo, whose normalizers
        do not depend on which rows share a micro-batch: it is left out of the forward and backward.
        """
        c = self.config
        cmask = rollout.completion_mask.float()
        rows = torch.arange(cmask.shape[0], device=cmask.device)
        if c.beta == 0 and c.loss_type != "bnpo":
            rows = rows[advantages != 0]
        chunks = [
            self._chunk(rollout, rows[i : i + c.micro_batch]) for i in range(0, len(rows), c.micro_batch)
        ]
        if c.num_iterations > 1:  # pi_old: the policy before this rollout's first update
            old = [self._logps(ch, no_grad=True) for ch in chunks]
        else:  # the rollout's own log-probs equal a teacher-forced pass (tests/train/test_grpo.py)
            old = [rollout.logps[ch.rows, : ch.n] for ch in chunks]
        refs = [self._logps(ch, no_grad=True, reference=True) for ch in chunks] if c.beta else None
        return _Plan(chunks, old, refs, advantages, cmask, cmask.shape[0], cmask.sum())

    def backward(self, plan: _Plan) -> tuple[float, float, float]:
        """Accumulate the gradient of the batch's GRPO loss, micro-batch by micro-batch, scaled so the
        sum is the whole batch's loss; returns (loss, KL, clip ratio) of the batch."""
        c = self.config
        self.policy.model.train()
        loss = kl = clip = 0.0
        for k, ch in enumerate(plan.chunks):
            out = grpo_objective(
                self._logps(ch), plan.old[k], plan.advantages[ch.rows], plan.cmask[ch.rows, : ch.n],
                plan.refs[k] if plan.refs else None, c.beta, c.epsilon, c.epsilon_high or c.epsilon,
                c.loss_type, c.max_new_tokens, num_items=plan.total_tokens,
            )  # fmt: skip
            scale = {"dapo": 1.0, "bnpo": 1.0 / len(plan.chunks)}.get(
                c.loss_type, len(ch.rows) / plan.total_rows
            )
            (out.loss * scale).backward()
            share = float(plan.cmask[ch.rows].sum() / plan.total_tokens.clamp(min=1))
            loss += float(out.loss.detach()) * scale
            clip += float(out.clip_ratio) * share
            kl += float(out.kl or 0.0) * share
        return loss, kl, clip

    def _chunk(self, rollout: Rollout, rows: Tensor) -> _Chunk:
        """Rows of the rollout as one forward's input, without the columns that are padding in all of
        them: left padding of the prompts, and completion columns past the longest of these rows."""
        mask = rollout.attention_mask[rows]
        n = int(rollout.completion_mask[rows].sum(1).max())
        end = rollout.prompt_ids.shape[1] + n
        start = int((rollout.prompt_mask[rows].sum(0) > 0).long().argmax())
        return _Chunk(rows, rollout.input_ids[rows, start:end], mask[:, start:end], n)

    def _logps(self, chunk: _Chunk, no_grad: bool = False, reference: bool = False) -> Tensor:
        """Per-token log-probs [rows, n] of a chunk's completions under the policy, or the reference
        (a frozen copy, or the policy with its LoRA adapters switched off)."""
        model = self.ref if reference and self.ref is not None else self.policy.model
        off = adapters_disabled(model) if reference and self.ref is None else contextlib.nullcontext()
        grad = torch.no_grad() if no_grad else contextlib.nullcontext()
        with grad, off, self.policy.autocast_ctx():
            return completion_logps(model, chunk.ids, chunk.mask, chunk.n, self.config.temperature).float()


@dataclass
class _Chunk:
    rows: Tensor  # which rows of the rollout
    ids: Tensor  # their prompt + completion tokens, trimmed of all-padding columns
    mask: Tensor
    n: int  # completion columns kept


@dataclass
class _Plan:
    chunks: list[_Chunk]
    old: list[Tensor]
    refs: list[Tensor] | None
    advantages: Tensor
    cmask: Tensor
    total_rows: int
    total_tokens: Tensor


def _progress(enabled: bool, total: int) -> rp.Progress:
    return rp.Progress(
        rp.TextColumn("step {task.completed}/{task.total}"), rp.BarColumn(),
        rp.TextColumn("reward {task.fields[reward]}  loss {task.fields[loss]}  len {task.fields[length]}"),
        rp.TimeElapsedColumn(), rp.TimeRemainingColumn(),
        console=Console(stderr=True), disable=not enabled,
    )  # fmt: skip


def plot_curves(rows: list[dict[str, Any]], path: Path, title: str) -> Path | None:
    """Train reward (with the held-out evaluations as points), loss, KL and completion length."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key: str) -> tuple[list[float], list[float]]:
        pts = [(r["step"], r[key]) for r in rows if key in r]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    xs, ys = series("reward")
    axes[0].plot(xs, ys, label="train (sampled)", alpha=0.6)
    if len(ys) >= 5:
        k = max(2, len(ys) // 10)
        smooth = [
            sum(ys[max(0, i - k + 1) : i + 1]) / len(ys[max(0, i - k + 1) : i + 1]) for i in range(len(ys))
        ]
        axes[0].plot(xs, smooth, label=f"train, mean of {k}")
    hx, hy = series("heldout_reward")
    axes[0].plot(hx, hy, "o-", label="held-out (greedy)")
    axes[0].set_ylabel("reward")
    axes[0].legend()
    for ax, key, label in ((axes[1], "loss", "GRPO loss"), (axes[2], "kl", "KL to reference"),
                           (axes[3], "completion_length", "completion tokens")):  # fmt: skip
        kx, ky = series(key)
        ax.plot(kx, ky)
        ax.set_ylabel(label)
    return save_step_figure(fig, axes, path, title)


def train_grpo(
    config: RLConfig,
    run_dir: Path | None = None,
    out: Path | None = None,
    reward: Reward | None = None,
    progress: bool = True,
) -> RLResult:
    """Run GRPO as `config` says; writes metrics.jsonl, curves.png, summary.json and the model.

    `reward` overrides `config.reward` (a learned reward model, or any Reward built in code).
    """
    torch.manual_seed(config.seed)
    path = resolve(config.model)
    if not (path / "tokenizer.json").is_file():
        raise UserError(f"{path} has no tokenizer.json: RL needs the model's tokenizer to read its answers")
    train_rows, eval_rows = _prompt_rows(config)
    if reward is None:
        name = config.reward or (TASK_REWARDS[config.task] if config.task else None)
        if name is None:
            raise UserError("say which reward scores the completions (e.g. reward: max_words)")
        options = dict(config.reward_options)
        if name == "max_words" and config.task == "short":
            options.setdefault("n", config.short_words)
        reward = make_reward(name, **options)
    check_rows(reward, train_rows, "training prompts")
    check_rows(reward, eval_rows, "held-out prompts")
    model = load_model(path, dtype=torch.float32, device=config.device)
    if not isinstance(model, DecoderLM):
        raise UserError(f"{path} is a {type(model).__name__}; GRPO here trains decoder-only models")
    tokenizer = Tokenizer.load(path)
    train_ids = [encode_prompt(tokenizer, r["prompt"]) for r in train_rows]
    eval_ids = [encode_prompt(tokenizer, r["prompt"]) for r in eval_rows]
    longest = max(len(i) for i in train_ids + eval_ids) + config.max_new_tokens
    if longest > model.config.max_seq_len:
        raise UserError(
            f"a prompt plus max_new_tokens is {longest} tokens, more than the model's context of "
            f"{model.config.max_seq_len}: shorten the prompts or lower max_new_tokens"
        )
    ref = None
    if config.beta and config.lora is None:
        ref = copy.deepcopy(model).eval().requires_grad_(False)
    if config.lora is not None:
        apply_lora(model, LoRAConfig(**config.lora))
    else:
        model.requires_grad_(True)
    autocast = choose_autocast(config.dtype, model.device)
    policy = Policy(model, tokenizer, stop_ids(path, tokenizer, model), autocast)
    trainer = GRPOTrainer(config, policy, reward, ref)
    run_dir = Path(run_dir) if run_dir else new_run_dir("rl")
    metrics = MetricsLog(run_dir)
    atomic_write_text(run_dir / "config.json", json.dumps(config.model_dump(mode="json"), indent=2))

    before, samples_before = heldout_reward(policy, eval_rows, eval_ids, reward, config.max_new_tokens)
    metrics.log(0, heldout_reward=before)
    order = list(range(len(train_rows)))
    rng = random.Random(config.seed)
    rng.shuffle(order)
    budget = config.max_minutes * 60 if config.max_minutes else None
    start, step, stopped, history = time.perf_counter(), 0, "steps", []
    with _progress(progress, config.steps) as bar:
        task = bar.add_task("rl", total=config.steps, reward="-", loss="-", length="-")
        while step < config.steps:
            first = step * config.prompts_per_step
            picked = [order[(first + i) % len(order)] for i in range(config.prompts_per_step)]
            lr = config.learning_rate * min(1.0, (step + 1) / max(1, config.warmup_steps))
            m = trainer.step([train_rows[i] for i in picked], [train_ids[i] for i in picked], lr)
            step += 1
            history.append(m["reward"])
            if not math.isfinite(m["loss"]):
                raise UserError(f"the GRPO loss became {m['loss']} at step {step}: lower the learning rate")
            if step % config.log_every == 0 or step == 1:
                metrics.log(step, **m)
            if config.eval_every and step % config.eval_every == 0 and step < config.steps:
                score, _ = heldout_reward(policy, eval_rows, eval_ids, reward, config.max_new_tokens)
                metrics.log(step, heldout_reward=score)
                if progress:
                    bar.console.print(f"step {step}: held-out reward {score:.3f}")
            bar.update(task, completed=step, reward=f"{m['reward']:.3f}", loss=f"{m['loss']:.4f}",
                       length=f"{m['completion_length']:.1f}")  # fmt: skip
            elapsed = time.perf_counter() - start
            if budget is not None and elapsed + elapsed / step > budget:  # the next step would overrun
                stopped = "time budget"
                break
    seconds = time.perf_counter() - start
    after, samples_after = heldout_reward(policy, eval_rows, eval_ids, reward, config.max_new_tokens)
    metrics.log(step, heldout_reward=after)
    metrics.close()
    if config.lora is not None:
        merge_lora(model)
    model_dir = Path(out) if out else run_dir / "model"
    provenance = {
        "parent": str(path), "training": "grpo", "run": str(run_dir), "reward": reward.name,
        "steps": step, "heldout_reward_before": before, "heldout_reward_after": after,
    }  # fmt: skip
    save_model(model.eval(), model_dir, tokenizer=tokenizer, provenance=provenance)
    k = max(1, min(10, len(history) // 4))
    result = RLResult(
        run_dir, model_dir, step, seconds, stopped, before, after, sum(history[:k]) / k,
        sum(history[-k:]) / k, len(eval_rows), samples_before[:5], samples_after[:5],
    )  # fmt: skip
    plot_curves(metrics.rows, run_dir / "curves.png",
                f"GRPO {path.name}: reward {reward.name}, held-out {before:.3f} -> {after:.3f}")  # fmt: skip
    summary = {**asdict(result), "margin": result.margin}
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2, default=str))
    return result
