"""Parity of genloop's preference losses with TRL's, on identical random log-probs and scores.

TRL computes its losses inside its trainers' `compute_loss(model, inputs)`, reading per-token
log-probs from the model's output. Constructing a real trainer needs a model, a tokenizer and a
dataset, so each test builds the trainer with `object.__new__` and sets only the attributes
`compute_loss` reads, then calls it with a `TablePolicy`: a module whose per-token log-probs are a
fixed random table indexed by each sequence's first token, returned the way TRL's fused LM head
returns them (zero where the label is -100). genloop gets the same numbers summed over completion
tokens, which is also the convention a caller must follow.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor, nn

from genloop.errors import UserError
from genloop.train.preference_losses import dpo_loss, kl_estimate, kto_loss, reward_loss

DPOTrainer = pytest.importorskip("trl.trainer.dpo_trainer").DPOTrainer
KTOTrainer = pytest.importorskip("trl.trainer.kto_trainer").KTOTrainer
RewardTrainer = pytest.importorskip("trl.trainer.reward_trainer").RewardTrainer
FusedCausalLMOutput = pytest.importorskip("trl.trainer.utils").FusedCausalLMOutput
# trl depends on these two, so they are present whenever trl is
Accelerator = pytest.importorskip("accelerate").Accelerator
AcceleratorState = pytest.importorskip("accelerate.state").AcceleratorState
SequenceClassifierOutput = pytest.importorskip("transformers.modeling_outputs").SequenceClassifierOutput

TOL = 1e-6
SEEDS = [0, 1, 2]
DTYPES = [torch.float64, torch.float32]
B, T = 16, 12  # examples per batch, tokens per row (prompt + completion + right padding)


class TablePolicy(nn.Module):
    """Per-token log-probs looked up by a row's first token id: row k of `table` scores the T-1 next
    tokens of every sequence starting with token k. Output as TRL's `add_fused_lm_head` forward gives
    it (`fused_lm_head=True`): zero where the shifted label is -100."""

    def __init__(self, table: Tensor) -> None:
        super().__init__()
        self.table = table

    def forward(self, input_ids: Tensor, labels: Tensor, fused_lm_head: bool = True, **_: object):
        assert fused_lm_head
        log_probs = self.table[input_ids[:, 0]] * (labels[:, 1:] != -100)
        zeros = torch.zeros_like(log_probs)
        return FusedCausalLMOutput(
            log_probs=log_probs, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool(), label_mask=None
        )


class ScoreTable(nn.Module):
    """A reward model whose score is looked up by a row's first token id (`logits` [N, 1], as TRL's
    sequence-classification models return)."""

    def __init__(self, scores: Tensor) -> None:
        super().__init__()
        self.scores = scores

    def forward(self, input_ids: Tensor, **_: object) -> SequenceClassifierOutput:
        return SequenceClassifierOutput(logits=self.scores[input_ids[:, 0]].unsqueeze(-1))


@pytest.fixture
def accelerator():
    """A single-process CPU Accelerator for TRL's gather calls, reset so no other test inherits it."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield Accelerator(cpu=True)
    AcceleratorState._reset_state(reset_partial_state=True)


def rows(gen: torch.Generator, keys: Tensor) -> dict[str, Tensor]:
    """Token rows starting with `keys`, each: prompt (1..4 tokens), completion (>= 1), right padding."""
    n = keys.shape[0]
    ids = torch.randint(100, 200, (n, T), generator=gen)
    ids[:, 0] = keys
    prompt = torch.randint(1, 5, (n, 1), generator=gen)
    end = prompt + 1 + (torch.rand(n, 1, generator=gen) * (T - prompt)).long()  # completion [prompt, end)
    pos = torch.arange(T)
    return {
        "input_ids": ids,
        "attention_mask": (pos < end).long(),
        "completion_mask": ((pos >= prompt) & (pos < end)).long(),
    }


def seq_logps(table: Tensor, batch: dict[str, Tensor], prefix: str = "") -> Tensor:
    """Sum of completion-token log-probs: token t is scored at position t-1 (TRL's convention)."""
    ids, mask = batch[f"{prefix}input_ids"], batch[f"{prefix}completion_mask"]
    return (table[ids[:, 0]] * mask[:, 1:]).sum(1)


