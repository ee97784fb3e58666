"""`genloop compare`: paired-bootstrap intervals checked against numpy and sacrebleu, the acceptance run
(two checkpoints of one training run, the later one better on validation perplexity), head-to-head win
rates from a trained reward model and from a judge model, and the one-line errors."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from genloop.config import RunConfig, load_config
from genloop.evaluate.bootstrap import (
    mean_statistic,
    paired_bootstrap,
    perplexity_statistics,
    resample_counts,
    sacrebleu_statistic,
)
from genloop.evaluate.compare import compare
from genloop.evaluate.judging import (
    JUDGE_PROMPT,
    Judge,
    decide_pairs,
    reward_model_outcomes,
    summarize_outcomes,
)
from genloop.evaluate.loglik import Pair, continuation_logprobs, summarize
from genloop.evaluate.metrics import bleu, chrf
from genloop.train.run import run_training
from tests.helpers import assert_one_line_error
from tests.serve.live import WORDS, tiny_model
from tests.train.kit import prose_shards, run_config
from tests.train.test_preference_train import pairs, write

PNG = b"\x89PNG"


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models on one thread (as in test_grpo): their ops are too small to split, and on the busy
    2-core machine two spinning OpenMP threads made the reward-model training here 16x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------ the bootstrap


def test_a_large_difference_gives_an_interval_that_excludes_zero_on_the_right_side() -> None:
    rng = np.random.default_rng(1)
    worse, better = rng.binomial(1, 0.3, 200), rng.binomial(1, 0.8, 200)
    up = paired_bootstrap({"acc": (mean_statistic(worse), mean_statistic(better))}, 200)["acc"]
    assert up.delta == pytest.approx(better.mean() - worse.mean())
    assert 0 < up.low < up.delta < up.high and up.verdict == "B better"
    down = paired_bootstrap({"acc": (mean_statistic(better), mean_statistic(worse))}, 200)["acc"]
    assert down.high < 0 and down.verdict == "A better"
    # lower is better: B with fewer nats per token is the better model, and the chart's sign flips
    tokens, nbytes = np.full(50, 100.0), np.full(50, 400.0)
    nats_a = rng.normal(500, 20, 50)
    stats_a = perplexity_statistics(nats_a, tokens, nbytes)
    stats_b = perplexity_statistics(nats_a - 60, tokens, nbytes)
    ppl = paired_bootstrap({m: (stats_a[m], stats_b[m]) for m in ("perplexity", "bits_per_byte")}, 50)
    for delta in ppl.values():
        assert delta.high < 0 and delta.verdict == "B better" and delta.improvement()[1] > 0


def test_identical_models_have_a_zero_delta_and_no_verdict() -> None:
    scores = mean_statistic(np.random.default_rng(2).random(40))
    delta = paired_bootstrap({"f1": (scores, scores)}, 40)["f1"]
    assert (delta.delta, delta.low, delta.high) == (0.0, 0.0, 0.0)
    assert delta.verdict == "no clear difference"


def test_percentile_interval_matches_a_direct_numpy_computation() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.random(60), rng.random(60) + 0.05
    delta = paired_bootstrap({"acc": (mean_statistic(a), mean_statistic(b))}, 60, resamples=500, seed=7)[
        "acc"
    ]
    idx = np.random.default_rng(7).integers(0, 60, size=(500, 60))
    expected = np.percentile(b[idx].mean(axis=1) - a[idx].mean(axis=1), [2.5, 97.5])
    assert [delta.low, delta.high] == pytest.approx(expected.tolist(), abs=1e-12)
    narrow = paired_bootstrap(
        {"acc": (mean_statistic(a), mean_statistic(b))}, 60, resamples=500, seed=7, confidence=0.9
    )["acc"]
    expected90 = np.percentile(b[idx].mean(axis=1) - a[idx].mean(axis=1), [5, 95])
    assert [narrow.low, narrow.high] == pytest.approx(expected90.tolist(), abs=1e-12)


def test_corpus_metrics_are_resampled_as_corpus_metrics() -> None:
    rng = np.random.default_rng(4)
    nats, tokens, nbytes = rng.uniform(50, 400, 30), rng.integers(10, 90, 30), rng.integers(40, 300, 30)
    stats = perplexity_statistics(nats, tokens, nbytes)
    whole = summarize(float(nats.sum()), int(tokens.sum()), int(nbytes.sum()))
    for metric in ("perplexity", "bits_per_byte", "nats_per_token"):
        assert stats[metric].value() == pytest.approx(whole[metric])
    counts = next(resample_counts(30, 5, seed=0))
    idx = np.random.default_rng(0).integers(0, 30, size=(5, 30))[0]
    drawn = stats["perplexity"].finish(counts @ stats["perplexity"].stats)[0]
    assert drawn == pytest.approx(math.exp(nats[idx].sum() / tokens[idx].sum()))
    assert drawn != pytest.approx(np.mean(np.exp(nats[idx] / tokens[idx])), rel=1e-3)  # not a mean of ppls
    # BLEU and chrF: sacrebleu's corpus score of the resampled hypotheses and references
    r = random.Random(5)
    preds = [" ".join(r.choices(WORDS, k=r.randint(3, 9))) for _ in range(30)]
    refs = [
        [" ".join(r.choices(WORDS, k=r.randint(3, 9))) for _ in range(r.randint(1, 2))] for _ in range(30)
    ]
    for name, corpus in (("bleu", bleu), ("chrf", chrf)):
        stat = sacrebleu_statistic(name, preds, refs)
        assert stat.value() == pytest.approx(corpus(preds, refs))
        resampled = corpus([preds[i] for i in idx], [refs[i] for i in idx])
        assert stat.finish(counts @ stat.stats)[0] == pytest.approx(resampled)


# ------------------------------------------------------------------------------ the acceptance


@pytest.fixture(scope="module")
def training_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(shard folder, run folder) of a 20-step tiny pretraining run checkpointed every 5 steps."""
    root = tmp_path_factory.mktemp("compare-run")
    shards = prose_shards(root)
    config = load_config(
        RunConfig,
        run_config(root / "run.yaml", shards, steps=20),
        ["train.save_every=5", "train.keep_last=10"],
    )
    run_training(config, root / "run", progress=False)
    return shards, root / "run"


