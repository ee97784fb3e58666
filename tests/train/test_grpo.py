"""GRPO: advantages and the four loss types equal TRL's on the same tensors; verifiable rewards (and
their sandbox); batched rollouts equal one-at-a-time decoding and report the log-probs a teacher-forced
pass recomputes; a tiny model learns a reward in a few dozen steps; `genloop rl` flags and errors."""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from genloop.checkpoint import load_model, save_model
from genloop.config import TokenizerConfig
from genloop.errors import UserError
from genloop.generate import greedy_decode
from genloop.model import build_model, preset
from genloop.model.lora import LoRAConfig, apply_lora, lora_modules
from genloop.preprocess import Tokenizer
from genloop.train.grpo import DEFAULT_LOSS_TYPE, LOSS_TYPES, group_advantages, grpo_loss, grpo_objective
from genloop.train.rewards import (
    CallableReward,
    FunctionReward,
    check_rows,
    last_number,
    make_reward,
    run_tests,
)
from genloop.train.rl import (
    GRPOTrainer,
    RLConfig,
    adapters_disabled,
    addition_task,
    load_prompts,
    short_task,
    train_grpo,
)
from genloop.train.rollout import Policy, completion_logps, sample_completions

trl_trainer = pytest.importorskip("trl.trainer.grpo_trainer", reason="TRL parity needs the test extra")
from trl.trainer.utils import nanstd  # noqa: E402

# ---- TRL parity ---------------------------------------------------------------------------------------


def trl_advantages(rewards: torch.Tensor, g: int, scale: str) -> torch.Tensor:
    """TRL 1.16 trl/trainer/grpo_trainer.py, GRPOTrainer._generate_and_score_completions, the
    "sum_then_normalize" branch with one reward function, restated (it is inline in that method);
    `nanstd` is TRL's own function from trl/trainer/utils.py."""
    mean = torch.nanmean(rewards.view(-1, g), dim=1).repeat_interleave(g, dim=0)
    if scale in ("group", "none"):
        std = nanstd(rewards.view(-1, g), dim=1).repeat_interleave(g, dim=0)
    else:
        std = nanstd(rewards).expand_as(rewards)
    adv = rewards - mean
    if scale != "none":
        adv = adv / (std + 1e-4)
    return torch.nan_to_num(adv, nan=0.0)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_match_trl(scale: str) -> None:
    torch.manual_seed(0)
    g = 6
    rewards = torch.randn(5 * g)
    rewards[g : 2 * g] = 0.5  # a group that all scored the same: advantage 0, not NaN
    rewards[2 * g] = float("nan")  # an unscorable completion: left out of its group's baseline
    rewards[3 * g : 4 * g] = torch.randint(0, 2, (g,)).float()  # a 0/1 verifiable reward
    ours = group_advantages(rewards, g, scale if scale != "group" else True)  # type: ignore[arg-type]
    theirs = trl_advantages(rewards, g, scale)
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=0), (ours - theirs).abs().max()
    assert ours[g : 2 * g].abs().max() == 0 and ours[2 * g] == 0


def test_our_defaults_are_trls() -> None:
    from trl import GRPOConfig

    fields = GRPOConfig.__dataclass_fields__
    assert fields["loss_type"].default == DEFAULT_LOSS_TYPE == "dapo"
    cfg = RLConfig(model="m")
    assert (cfg.loss_type, cfg.epsilon, cfg.beta) == (
        fields["loss_type"].default,
        fields["epsilon"].default,
        0.0,
    )
    assert (cfg.scale_rewards, cfg.num_iterations) == (fields["scale_rewards"].default, 1)