def random_table(gen: torch.Generator, n: int, dtype: torch.dtype) -> Tensor:
    return (-3 * torch.rand(n, T - 1, generator=gen, dtype=torch.float64)).to(dtype)


def new_trainer(cls: type, policy: nn.Module, accelerator: Accelerator, **attrs: object):
    """A TRL trainer with only what its `compute_loss` reads (a real one needs a model and dataset)."""
    trainer = object.__new__(cls)
    trainer.model = policy.train()
    trainer.accelerator = accelerator
    trainer.aux_loss_enabled = False
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    trainer._total_train_tokens = 0
    trainer._tp_size = 1
    for name, value in attrs.items():
        setattr(trainer, name, value)
    return trainer


# ---------------------------------------------------------------- DPO


def dpo_case(seed: int, dtype: torch.dtype, sorted_logratios: bool = False):
    """A DPO batch ([chosen rows; rejected rows]) and the log-probs genloop gets for it."""
    gen = torch.Generator().manual_seed(seed)
    table = random_table(gen, 2 * B, dtype)
    batch = rows(gen, torch.arange(2 * B))
    logps = seq_logps(table, batch)
    chosen, rejected = logps[:B], logps[B:]
    ref_chosen = chosen + (4 * torch.randn(B, generator=gen, dtype=torch.float64)).to(dtype)
    ref_rejected = rejected + (4 * torch.randn(B, generator=gen, dtype=torch.float64)).to(dtype)
    if sorted_logratios:  # both log-ratios ascending, so TRL's per-column sort is the identity
        ref_chosen = chosen - torch.sort(chosen - ref_chosen).values
        ref_rejected = rejected - torch.sort(rejected - ref_rejected).values
    batch["ref_chosen_logps"], batch["ref_rejected_logps"] = ref_chosen, ref_rejected
    return TablePolicy(table), batch, (chosen, rejected, ref_chosen, ref_rejected)