def test_compare_reports_the_later_checkpoint_better_on_validation_perplexity(
    cli, training_run: tuple[Path, Path], tmp_path: Path
) -> None:
    shards, run = training_run
    early, late = run / "checkpoints" / "step-0000005", run / "checkpoints" / "step-0000020"
    out = tmp_path / "cmp"
    code, stdout, err = cli("compare", early, late, "--tasks", f"perplexity:{shards}", "--out", out)
    assert code == 0, err
    result = json.loads((out / "compare.json").read_text())
    metrics = result["tasks"]["perplexity:shards"]["metrics"]
    evaluated = json.loads((out / "a" / "results.json").read_text())["tasks"]["perplexity:shards"]
    for name in ("perplexity", "bits_per_byte"):
        m = metrics[name]
        assert m["b"] < m["a"] and m["ci"][0] < m["ci"][1] < 0 and m["verdict"] == "B better", m
        assert m["a"] == pytest.approx(evaluated["metrics"][name])
    assert Path(result["a"]) == (early / "model").resolve() and result["tasks"]["perplexity:shards"]["n"] > 10
    assert "bits_per_byte" in stdout and "B better" in stdout and "compare.png" in stdout
    assert (out / "compare.png").read_bytes()[:4] == PNG and "| perplexity:shards |" in (
        out / "compare.md"
    ).read_text()
    # the other way round, the same interval mirrored: A is the better model
    code, stdout, err = cli(
        "compare", late, early, "--tasks", f"perplexity:{shards}", "--out", tmp_path / "rev"
    )
    assert code == 0, err
    mirrored = json.loads((tmp_path / "rev" / "compare.json").read_text())["tasks"]["perplexity:shards"]
    assert mirrored["metrics"]["bits_per_byte"]["verdict"] == "A better"


# ------------------------------------------------------------------------------ head to head


def test_identical_answers_tie_and_an_empty_answer_loses_without_asking_the_judge() -> None:
    asked: list[list[int]] = []

    def decide(ask: list[int]) -> dict[int, tuple[int, dict[str, float]]]:
        asked.append(ask)
        return {i: (-1, {"score_a": 1.0, "score_b": 0.0}) for i in ask}

    outcomes, details = decide_pairs(["x", "", "y", "p q"], ["x", "z", " ", "r s"], decide)
    assert asked == [[3]] and outcomes.tolist() == [0, 1, -1, -1]
    assert details[0] == {"decided_by": "identical answers"} and details[3]["score_a"] == 1.0
    summary = summarize_outcomes(outcomes, resamples=100)
    assert (summary["wins"], summary["ties"], summary["losses"]) == (1, 1, 2)
    assert summary["win_rate"] == pytest.approx((1 + 0.5) / 4)


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("compare-judge"))