class _Accelerator:
    """One process: gather and reduce are the identity."""

    num_processes = 1
    sync_gradients = True

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def reduce(self, x: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        return x


class _TRLLoss:
    """The state `GRPOTrainer._compute_loss` reads from `self`, so TRL's own method runs on given tensors:
    token-level importance sampling, no vLLM, no entropy masking or bonus, no accumulation. Its model
    forward (`_get_per_token_logps_and_entropies`) returns the given log-probs."""

    def __init__(
        self, logps: torch.Tensor, loss_type: str, beta: float, eps: tuple[float, float], max_len: int
    ):
        self.logps, self.loss_type, self.beta = logps, loss_type, beta
        self.epsilon_low, self.epsilon_high = eps
        self.max_completion_length = max_len
        self.top_entropy_quantile, self.off_policy_mask_threshold = 1.0, None
        self.importance_sampling_level, self.use_vllm = "token", False
        self.args = SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1)
        self.model = SimpleNamespace(training=True)
        self.current_gradient_accumulation_steps = 1
        self.accelerator = _Accelerator()
        self._entropy_bonus_enabled = self.aux_loss_enabled = False
        self._metrics: dict[str, Any] = {"train": defaultdict(list), "eval": defaultdict(list)}

    def _get_per_token_logps_and_entropies(self, model: Any, input_ids: Any, *args: Any, **kw: Any) -> Any:
        return self.logps, torch.zeros_like(self.logps), None


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_grpo_loss_matches_trl(loss_type: str, beta: float) -> None:
    torch.manual_seed(1)
    b, t, eps = 8, 11, (0.2, 0.28)
    logps = (torch.randn(b, t) * 0.7 - 2.0).requires_grad_()
    old = logps.detach() + 0.3 * torch.randn(b, t)  # ratios far enough from 1 that both clips bite
    ref = logps.detach() + 0.3 * torch.randn(b, t)
    adv = torch.randn(b)
    mask = (torch.rand(b, t) > 0.3).long()
    mask[0] = 0  # a row with no completion tokens must not divide by zero
    inputs = {
        "prompt_ids": torch.zeros(b, 3, dtype=torch.long), "prompt_mask": torch.ones(b, 3, dtype=torch.long),
        "completion_ids": torch.zeros(b, t, dtype=torch.long), "completion_mask": mask,
        "advantages": adv, "old_per_token_logps": old, "num_items_in_batch": mask.sum(),
    }  # fmt: skip
    if beta:
        inputs["ref_per_token_logps"] = ref
    trl = _TRLLoss(logps, loss_type, beta, eps, max_len=t + 5)
    theirs = trl_trainer.GRPOTrainer._compute_loss(trl, None, inputs)
    out = grpo_objective(
        logps, old, adv, mask, ref if beta else None, beta, *eps, loss_type, max_completion_length=t + 5
    )  # type: ignore[arg-type]
    assert abs(float(out.loss.detach()) - float(theirs.detach())) < 1e-6
    grad_ours = torch.autograd.grad(out.loss, logps, retain_graph=True)[0]
    grad_theirs = torch.autograd.grad(theirs, logps)[0]
    assert torch.allclose(grad_ours, grad_theirs, atol=1e-6, rtol=0)
    metrics = trl._metrics["train"]
    assert abs(float(out.clip_ratio) - metrics["clip_ratio/region_mean"][0]) < 1e-6
    assert 0 < float(out.clip_ratio) < 1
    if beta:
        assert out.kl is not None and abs(float(out.kl) - metrics["kl"][0]) < 1e-6
    loss = grpo_loss(
        logps, old, adv, mask, ref_logps=ref if beta else None, beta=beta, epsilon_low=eps[0],
        epsilon_high=eps[1], loss_type=loss_type, max_completion_length=t + 5,
    )  # fmt: skip
    assert float(loss.detach()) == float(out.loss.detach())


