"""The one training loop every objective runs through.

Gradient accumulation, AdamW (fused where the build has it), warmup + cosine/WSD schedule, gradient
clipping, bf16 autocast only where it is measured to be faster, optional torch.compile and
activation checkpointing, evaluation every N steps with early stopping, a time budget, checkpoints
every N steps and on SIGTERM/SIGINT, exact resume, NaN guard, metrics and a plot. Under torchrun it
runs DDP or FSDP2; only rank 0 prints, logs and saves.

Batches are a pure function of the step (`data.batch(k)`), so resuming needs only the step, the
model, the optimizer and the RNGs: the loss at every later step equals the uninterrupted run's.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from genloop.config import TrainConfig
from genloop.errors import UserError
from genloop.train import distributed as dist_util
from genloop.train.hardware import choose_autocast
from genloop.train.metrics import MetricsLog
from genloop.train.progress import TrainProgress
from genloop.train.schedule import lr_at
from genloop.train.state import (
    latest_checkpoint,
    read_trainer_state,
    set_rng_state,
    write_checkpoint,
    write_rng,
)

Objective = Callable[[nn.Module, dict[str, Tensor]], tuple[Tensor, int]]
"""(model, batch) -> (mean loss over the batch's target tokens, number of target tokens)."""


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the run stopped and kept its last good checkpoint."""


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    loss: float
    val_loss: float | None
    tokens_per_s: float
    mfu: float
    seconds: float
    stopped: str  # "max_steps", "time budget", "early stopping", "signal"
    checkpoint: Path | None


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        train_data: Any,
        val_data: Any | None,
        config: TrainConfig,
        run_dir: Path,
        save_model_to: Callable[[nn.Module, Path], Any],
        tokens_per_step: int,
        flops_per_token: float,
        peak_flops: float,
        progress: bool = True,
    ) -> None:
        self.config, self.run_dir = config, run_dir
        self.objective, self.train_data, self.val_data = objective, train_data, val_data
        self.save_model_to = save_model_to
        self.tokens_per_step, self.flops_per_token, self.peak_flops = (
            tokens_per_step,
            flops_per_token,
            peak_flops,
        )
        self.rank, self.world = dist_util.rank_and_world()
        self.main = self.rank == 0
        self.raw_model = model
        self.trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        self.model = dist_util.wrap(model, config.distributed)
        self.device = next(model.parameters()).device
        self.autocast_dtype = choose_autocast(config.dtype, self.device)  # measured, not assumed
        self.optimizer = make_optimizer(self.raw_model, config, self.device)
        self.metrics = MetricsLog(run_dir, enabled=self.main)
        self.progress = progress and self.main
        self.step = 0
        self.total_steps = config.max_steps  # with a time budget: the steps the budget is projected to allow
        self.best_val = math.inf
        self.bad_evals = 0
        self._signal: int | None = None
        self._first_step_done: tuple[float, int] | None = None

    # ---- resume ---------------------------------------------------------------------------------

    def resume(self) -> Path | None:
        """Continue from the newest checkpoint of this run, exactly; None when there is none."""
        checkpoint = latest_checkpoint(self.run_dir)
        if checkpoint is None:
            return None
        state = read_trainer_state(checkpoint)
        dist_util.load_full_state(self.model, self.optimizer, state["model"], state["optimizer"])
        self.step, self.best_val, self.bad_evals = state["step"], state["best_val"], state["bad_evals"]
        rng = checkpoint / f"rng-{self.rank}.pt"
        if rng.is_file():
            set_rng_state(torch.load(rng, weights_only=False))
        self.metrics.truncate_after(self.step)
        return checkpoint

    def save(self) -> Path | None:
        model_state, optim_state = dist_util.full_state(self.model, self.optimizer)
        path = None
        if self.main:
            trainable = {k: v for k, v in model_state.items() if k in self.trainable}
            state = {
                "step": self.step,
                "model": trainable,
                "optimizer": optim_state,
                "best_val": self.best_val,
            }
            state["bad_evals"] = self.bad_evals
            path = write_checkpoint(
                self.run_dir, self.step, lambda d: self.save_model_to(self.raw_model, d, model_state),
                state, self.config.keep_last,
            )  # fmt: skip
        path = dist_util.broadcast_path(path)
        write_rng(path, self.rank)
        dist_util.barrier()
        return path

    # ---- the loop -------------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        cfg = self.config
        start_time = time.perf_counter()
        budget = cfg.max_minutes * 60 if cfg.max_minutes else None
        stopped, loss_value, last_checkpoint = "max_steps", math.nan, None
        rate = mfu = 0.0
        val_loss: float | None = None
        with self._signals(), TrainProgress(self.progress, cfg.max_steps, self.step) as bar:
            while self.step < cfg.max_steps:
                tick = time.perf_counter()
                loss_value = self._train_step()
                if not math.isfinite(loss_value):
                    good = latest_checkpoint(self.run_dir)
                    raise TrainingDiverged(
                        f"loss is {loss_value} at step {self.step + 1}: training stopped; the last good "
                        f"checkpoint is {good or 'none (no checkpoint was saved yet)'} — lower the learning "
                        "rate or check the data"
                    )
                self.step += 1
                seconds = time.perf_counter() - tick
                rate = self.tokens_per_step / seconds
                mfu = rate * self.flops_per_token / self.peak_flops if self.peak_flops else 0.0
                bar.update(self.step, loss_value, rate, mfu)
                if budget is not None:
                    self._project(budget, start_time, bar)
                if self.step % cfg.log_every == 0 or self.step == 1:
                    lr = self.optimizer.param_groups[0]["lr"]
                    self.metrics.log(self.step, loss=loss_value, lr=lr, tokens_per_s=rate, mfu=mfu)
                out_of_time = budget is not None and time.perf_counter() - start_time >= budget
                if self.val_data is not None and (self.step % cfg.eval_every == 0 or out_of_time):
                    val_loss = self.evaluate()
                    self.metrics.log(self.step, val_loss=val_loss)
                    bar.note(f"step {self.step}: validation loss {val_loss:.4f}")
                    if val_loss < self.best_val - 1e-4:
                        self.best_val, self.bad_evals = val_loss, 0
                    else:
                        self.bad_evals += 1
                if self.step % cfg.save_every == 0:
                    last_checkpoint = self.save()
                if self._signal is not None:
                    stopped = "signal"
                elif out_of_time:
                    stopped = "time budget"
                elif cfg.early_stopping and self.bad_evals >= cfg.early_stopping:
                    stopped = "early stopping"
                else:
                    continue
                break
        if self.val_data is not None and (val_loss is None or self.step % cfg.eval_every):
            val_loss = self.evaluate()
            self.metrics.log(self.step, val_loss=val_loss)
        if last_checkpoint is None or not last_checkpoint.name.endswith(f"{self.step:07d}"):
            last_checkpoint = self.save()
        self.metrics.close()
        return TrainResult(
            self.run_dir, self.step, loss_value, val_loss, rate, mfu,
            time.perf_counter() - start_time, stopped, last_checkpoint,
        )  # fmt: skip

    def _project(self, budget: float, start_time: float, bar: TrainProgress) -> None:
        """A time budget, not max_steps, ends this run: aim the schedule's decay (cosine, or WSD's last
        20%) at the step the budget will reach at the pace so far, or it would never decay. The pace
        is wall time, so a resumed time-budget run follows the same schedule only approximately."""
        if self._first_step_done is None:
            self._first_step_done = (time.perf_counter(), self.step)  # skip step 1: compile, warm-up
            return
        since, first = self._first_step_done
        if self.step - first < 5:
            return
        pace = (time.perf_counter() - since) / (self.step - first)
        left = budget - (time.perf_counter() - start_time)
        self.total_steps = max(self.step + 1, min(self.config.max_steps, self.step + int(left / pace)))
        bar.set_total(self.total_steps)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _train_step(self) -> float:
        cfg = self.config
        self.model.train()
        lr = lr_at(
            self.step, cfg.learning_rate, cfg.warmup_steps, self.total_steps, cfg.schedule, cfg.min_lr_ratio
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=self.device)
        for micro in range(cfg.grad_accum):
            batch = self._to_device(self.train_data.batch(self.step * cfg.grad_accum + micro))
            sync = micro == cfg.grad_accum - 1
            with dist_util.maybe_no_sync(self.model, sync), self._autocast():
                loss, _ = self.objective(self.model, batch)
                (loss / cfg.grad_accum).backward()
            total += loss.detach().float()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return dist_util.mean_across_ranks(total / cfg.grad_accum)

    @torch.no_grad()
    def evaluate(self, data: Any | None = None, batches: int | None = None) -> float:
        """Mean loss over the first `eval_batches` validation batches (the same ones every time)."""
        data = data if data is not None else self.val_data
        self.model.eval()
        n = min(batches or self.config.eval_batches, len(data))
        losses, counts = torch.zeros((), device=self.device), torch.zeros((), device=self.device)
        for i in range(n):
            with self._autocast():
                loss, tokens = self.objective(self.model, self._to_device(data.batch(i)))
            losses += loss.float() * tokens
            counts += tokens
        return dist_util.sum_across_ranks(losses) / max(1.0, dist_util.sum_across_ranks(counts))

    def _to_device(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGTERM/SIGINT finish the current step, save a checkpoint and stop (once; twice aborts)."""

        def handler(signum: int, frame: Any) -> None:
            if self._signal is not None:
                raise KeyboardInterrupt
            self._signal = signum

        previous = {}
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: no handlers, the caller owns signals
            previous = {}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


def make_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over trainable parameters; weight decay on matrices only (not norms, biases)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UserError("nothing to train: every parameter is frozen (check freeze_layers / lora settings)")
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    kwargs: dict[str, Any] = {"lr": config.learning_rate, "betas": config.betas}
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):  # no fused kernel for this device/dtype: the foreach one
        return torch.optim.AdamW(groups, **kwargs)