def trl_dpo(policy, batch, accelerator, beta: float, loss_type: str, label_smoothing: float = 0.0):
    trainer = new_trainer(
        DPOTrainer,
        policy,
        accelerator,
        beta=beta,
        loss_types=[loss_type],
        loss_weights=[1.0],
        label_smoothing=label_smoothing,
        f_divergence_type="reverse_kl",
        precompute_ref_logps=True,
        ld_alpha=None,
        use_weighting=False,
    )
    loss = trainer.compute_loss(policy, dict(batch))
    return loss, trainer._metrics["train"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", SEEDS)
def test_dpo_sigmoid_matches_trl(seed: int, dtype: torch.dtype, accelerator: Accelerator) -> None:
    policy, batch, logps = dpo_case(seed, dtype)
    beta = [0.1, 0.3, 0.05][seed]
    loss, chosen_rewards, rejected_rewards = dpo_loss(*logps, beta=beta)
    trl_loss, metrics = trl_dpo(policy, batch, accelerator, beta, "sigmoid")
    assert loss.dtype == trl_loss.dtype == dtype
    assert abs(loss.item() - trl_loss.item()) < TOL
    assert 0.3 < loss.item() < 1.5  # a real spread of margins, not all saturated
    assert abs(chosen_rewards.mean().item() - metrics["rewards/chosen"][0]) < TOL
    assert abs(rejected_rewards.mean().item() - metrics["rewards/rejected"][0]) < TOL
    margins = (chosen_rewards - rejected_rewards).mean().item()
    assert abs(margins - metrics["rewards/margins"][0]) < TOL
    # per example, trl/trainer/dpo_trainer.py, DPOTrainer._compute_loss: beta * chosen_logratios.detach()
    chosen, rejected, ref_chosen, ref_rejected = logps
    torch.testing.assert_close(chosen_rewards, beta * (chosen - ref_chosen), rtol=0, atol=TOL)
    torch.testing.assert_close(rejected_rewards, beta * (rejected - ref_rejected), rtol=0, atol=TOL)
    assert not chosen_rewards.requires_grad and not rejected_rewards.requires_grad


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", SEEDS)
def test_dpo_label_smoothing_matches_trl(seed: int, dtype: torch.dtype, accelerator: Accelerator) -> None:
    """TRL 1.16's "sigmoid" ignores label_smoothing; its "aot_unpaired" applies conservative-DPO smoothing,
    -(1-eps) log sigmoid(beta d) - eps log sigmoid(-beta d), to d = sort(chosen ratios) - sort(rejected
    ratios). With both ratios already ascending the sort is the identity, so that is exactly cDPO."""
    policy, batch, logps = dpo_case(seed, dtype, sorted_logratios=True)
    beta, eps = 0.2, [0.1, 0.25, 0.4][seed]
    loss, _, _ = dpo_loss(*logps, beta=beta, label_smoothing=eps)
    trl_loss, _ = trl_dpo(policy, batch, accelerator, beta, "aot_unpaired", label_smoothing=eps)
    assert abs(loss.item() - trl_loss.item()) < TOL
    # The same formula as TRL < 1.0's "sigmoid" (trl/trainer/dpo_trainer.py, DPOTrainer.dpo_loss):
    # -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing
    chosen, rejected, ref_chosen, ref_rejected = logps
    logits = (chosen - rejected) - (ref_chosen - ref_rejected)
    restated = (
        -torch.nn.functional.logsigmoid(beta * logits) * (1 - eps)
        - torch.nn.functional.logsigmoid(-beta * logits) * eps
    ).mean()
    assert abs(loss.item() - restated.item()) < TOL
    unsmoothed, _, _ = dpo_loss(*logps, beta=beta)
    assert abs(loss.item() - unsmoothed.item()) > 1e-3


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", SEEDS)
def test_dpo_ipo_matches_trl_with_per_token_means(
    seed: int, dtype: torch.dtype, accelerator: Accelerator
) -> None:
    policy, batch, (chosen, rejected, ref_chosen, ref_rejected) = dpo_case(seed, dtype)
    counts = batch["completion_mask"].sum(1).to(dtype)
    n_chosen, n_rejected = counts[:B], counts[B:]
    beta = [0.1, 0.5, 1.0][seed]
    loss, _, _ = dpo_loss(
        chosen / n_chosen,
        rejected / n_rejected,
        ref_chosen / n_chosen,
        ref_rejected / n_rejected,
        beta=beta,
        loss_type="ipo",
    )
    trl_loss, _ = trl_dpo(policy, batch, accelerator, beta, "ipo")
    # relative: IPO losses reach ~25 at beta=0.1, where float32's spacing alone is 2e-6; genloop divides
    # each log-prob by its count, TRL divides their difference, so float32 results differ by rounding
    assert abs(loss.item() - trl_loss.item()) < TOL * max(1.0, trl_loss.item())
    summed, _, _ = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=beta, loss_type="ipo")
    assert abs(summed.item() - trl_loss.item()) > 1e-3  # sums instead of means: not TRL's IPO


def test_dpo_gradient_raises_chosen_and_lowers_rejected() -> None:
    gen = torch.Generator().manual_seed(3)
    chosen = (-20 * torch.rand(B, generator=gen)).requires_grad_()
    rejected = (-20 * torch.rand(B, generator=gen)).requires_grad_()
    loss, chosen_rewards, _ = dpo_loss(chosen, rejected, chosen.detach() + 1, rejected.detach())
    loss.backward()
    assert chosen.grad is not None and (chosen.grad < 0).all()  # descent raises the chosen log-prob
    assert rejected.grad is not None and (rejected.grad > 0).all()  # and lowers the rejected one
    assert chosen_rewards.grad_fn is None


# ---------------------------------------------------------------- KTO