def test_one_update_per_rollout_is_the_policy_gradient() -> None:
    """old_logps None (= logps.detach()): ratio 1, no clipping, gradient -A/n per token (dapo)."""
    logps = torch.full((2, 3), -1.0, requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    loss = grpo_loss(logps, None, torch.tensor([1.0, -2.0]), mask)
    (grad,) = torch.autograd.grad(loss, logps)
    expected = torch.tensor([[-1.0, -1.0, 0.0], [2.0, 2.0, 2.0]]) / 5
    assert torch.allclose(grad, expected) and abs(float(loss.detach()) - (-2 + 6) / 5) < 1e-6


def test_dapo_micro_batches_add_up_to_the_batch_loss() -> None:
    torch.manual_seed(2)
    logps, old = torch.randn(6, 5), torch.randn(6, 5)
    adv, mask = torch.randn(6), (torch.rand(6, 5) > 0.4).long()
    whole = grpo_loss(logps, old, adv, mask)
    parts = sum(
        grpo_loss(logps[s], old[s], adv[s], mask[s], num_items=mask.sum()) for s in (slice(0, 2), slice(2, 6))
    )
    assert abs(float(whole) - float(parts)) < 1e-6


def test_bad_grpo_arguments() -> None:
    with pytest.raises(ValueError, match="loss_type"):
        grpo_loss(torch.zeros(1, 1), None, torch.zeros(1), torch.ones(1, 1), loss_type="ppo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ref_logps"):
        grpo_loss(torch.zeros(1, 1), None, torch.zeros(1), torch.ones(1, 1), beta=0.1)
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(torch.zeros(6), 4)


# ---- rewards ------------------------------------------------------------------------------------------


def test_exact_answer() -> None:
    r = make_reward("exact_answer")
    assert r("What is 2+2?", "2 + 2 = 4", answer="4") == 1.0
    assert r("", "It is 1,234.", answer=1234) == 1.0
    assert r("", "4 or maybe 5", answer="4") == 0.0  # the last number counts
    assert r("", "no idea", answer="4") == 0.0
    assert last_number("-3.5 and then .25") == 0.25
    assert make_reward("exact_answer", match="exact")("", "  Paris ", answer="paris") == 1.0
    assert make_reward("exact_answer", match="contains", field="city")("", "It's Paris.", city="Paris") == 1.0


def test_max_words_and_regex() -> None:
    r = make_reward("max_words", n=3)
    assert [r("", t) for t in ("one two three", "one two three four", "", "   ")] == [1.0, 0.0, 0.0, 0.0]
    assert r("", "one two three four five", max_words=5) == 1.0  # the row's own limit wins
    soft = make_reward("max_words", n=4, soft=True)
    assert soft("", "a b c d e f") == 0.5 and soft("", " ".join("x" * 20)) == 0.0
    rx = make_reward("regex", pattern=r"answer: \d+", flags="i")
    assert rx("", "So... ANSWER: 12") == 1.0 and rx("", "answer: twelve") == 0.0
    full = make_reward("regex", pattern=r"\d+", full=True)
    assert full("", " 42 ") == 1.0 and full("", "42!") == 0.0


def test_unit_tests_reward_scores_the_code() -> None:
    r = make_reward("unit_tests", timeout=5)
    code = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\nEnjoy."
    assert r("", code, tests="assert add(1, 2) == 3\nassert add(-1, 1) == 0") == 1.0
    assert r("", code, tests=["assert add(1, 2) == 3", "assert add(2, 2) == 5"]) == 0.5
    assert r("", "def add(a, b): return a - b", tests="assert add(1, 2) == 3") == 0.0
    assert r("", "this is not python", tests="assert True") == 0.0
    scores = r.batch(["", ""], [code, "def add(a, b): return 0"], [{"tests": "assert add(2, 3) == 5"}] * 2)
    assert scores == [1.0, 0.0]


@pytest.mark.parametrize(
    "solution",
    [
        "while True:\n    pass",  # never ends: the timeout
        "x = bytearray(8 * 1024**3)",  # 8 GiB: the address-space limit
        "blocks = []\nwhile True:\n    blocks.append(bytearray(64 * 1024**2))",  # grows until refused
        "while True:\n    print('spam' * 1000)",  # floods stdout: the output file's size limit
        "import os, json\nprint(json.dumps({'passed': 99}))\nos._exit(0)",  # forges the report
        "import socket\nsocket.create_connection(('127.0.0.1', 9))",  # no network
    ],
    ids=["loop", "huge", "growing", "flood", "forged", "network"],
)
def test_unit_tests_contain_bad_code(solution: str) -> None:
    start = time.perf_counter()
    assert run_tests(solution, ["assert True"], timeout=2.0, memory_mb=256) == 0
    assert time.perf_counter() - start < 6


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root parent can run the child as nobody")
def test_unit_tests_cannot_write_outside_their_scratch_dir(tmp_path: Path) -> None:
    target = tmp_path / "owned.txt"
    assert run_tests(f"open({str(target)!r}, 'w').write('x')", ["assert True"], timeout=5) == 0
    assert not target.exists()
    assert run_tests("open('local.txt', 'w').write('ok')", ["assert open('local.txt').read() == 'ok'"]) == 1


def test_reward_registry_and_adapters() -> None:
    with pytest.raises(UserError, match=r"unknown reward 'shortness'.*max_words"):
        make_reward("shortness")
    with pytest.raises(UserError, match="no option 'limit'"):
        make_reward("max_words", limit=3)
    with pytest.raises(UserError, match="not a valid regular expression"):
        make_reward("regex", pattern="(")
    with pytest.raises(UserError, match="row 2 has no 'answer' field"):
        check_rows(make_reward("exact_answer"), [{"prompt": "a", "answer": 1}, {"prompt": "b"}])
    model = CallableReward(lambda ps, cs: [len(c) for c in cs], scale=0.5, shift=1.0)
    assert model.batch(["p", "q"], ["ab", "abcd"], [{}, {}]) == [2.0, 3.0]
    assert FunctionReward(lambda p, c, **row: row["bonus"])("p", "c", bonus=2) == 2.0


# ---- tasks and prompt files ---------------------------------------------------------------------------


def test_built_in_tasks_hold_out_unseen_questions() -> None:
    train, held = addition_task(300, 40, seed=0)
    assert len(train) == 300 and len(held) == 40
    assert not {r["prompt"][0]["content"] for r in train} & {r["prompt"][0]["content"] for r in held}
    a, b = map(int, held[0]["prompt"][0]["content"].split("?")[0].split("is ")[1].split(" + "))
    assert held[0]["answer"] == str(a + b)
    train, held = short_task(200, 16, words=6, seed=0)
    assert all(r["max_words"] == 6 and "at most 6 words" in r["prompt"][0]["content"] for r in train + held)
    held_text = " ".join(r["prompt"][0]["content"] for r in held)
    assert not any(r["prompt"][0]["content"].split(" Answer")[0] in held_text for r in train)


def test_prompt_file_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_prompts(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": \n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: not valid JSON"):
        load_prompts(bad)
    bad.write_text('{"prompt": "ok"}\n{"question": "where is the prompt"}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: needs a \"prompt\""):
        load_prompts(bad)
    bad.write_text("\n\n")
    with pytest.raises(UserError, match="holds no prompts"):
        load_prompts(bad)


# ---- rollouts on a tiny model -------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    """Tiny models on one thread: their ops are too small to split, and on a busy 2-core machine
    two spinning OpenMP threads made these tests 20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "watched", "birds", "outside", "while", "it", "rained"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = random.Random(0)
    tok = Tokenizer.train(
        [" ".join(rng.choices(WORDS, k=40)) for _ in range(400)],
        TokenizerConfig(vocab_size=300),
        progress=False,
    )
    torch.manual_seed(0)
    cfg = preset(
        "tiny", vocab_size=tok.vocab_size, max_seq_len=256, eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )  # fmt: skip
    model = build_model(cfg)
    with torch.no_grad():  # sharper distributions than a fresh init, so texts differ by prompt
        model.embed.tokens.weight.mul_(2)
    out = tmp_path_factory.mktemp("rl") / "tiny"
    save_model(model, out, tokenizer=tok)
    return out


def _prompts(n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 300) for _ in range(rng.randint(1, 14))] for _ in range(n)]


