"""The trainer end to end on tiny models and real shards: exact resume after SIGKILL, torchrun DDP
and FSDP2 against one process, NaN and bad-input guards, freezing, and continual learning."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from genloop.checkpoint import load_model
from genloop.config import RunConfig, load_config
from genloop.train.continual import continual
from genloop.train.run import run_training
from tests.train.kit import code_shards, genloop, prose_shards, run_config


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prose_shards(tmp_path_factory.mktemp("prose"))


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_pretrain_writes_model_metrics_and_plot(shards: Path, tmp_path: Path) -> None:
    config = run_config(tmp_path / "run.yaml", shards, steps=30)
    r = genloop("train", config, "train.eval_every=10", "--run-dir", tmp_path / "run", "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "30 steps (max_steps)" in r.stdout and "tokens/s" in r.stdout and "MFU" in r.stdout
    run = tmp_path / "run"
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert len(losses(run)) == 30 and losses(run)[30] < losses(run)[1]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val_loss"] is not None and summary["steps"] == 30
    model = load_model(run / "model")
    assert model.config.vocab_size == 512
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("step-*"))
    assert ckpts == ["step-0000010", "step-0000020", "step-0000030"]


def test_sigkill_then_resume_gives_the_same_losses(shards: Path, tmp_path: Path) -> None:
    config = run_config(tmp_path / "run.yaml", shards, steps=80)
    reference = tmp_path / "reference"
    r = genloop("train", config, "--run-dir", reference, "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "genloop", "train", str(config), "--run-dir", str(killed), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = killed / "checkpoints" / "latest"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if latest.is_file() and latest.read_text().strip() >= "step-0000030":
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    resumed_from = int(latest.read_text().strip().split("-")[1])
    assert 30 <= resumed_from < 80
    r = genloop("train", config, "--run-dir", killed, "--resume", "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = losses(reference), losses(killed)
    later = [s for s in a if s > resumed_from]
    assert later and [a[s] for s in later] == [b[s] for s in later]  # exact, not approximate
    assert sorted(b) == sorted(a)


def test_sigterm_saves_a_checkpoint_and_stops(shards: Path, tmp_path: Path) -> None:
    config = run_config(tmp_path / "run.yaml", shards, steps=100000)
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "genloop",
        "train",
        str(config),
        "train.save_every=100000",
        "train.compile=false",
    ]
    cmd += ["--run-dir", str(run), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "metrics.jsonl").is_file():
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "(signal)" in out
    step = max(losses(run))
    assert (run / "checkpoints" / f"step-{step:07d}" / "trainer.pt").is_file()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_torchrun_two_processes_match_one(strategy: str, shards: Path, tmp_path: Path) -> None:
    config = run_config(tmp_path / "run.yaml", shards, steps=20)
    single = tmp_path / "single"
    r = genloop("train", config, "--run-dir", single, "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    double = tmp_path / "double"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd += ["-m", "genloop", "train", str(config), f"train.distributed={strategy}"]
    cmd += ["--run-dir", str(double), "--no-progress"]
    r = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = losses(single), losses(double)
    assert abs(a[20] - b[20]) < 1e-4, (a[20], b[20])
    assert max(abs(a[s] - b[s]) for s in a) < 1e-4
    assert load_model(double / "model").config.n_layers == 2


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(shards: Path, tmp_path: Path) -> None:
    config = run_config(tmp_path / "run.yaml", shards, steps=200)
    run = tmp_path / "run"
    wild = ["train.learning_rate=1.0e+6", "train.grad_clip=0", "train.warmup_steps=0"]
    r = genloop("train", config, *wild, "--run-dir", run, "--no-progress")
    assert r.returncode == 2, r.stderr[-2000:]
    assert "loss is nan at step" in r.stderr or "loss is inf at step" in r.stderr
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1


def test_bad_run_settings_fail_before_training(shards: Path, tmp_path: Path) -> None:
    config = run_config(tmp_path / "run.yaml", shards, steps=5)
    (tmp_path / "a_file").write_text("x")
    r = genloop("train", config, "--run-dir", tmp_path / "a_file" / "run", "--no-progress")
    assert r.returncode == 2 and "cannot write checkpoints" in r.stderr
    huge = ["train.batch_size=4096", "data.seq_len=128", "model.d_model=4096", "model.n_layers=64"]
    huge += ["model.d_ff=16384", "model.max_seq_len=128"]
    r = genloop("train", config, *huge, "--no-progress")
    assert r.returncode == 2 and "GiB of memory" in r.stderr and r.stderr.count("\n") == 1
    r = genloop("train", config, "train.objective=sft", "--no-progress")
    assert r.returncode == 2 and "train_file" in r.stderr
    r = genloop("train", config, "train.freeze_layers=5", "--no-progress")
    assert r.returncode == 2 and "freeze_layers=5" in r.stderr


def test_freezing_leaves_frozen_weights_bit_identical(shards: Path, tmp_path: Path) -> None:
    base = tmp_path / "base"
    config = load_config(RunConfig, run_config(tmp_path / "run.yaml", shards, steps=5))
    run_training(config, base, progress=False)
    frozen = config.model_copy(deep=True)
    frozen.train = frozen.train.model_copy(
        update={"init_from": str(base / "model"), "freeze_layers": 1, "freeze_embeddings": True}
    )
    run_training(frozen, tmp_path / "frozen", progress=False)
    before, after = load_model(base / "model"), load_model(tmp_path / "frozen" / "model")
    b, a = before.state_dict(), after.state_dict()
    for name in b:
        same = torch.equal(b[name], a[name])
        if name.startswith(("embed.", "lm_head", "decoder.blocks.0.")):
            assert same, name
        elif name.startswith("decoder.blocks.1."):
            assert not same, name


@pytest.mark.slow
def test_replay_reduces_forgetting(shards: Path, tmp_path: Path) -> None:
    base = tmp_path / "base"
    config = load_config(RunConfig, run_config(tmp_path / "run.yaml", shards, steps=150))
    run_training(config, base, progress=False)
    new = code_shards(tmp_path, str(shards / "tokenizer"))
    reports = {}
    for ratio in (0.0, 0.5):
        cont = config.model_copy(deep=True)
        cont.train = cont.train.model_copy(update={"init_from": str(base / "model"), "max_steps": 100})
        cont.data = cont.data.model_copy(
            update={
                "shards": str(new),
                "replay_shards": str(shards) if ratio else None,
                "replay_ratio": ratio,
            }
        )
        _, reports[ratio] = continual(cont, str(shards), run_dir=tmp_path / f"cont{ratio}", progress=False)
        print(f"replay {ratio}: " + "; ".join(reports[ratio].lines()))
    plain, replay = reports[0.0], reports[0.5]
    assert plain.new_after < plain.new_before and replay.new_after < replay.new_before
    assert plain.old_after - plain.old_before > 0  # learning code costs some prose
    assert replay.old_after - replay.old_before < plain.old_after - plain.old_before


def test_time_budget_runs_decay_their_learning_rate(shards: Path, tmp_path: Path) -> None:
    """WSD's decay sits in the last 20% of the run; with a time budget that is the budget's, not
    max_steps' (the 20-minute pretraining run once ended still at its peak rate)."""
    config = run_config(tmp_path / "run.yaml", shards, steps=100000)
    settings = ["train.max_minutes=0.15", "train.schedule=wsd", "train.compile=false"]
    settings.append("train.save_every=100000")
    r = genloop("train", config, *settings, "--run-dir", tmp_path / "run", "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "(time budget)" in r.stdout
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lrs = [row["lr"] for row in rows if "lr" in row]
    assert max(lrs) == pytest.approx(3e-3)
    assert lrs[-1] < 0.5 * 3e-3, lrs[-5:]