def test_the_judge_reads_its_preference_from_the_letters_log_probs(chat_model: Path) -> None:
    """The one-forward fast path equals scoring each letter as a continuation (lm-eval's way)."""
    judge = Judge(chat_model, rubric="Prefer short answers.", batch_size=2)
    prompts, first, second = (
        ["the cat", "a dog ran", "sun"],
        ["mat", "on a log", "moon"],
        ["sat", "big", "red sun"],
    )
    fast = judge.preference(prompts, first, second)
    pairs = []
    for prompt, x, y in zip(prompts, first, second, strict=True):
        text = JUDGE_PROMPT.format(rubric="Prefer short answers.", prompt=prompt, first=x, second=y)
        ctx = judge.tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
        )
        pairs += [Pair(list(ctx), judge.letters[0]), Pair(list(ctx), judge.letters[1])]
    slow = np.array(continuation_logprobs(judge.model, pairs, 512, 4))
    assert fast == pytest.approx(slow[1::2] - slow[0::2], abs=1e-4)
    outcomes, details = judge.outcomes(prompts, first, second)
    for o, d in zip(outcomes.tolist(), details, strict=True):  # a verdict needs both orders to agree
        u, v = d["b_preferred_shown_second"], d["b_preferred_shown_first"]
        assert o == (1 if u > 0 and v > 0 else -1 if u < 0 and v < 0 else 0)


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny reward model trained, as in test_preference_train, to prefer short answers."""
    from genloop.cli import main

    root = tmp_path_factory.mktemp("compare-rm")
    data = write(root / "pairs.jsonl", pairs(96, seed=3))
    code = main([
        "rm", str(tiny_model(root)), "--data", str(data), "--steps", "20", "--lr", "2e-3",
        "--batch-size", "8", "--seq-len", "128", "--run-dir", str(root / "run"), "--no-progress",
    ])  # fmt: skip
    assert code == 0
    return root / "run" / "model"


def test_a_reward_model_prefers_the_short_answers_it_was_trained_on(reward_model: Path) -> None:
    held = pairs(24, seed=97)
    prompts = [r["prompt"][0]["content"] for r in held]
    long = [r["rejected"][0]["content"] for r in held]
    short = [r["chosen"][0]["content"] for r in held]
    outcomes, details = reward_model_outcomes(reward_model, prompts, long, short, chat=True)
    summary = summarize_outcomes(outcomes)
    assert summary["wins"] + summary["ties"] + summary["losses"] == 24
    assert summary["win_rate"] >= 0.85 and summary["verdict"] == "B better", summary
    assert all(d["score_b"] > d["score_a"] for d, o in zip(details, outcomes, strict=True) if o > 0)


def test_compare_judges_generations_with_a_reward_model_and_a_judge(
    training_run: tuple[Path, Path], reward_model: Path, chat_model: Path, tmp_path: Path
) -> None:
    _, run = training_run
    rng = random.Random(8)
    rows = [{"prompt": " ".join(rng.choices(WORDS, k=5)), "reference": rng.choice(WORDS)} for _ in range(6)]
    task = tmp_path / "gen.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in rows))
    judge = chat_model
    result = compare(
        run / "checkpoints" / "step-0000005", run / "model", [f"generation:{task}"], out=tmp_path / "cmp",
        judge=judge, reward_model=reward_model, rubric="Prefer the answer with fewer words.",
        resamples=200, max_tokens=6,
    )  # fmt: skip
    task_result = result["tasks"]["generation:gen"]
    assert {"exact_match", "f1", "bleu", "chrf", "rouge1"} <= set(task_result["metrics"])
    assert all(m["ci"] is not None for m in task_result["metrics"].values())
    for kind in ("reward_model", "judge"):
        h = task_result["head_to_head"][kind]
        assert h["wins"] + h["ties"] + h["losses"] == 6 == len(h["per_prompt"])
        assert 0 <= h["ci"][0] <= h["win_rate"] <= h["ci"][1] <= 1
    assert result["judges"] == {"reward_model": str(reward_model), "judge": str(judge)}
    assert task_result["head_to_head"]["judge"]["rubric"] == "Prefer the answer with fewer words."
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:4] == PNG
    assert "B win rate [CI]" in (tmp_path / "cmp" / "compare.md").read_text()


# ------------------------------------------------------------------------------ bad input


def test_bad_input_is_one_line_and_exit_code_2(cli, training_run: tuple[Path, Path], tmp_path: Path) -> None:
    shards, run = training_run
    model = run / "model"
    task = f"perplexity:{shards}"
    cases = [
        (("compare", tmp_path / "nope", model, "--tasks", task), ("model A", "not found")),
        (("compare", model, model, "--tasks", "trivia:qa.jsonl"), ("unknown task kind 'trivia'",)),
        (("compare", model, model, "--tasks", task, "--rubric", "be nice"), ("--rubric needs --judge",)),
        (
            ("compare", model, model, "--tasks", task, "--judge", model, "--rubric", "@/no/file"),
            ("--rubric",),
        ),
        (("compare", model, model, "--tasks", task, "--reward-model", model), ("no reward head",)),
        (("compare", model, tmp_path, "--tasks", task), ("model B", "not a model directory")),
    ]
    for args, needles in cases:
        code, _, err = cli(*args, "--out", tmp_path / "out")
        assert code == 2, (args, err)
        assert_one_line_error(err, *needles)
    assert not (tmp_path / "out" / "a").exists()  # every check ran before any evaluation