def test_batched_greedy_rollout_with_left_padding_equals_one_at_a_time(tiny: Path) -> None:
    model = load_model(tiny)
    prompts = _prompts(6)
    batch = sample_completions(model, prompts, 1, 16, temperature=0.0)
    assert batch.prompt_mask[:, 0].min() == 0  # the short prompts really are padded
    for row, p in enumerate(prompts):
        alone = greedy_decode(model, torch.tensor([p]), 16)[0, len(p) :].tolist()
        assert batch.completion_ids[row].tolist() == alone
    # the same holds when rows stop at EOS: stop at whatever token row 0 emits third
    eos = batch.completion_ids[0, 2].item()
    stopped = sample_completions(model, prompts, 1, 16, temperature=0.0, eos_ids=[eos], pad_id=0)
    for row, p in enumerate(prompts):
        alone = greedy_decode(model, torch.tensor([p]), 16, eos_token_id=eos)[0, len(p) :].tolist()
        n = int(stopped.completion_mask[row].sum())
        ended = eos in alone
        assert stopped.completion_ids[row, :n].tolist() == (alone[: alone.index(eos) + 1] if ended else alone)
        assert bool(stopped.finished[row]) == ended
    first = batch.completion_ids[0].tolist().index(eos) + 1
    assert stopped.finished[0] and stopped.completion_mask[0].sum() == first
    assert stopped.completion_ids[0, first:].eq(0).all()  # padded after EOS