def kto_case(seed: int, dtype: torch.dtype, desirable: Tensor, kl_shift: float = 0.0):
    """A KTO batch (rows, their mismatched KL rows) and the log-probs genloop gets for it."""
    gen = torch.Generator().manual_seed(seed)
    table = random_table(gen, 2 * B, dtype)
    batch = rows(gen, torch.arange(B))
    batch.update({f"KL_{k}": v for k, v in rows(gen, torch.arange(B, 2 * B)).items()})
    logps, kl_logps = seq_logps(table, batch), seq_logps(table, batch, "KL_")
    ref_logps = logps + (4 * torch.randn(B, generator=gen, dtype=torch.float64)).to(dtype)
    ref_kl_logps = kl_logps + (torch.randn(B, generator=gen, dtype=torch.float64) + kl_shift).to(dtype)
    batch.update(label=desirable, ref_logps=ref_logps, ref_KL_logps=ref_kl_logps)
    return TablePolicy(table), batch, (logps, ref_logps, kl_logps, ref_kl_logps)


def trl_kto(policy, batch, accelerator, beta: float, desirable_weight: float, undesirable_weight: float):
    trainer = new_trainer(
        KTOTrainer,
        policy,
        accelerator,
        beta=beta,
        loss_type="kto",
        calculate_KL=True,
        precompute_ref_logps=True,
        desirable_weight=desirable_weight,
        undesirable_weight=undesirable_weight,
    )
    loss = trainer.compute_loss(policy, dict(batch))
    return loss, trainer._metrics["train"]


def check_kto(seed: int, dtype: torch.dtype, desirable: Tensor, accelerator: Accelerator, **kw: float):
    beta = kw.pop("beta", 0.1)
    weights = {"desirable_weight": kw.pop("desirable_weight", 1.0)}
    weights["undesirable_weight"] = kw.pop("undesirable_weight", 1.0)
    policy, batch, (logps, ref_logps, kl_logps, ref_kl_logps) = kto_case(seed, dtype, desirable, **kw)
    kl = kl_estimate(kl_logps, ref_kl_logps)
    loss, rewards = kto_loss(logps, ref_logps, desirable, kl, beta=beta, **weights)
    trl_loss, metrics = trl_kto(policy, batch, accelerator, beta, **weights)
    assert loss.dtype == trl_loss.dtype == dtype
    assert abs(loss.item() - trl_loss.item()) < TOL
    assert abs(kl.item() - metrics["kl"][0]) < TOL
    if desirable.any():
        assert abs(rewards[desirable].mean().item() - metrics["rewards/chosen"][0]) < TOL
    if not desirable.all():
        assert abs(rewards[~desirable].mean().item() - metrics["rewards/rejected"][0]) < TOL
    # per example, trl/trainer/kto_trainer.py, KTOTrainer._compute_loss: beta * logratios.detach()
    torch.testing.assert_close(rewards, beta * (logps - ref_logps), rtol=0, atol=TOL)
    return loss, kl


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", SEEDS)
def test_kto_matches_trl(seed: int, dtype: torch.dtype, accelerator: Accelerator) -> None:
    desirable = torch.rand(B, generator=torch.Generator().manual_seed(100 + seed)) < 0.6
    desirable[:2] = torch.tensor([True, False])  # both kinds in every batch
    weights = [(1.0, 1.0), (1.0, 1.33), (0.8, 1.5)][seed]
    _, kl = check_kto(
        seed,
        dtype,
        desirable,
        accelerator,
        beta=[0.1, 0.2, 0.5][seed],
        desirable_weight=weights[0],
        undesirable_weight=weights[1],
        kl_shift=-1.0,  # ref below policy on the KL rows: a positive KL estimate
    )
    assert kl.item() > 0


