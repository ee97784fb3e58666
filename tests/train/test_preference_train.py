"""DPO, IPO, KTO and reward-model training on a tiny chat model: the trained model prefers what the
data prefers on held-out prompts; bad files stop before any training."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from genloop.checkpoint import load_model
from genloop.preprocess.tokenizer import Tokenizer
from genloop.train.preference_data import KTODataset, PreferenceDataset, sequence_logps
from genloop.train.reward_model import RewardModel, score_texts
from tests.serve.live import WORDS, tiny_model


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def pairs(n: int, seed: int) -> list[dict]:
    """The hidden preference: a short answer beats a long one."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = [{"role": "user", "content": sentence(rng, rng.randint(3, 8))}]
        short, long = sentence(rng, rng.randint(1, 2)), sentence(rng, rng.randint(10, 16))
        rows.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": short}],
                     "rejected": [{"role": "assistant", "content": long}]})  # fmt: skip
    return rows


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("pref-model"))


def margins(model_dir: Path, trained: Path, rows: list[dict]) -> np.ndarray:
    """Held-out (chosen - rejected) log-prob gain of the trained model over the starting one."""
    tok = Tokenizer.load(model_dir)
    data = PreferenceDataset(rows, tok, 128, len(rows), seed=0, rank=0, world_size=1)
    out = []
    for path in (model_dir, trained):
        model = load_model(path).eval()
        with torch.no_grad():
            batch = data.batch(0)
            logps = sequence_logps(model, batch)
        half = len(rows)
        # batch order is a permutation shared by both models; chosen rows come first
        out.append((logps[:half] - logps[half:]).numpy())
    return out[1] - out[0]


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["sigmoid", "ipo"])
def test_dpo_learns_the_hidden_preference(cli, tmp_path, model_dir, loss):
    train = write(tmp_path / "train.jsonl", pairs(64, seed=1))
    run = tmp_path / "run"
    code, out, err = cli(
        "dpo", str(model_dir), "--data", str(train), "--loss", loss, "--steps", "30", "--lr", "3e-3",
        "--batch-size", "8", "--seq-len", "128", "--beta", "0.1", "--run-dir", str(run), "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    assert "30 steps" in out
    gain = margins(model_dir, run / "model", pairs(24, seed=99))
    assert (gain > 0).mean() >= 0.9, gain


def test_dpo_with_lora_trains_an_adapter(cli, tmp_path, model_dir):
    train = write(tmp_path / "train.jsonl", pairs(32, seed=1))
    run = tmp_path / "run"
    code, _, err = cli(
        "dpo", str(model_dir), "--data", str(train), "--lora", "--lora-r", "4", "--steps", "6",
        "--lr", "1e-3", "--batch-size", "4", "--seq-len", "128", "--run-dir", str(run), "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    assert (run / "model" / "adapter_config.json").is_file()


@pytest.mark.slow
def test_kto_pushes_liked_answers_up_and_disliked_down(cli, tmp_path, model_dir):
    rows = []
    for r in pairs(48, seed=2):
        rows.append({"prompt": r["prompt"], "completion": r["chosen"], "label": True})
        rows.append({"prompt": r["prompt"], "completion": r["rejected"], "label": False})
    train = write(tmp_path / "kto.jsonl", rows)
    run = tmp_path / "run"
    code, _, err = cli(
        "kto", str(model_dir), "--data", str(train), "--steps", "30", "--lr", "3e-3", "--batch-size", "8",
        "--seq-len", "128", "--run-dir", str(run), "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    gain = margins(model_dir, run / "model", pairs(24, seed=98))
    assert (gain > 0).mean() >= 0.9, gain


@pytest.mark.slow
def test_reward_model_scores_held_out_chosen_above_rejected(cli, tmp_path, model_dir):
    train = write(tmp_path / "train.jsonl", pairs(96, seed=3))
    run = tmp_path / "run"
    code, _, err = cli(
        "rm", str(model_dir), "--data", str(train), "--steps", "40", "--lr", "2e-3", "--batch-size", "8",
        "--seq-len", "128", "--run-dir", str(run), "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    rm = RewardModel.load(run / "model")
    tok = Tokenizer.load(run / "model")
    held = pairs(32, seed=97)
    prompts = [r["prompt"] for r in held] * 2
    answers = [r["chosen"] for r in held] + [r["rejected"] for r in held]
    scores = np.array(score_texts(rm, tok, prompts, answers))
    assert (scores[:32] > scores[32:]).mean() >= 0.9


def test_kto_reference_pairs_each_example_with_a_fixed_other(model_dir):
    tok = Tokenizer.load(model_dir)
    rows = [{"prompt": "a b", "completion": f" {w}", "label": i % 2 == 0} for i, w in enumerate(WORDS[:10])]
    data = KTODataset(rows, tok, 64, 2, seed=0, rank=0, world_size=1)
    assert sorted(data.partner.tolist()) == list(range(10)) and all(data.partner != np.arange(10))


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([], "holds no usable preference pairs"),
        ([{"prompt": "hi", "chosen": "a"}], "missing field(s) rejected"),
        ([{"prompt": "hi", "chosen": "same", "rejected": "same"}], "'chosen' equals 'rejected'"),
        ([{"prompt": "hi", "chosen": 3, "rejected": "b"}], "'chosen' must be a string or a list"),
    ],
)
def test_bad_preference_files_stop_before_training(cli, tmp_path, model_dir, rows, message):
    data = write(tmp_path / "bad.jsonl", rows)
    run = tmp_path / "run"
    code, _, err = cli("dpo", str(model_dir), "--data", str(data), "--steps", "2", "--run-dir", str(run))
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and not (run / "model").exists()


def test_kto_labels_must_be_booleans(cli, tmp_path, model_dir):
    data = write(tmp_path / "bad.jsonl", [{"prompt": "hi", "completion": "a", "label": "yes"}])
    code, _, err = cli("kto", str(model_dir), "--data", str(data), "--steps", "2")
    assert code == 2 and "'label' must be true" in err


def test_rows_may_carry_precomputed_reference_logps(model_dir):
    tok = Tokenizer.load(model_dir)
    rows = [{**r, "ref_chosen_logps": -1.5, "ref_rejected_logps": -20.0} for r in pairs(4, seed=5)]
    data = PreferenceDataset(rows, tok, 128, 2, seed=0, rank=0, world_size=1)
    batch = data.batch(0)
    assert batch["ref_logps"].tolist() == [-1.5, -1.5, -20.0, -20.0]
    with pytest.raises(Exception, match="give both ref_chosen_logps and ref_rejected_logps"):
        PreferenceDataset([{**rows[0], "ref_rejected_logps": None}], tok, 128, 1, rank=0, world_size=1)


def test_rl_can_take_its_reward_from_a_trained_reward_model(cli, tmp_path, model_dir):
    train = write(tmp_path / "train.jsonl", pairs(16, seed=4))
    code, _, err = cli(
        "rm", str(model_dir), "--data", str(train), "--steps", "3", "--batch-size", "4", "--seq-len", "128",
        "--run-dir", str(tmp_path / "rm"), "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    rng = random.Random(6)
    prompts = write(tmp_path / "prompts.jsonl", [{"prompt": sentence(rng, 4)} for _ in range(8)])
    code, out, err = cli(
        "rl", str(model_dir), "--prompts", str(prompts), "--reward-model", str(tmp_path / "rm" / "model"),
        "--steps", "2", "--group-size", "2", "--prompts-per-step", "2", "--max-new-tokens", "6",
        "--holdout", "2", "--run-dir", str(tmp_path / "rl"), "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    assert "held-out reward (2 prompts, greedy)" in out
    rows = [json.loads(x) for x in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["reward"] for r in rows if "reward" in r]
    assert rewards and all(np.isfinite(rewards)) and len(set(rewards)) > 0