def test_sampled_logps_equal_teacher_forced_recomputation(tiny: Path) -> None:
    model = load_model(tiny)
    g = torch.Generator().manual_seed(7)
    rollout = sample_completions(model, _prompts(4, 1), 3, 12, temperature=0.7, top_p=0.9, eos_ids=[5, 9, 13],
                                 generator=g)  # fmt: skip
    assert rollout.completion_ids.shape[0] == 12
    forced = completion_logps(
        model, rollout.input_ids, rollout.attention_mask, rollout.completion_ids.shape[1], 0.7
    )
    assert torch.allclose(forced * rollout.completion_mask, rollout.logps, atol=1e-5)
    assert (rollout.logps < 0).sum() == rollout.completion_mask.sum()  # every kept token has its log-prob
    again = sample_completions(model, _prompts(4, 1), 3, 12, temperature=0.7, top_p=0.9, eos_ids=[5, 9, 13],
                               generator=torch.Generator().manual_seed(7))  # fmt: skip
    assert torch.equal(again.completion_ids, rollout.completion_ids)


# ---- training -----------------------------------------------------------------------------------------


def _a_share(prompt: str, completion: str, **row: Any) -> float:
    """A dense learnable reward: the share of the completion's characters that are the letter a."""
    return completion.count("a") / max(1, len(completion))


def _prompt_file(path: Path, n: int = 80) -> Path:
    rng = random.Random(3)
    path.write_text("".join(json.dumps({"prompt": " ".join(rng.choices(WORDS, k=rng.randint(2, 6)))}) + "\n"
                            for _ in range(n)))  # fmt: skip
    return path


def test_grpo_raises_the_reward_of_a_tiny_model(tiny: Path, tmp_path: Path) -> None:
    config = RLConfig(
        model=str(tiny), prompts=str(_prompt_file(tmp_path / "p.jsonl")), holdout=16, steps=30, group_size=8,
        prompts_per_step=4, max_new_tokens=8, learning_rate=3e-3, dtype="float32",
    )  # fmt: skip
    result = train_grpo(config, tmp_path / "run", reward=FunctionReward(_a_share), progress=False)
    assert result.steps == 30 and result.stopped == "steps"
    assert result.train_reward_last > result.train_reward_first + 0.05
    assert result.heldout_after > result.heldout_before + 0.1
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if "reward" in r]
    assert len(trained) == 30 and {"loss", "reward_std", "completion_length", "tokens_per_s"} <= set(
        trained[0]
    )
    assert (tmp_path / "run" / "curves.png").stat().st_size > 10_000
    saved = load_model(result.model_dir)
    assert json.loads((result.model_dir / "genloop.json").read_text())["training"] == "grpo"
    assert (result.model_dir / "tokenizer.json").is_file() and not lora_modules(saved)