@pytest.mark.parametrize("all_desirable", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_kto_single_label_batches_match_trl(
    all_desirable: bool, dtype: torch.dtype, accelerator: Accelerator
) -> None:
    desirable = torch.full((B,), all_desirable)
    loss, _ = check_kto(4, dtype, desirable, accelerator, desirable_weight=1.2, undesirable_weight=0.7)
    assert torch.isfinite(loss)


def test_kl_estimate_is_clamped_and_detached(accelerator: Accelerator) -> None:
    desirable = torch.arange(B) % 2 == 0
    _, kl = check_kto(5, torch.float64, desirable, accelerator, kl_shift=3.0)  # ref above policy
    assert kl.item() == 0.0
    policy_kl = torch.tensor([-3.0, -5.0], requires_grad=True)
    kl = kl_estimate(policy_kl, torch.tensor([-4.0, -8.0]))
    assert kl.item() == pytest.approx(2.0) and not kl.requires_grad and kl.dim() == 0


# ---------------------------------------------------------------- reward model


def reward_case(seed: int, dtype: torch.dtype, with_margin: bool):
    gen = torch.Generator().manual_seed(seed)
    scores = (2 * torch.randn(2 * B, generator=gen, dtype=torch.float64) + 0.5).to(dtype)
    batch = rows(gen, torch.arange(2 * B))
    del batch["completion_mask"]
    if with_margin:
        batch["margin"] = torch.rand(B, generator=gen, dtype=torch.float64).to(dtype)
    return ScoreTable(scores), batch, scores[:B], scores[B:]


@pytest.mark.parametrize("center", [None, 0.01])
@pytest.mark.parametrize("with_margin", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", SEEDS)
def test_reward_loss_matches_trl(
    seed: int, dtype: torch.dtype, with_margin: bool, center: float | None, accelerator: Accelerator
) -> None:
    model, batch, chosen, rejected = reward_case(seed, dtype, with_margin)
    loss = reward_loss(chosen, rejected, margin=batch.get("margin"), center_coefficient=center)
    trainer = new_trainer(
        RewardTrainer, model, accelerator, args=SimpleNamespace(center_rewards_coefficient=center)
    )
    trl_loss = trainer.compute_loss(model, dict(batch))
    assert loss.dtype == trl_loss.dtype == dtype
    assert abs(loss.item() - trl_loss.item()) < TOL


def test_reward_margin_and_centering_raise_the_loss() -> None:
    chosen, rejected = torch.tensor([2.0, 1.0, 3.0]), torch.tensor([1.0, -1.0, 2.5])
    plain = reward_loss(chosen, rejected)
    assert reward_loss(chosen, rejected, margin=torch.full((3,), 0.5)) > plain
    assert reward_loss(chosen, rejected, center_coefficient=0.1) > plain
    assert reward_loss(chosen - 2, rejected - 2) == pytest.approx(plain.item())  # only differences count


# ---------------------------------------------------------------- bad input


def test_unknown_dpo_loss_type_names_the_allowed_ones() -> None:
    x = torch.zeros(4)
    with pytest.raises(UserError, match=r"'hinge'.*'sigmoid', 'ipo'"):
        dpo_loss(x, x, x, x, loss_type="hinge")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"beta": 0.0}, "beta must be > 0"),
        ({"label_smoothing": 0.5}, r"label_smoothing must be in \[0, 0.5\)"),
        ({"label_smoothing": 0.1, "loss_type": "ipo"}, "only to loss_type 'sigmoid'"),
    ],
)
def test_bad_dpo_settings(kwargs: dict, match: str) -> None:
    x = torch.zeros(4)
    with pytest.raises(UserError, match=match):
        dpo_loss(x, x, x, x, **kwargs)


def test_shape_errors() -> None:
    x, y = torch.zeros(4), torch.zeros(5)
    with pytest.raises(ValueError, match=r"batch sizes differ \(chosen_logps=4, rejected_logps=5"):
        dpo_loss(x, y, x, y)
    with pytest.raises(ValueError, match="chosen_scores must be a 1-D tensor"):
        reward_loss(x[:, None], x[:, None])
    with pytest.raises(ValueError, match="margin=5"):
        reward_loss(x, x, margin=y)
    with pytest.raises(ValueError, match="empty batch"):
        dpo_loss(*[torch.zeros(0)] * 4)
    desirable = torch.ones(4, dtype=torch.bool)
    with pytest.raises(ValueError, match="desirable=5"):
        kto_loss(x, x, torch.ones(5, dtype=torch.bool), torch.tensor(0.0))
    with pytest.raises(ValueError, match="desirable must be a bool tensor"):
        kto_loss(x, x, desirable.long(), torch.tensor(0.0))
    with pytest.raises(ValueError, match="kl must be one number"):
        kto_loss(x, x, desirable, x)
    with pytest.raises(ValueError, match="ref_kl_logps=5"):
        kl_estimate(x, y)