def test_lora_with_kl_penalty_uses_the_disabled_adapters_as_reference(tiny: Path, tmp_path: Path) -> None:
    model = load_model(tiny)
    ids = torch.tensor([[5, 6, 7, 8]])
    base = model(ids)
    apply_lora(model, LoRAConfig(r=4, alpha=8, target_modules=["q", "v"]))
    for m in lora_modules(model).values():
        torch.nn.init.normal_(m.lora_B.weight)
    assert not torch.allclose(model(ids), base)
    with adapters_disabled(model):
        assert torch.allclose(model(ids), base)
    assert not torch.allclose(model(ids), base)  # the adapters are back

    config = RLConfig(
        model=str(tiny), prompts=str(_prompt_file(tmp_path / "p.jsonl")), holdout=8, steps=6, group_size=4,
        prompts_per_step=2, max_new_tokens=6, learning_rate=2e-2, beta=0.1, dtype="float32",
        lora={"r": 4, "alpha": 8, "target_modules": ["q", "v", "up", "down"]}, micro_batch=3,
        eval_every=3, max_minutes=5,
    )  # fmt: skip
    result = train_grpo(
        config, tmp_path / "run", tmp_path / "out", reward=FunctionReward(_a_share), progress=False
    )
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    kls = [r["kl"] for r in rows if "kl" in r]
    assert len(kls) == 6 and kls[0] < 1e-6 < max(kls)  # the first rollout is the reference itself
    assert [r["step"] for r in rows if "heldout_reward" in r] == [0, 3, 6]
    merged = load_model(tmp_path / "out")  # an ordinary model directory: the adapters were merged
    assert not lora_modules(merged) and not torch.allclose(merged(ids), base)
    assert result.model_dir == tmp_path / "out"


def test_built_in_task_runs_through_the_chat_template(tiny: Path, tmp_path: Path) -> None:
    config = RLConfig(model=str(tiny), task="addition", task_size=20, holdout=4, steps=2, group_size=2,
                      prompts_per_step=2, max_new_tokens=4, dtype="float32")  # fmt: skip
    result = train_grpo(config, tmp_path / "run", progress=False)
    assert result.steps == 2 and 0 <= result.heldout_after <= 1
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["heldout_prompts"] == 4 and "margin" in summary


def test_several_updates_per_rollout_and_every_loss_type(tiny: Path, tmp_path: Path) -> None:
    prompts = str(_prompt_file(tmp_path / "p.jsonl"))
    for loss_type in LOSS_TYPES:
        config = RLConfig(
            model=str(tiny), prompts=prompts, holdout=4, steps=2, group_size=4, prompts_per_step=2,
            max_new_tokens=5, learning_rate=1e-2, num_iterations=2, loss_type=loss_type, dtype="float32",
            micro_batch=3,
        )  # fmt: skip
        result = train_grpo(config, tmp_path / loss_type, reward=FunctionReward(_a_share), progress=False)
        rows = [
            json.loads(line) for line in (tmp_path / loss_type / "metrics.jsonl").read_text().splitlines()
        ]
        assert result.steps == 2 and all(r["clip_ratio"] >= 0 for r in rows if "loss" in r)


@pytest.mark.parametrize("beta", [0.0, 0.1])
@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_micro_batches_and_skipped_rows_give_the_whole_batch_gradient(
    tiny: Path, loss_type: str, beta: float
) -> None:
    """bnpo is left out: like TRL under gradient accumulation, it normalizes each micro-batch on its own."""
    model = load_model(tiny)
    ref = copy.deepcopy(model).requires_grad_(False) if beta else None
    config = RLConfig(
        model=str(tiny), micro_batch=3, loss_type=loss_type, group_size=4, max_new_tokens=6, beta=beta
    )
    trainer = GRPOTrainer(
        config, Policy(model, Tokenizer.load(tiny), [5], None), FunctionReward(_a_share), ref
    )
    rollout = sample_completions(
        model, _prompts(3, 2), 4, 6, eos_ids=[5], generator=torch.Generator().manual_seed(0)
    )
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.5, 0.5, 0.5, 0.5, 0.0, 1.0, 1.0, 1.0])  # group 2: all alike
    advantages = group_advantages(rewards, 4)
    plan = trainer.plan(rollout, advantages)
    assert sum(len(ch.rows) for ch in plan.chunks) == (12 if beta else 8)
    trainer.backward(plan)
    ours = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    ids, mask, n = rollout.input_ids, rollout.attention_mask, rollout.completion_ids.shape[1]
    ref_logps = completion_logps(ref, ids, mask, n).detach() if ref is not None else None
    logps = completion_logps(model, ids, mask, n)
    whole = grpo_loss(logps, rollout.logps, advantages, rollout.completion_mask, ref_logps=ref_logps,
                      beta=beta, loss_type=loss_type, max_completion_length=6)  # fmt: skip
    whole.backward()
    for name, p in model.named_parameters():
        assert torch.allclose(ours[name], p.grad, atol=1e-6, rtol=1e-4), name


# ---- the command --------------------------------------------------------------------------------------


def _cli(*argv: str) -> int:
    from genloop.cli import rl_cmd

    parser = argparse.ArgumentParser(prog="genloop")
    rl_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["rl", *argv])
    return args.handler(args)


def test_help_lists_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _cli("--help")
    text = capsys.readouterr().out
    for flag in ("--prompts", "--task", "--reward", "--max-words", "--pattern", "--group-size", "--steps",
                 "--max-minutes", "--lr", "--beta", "--lora", "--max-new-tokens", "--temperature", "--out",
                 "--run-dir", "--loss-type", "--eval-prompts"):  # fmt: skip
        assert flag in text


def test_cli_bad_input(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="prompts file not found"):
        _cli(str(tiny), "--prompts", str(tmp_path / "nope.jsonl"), "--reward", "max_words")
    prompts = _prompt_file(tmp_path / "p.jsonl", 40)
    with pytest.raises(UserError, match="row 1 has no 'answer' field"):
        _cli(str(tiny), "--prompts", str(prompts), "--reward", "exact_answer", "--holdout", "4")
    with pytest.raises(UserError, match="unknown reward 'brevity'"):
        _cli(str(tiny), "--prompts", str(prompts), "--reward", "brevity")
    with pytest.raises(UserError, match="needs --reward"):
        _cli(str(tiny), "--prompts", str(prompts))
    with pytest.raises(UserError, match="--pattern is an option of regex"):
        _cli(str(tiny), "--prompts", str(prompts), "--reward", "max_words", "--pattern", "x")
    with pytest.raises(UserError, match="group_size"):
        _cli(str(tiny), "--task", "short", "--group-size", "1")


def test_cli_runs_and_reports(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompts = _prompt_file(tmp_path / "p.jsonl", 40)
    code = _cli(
        str(tiny), "--prompts", str(prompts), "--reward", "regex", "--pattern", "cat", "--holdout", "4",
        "--steps", "2", "--group-size", "4", "--prompts-per-step", "2", "--max-new-tokens", "4",
        "--run-dir", str(tmp_path / "run"), "--no-progress", "--dtype", "float32",
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "held-out reward (4 prompts, greedy): untrained" in out and "margin" in out
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
