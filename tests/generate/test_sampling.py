"""The sampler against transformers' logits processors, hand-computed penalties, exact seed behaviour
(alone or batched), the sampled distribution, log-probs and every validation message."""

from __future__ import annotations

import math

import pytest
import torch

from genloop.generate.sampling import Sampler, SamplingParams, make_generator

lp = pytest.importorskip("transformers.generation.logits_process")

V = 100


def _logits(rows: int, seed: int = 0, vocab: int = V) -> torch.Tensor:
    return 3 * torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed))


def _process(logits: torch.Tensor, params: list[SamplingParams], prompt=None, output=None) -> torch.Tensor:
    b = len(params)
    return Sampler().process(logits, params, prompt or [[]] * b, output or [[]] * b)


def _survivors(x: torch.Tensor) -> list[set[int]]:
    return [set(torch.isfinite(row).nonzero()[:, 0].tolist()) for row in x]


def _hf_chain(row: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """transformers' warpers in generate()'s order: temperature, top-k, top-p, min-p."""
    x = row[None].clone()
    ids = torch.zeros(1, 1, dtype=torch.long)
    if p.temperature not in (0.0, 1.0):
        x = lp.TemperatureLogitsWarper(p.temperature)(ids, x)
    if p.top_k:
        x = lp.TopKLogitsWarper(p.top_k)(ids, x)
    if p.top_p < 1.0:
        x = lp.TopPLogitsWarper(p.top_p)(ids, x)
    if p.min_p > 0:
        x = lp.MinPLogitsWarper(p.min_p)(ids, x)
    return x[0]


MIXED = [
    SamplingParams(temperature=0.7),
    SamplingParams(top_k=5),
    SamplingParams(top_p=0.8),
    SamplingParams(min_p=0.1),
    SamplingParams(temperature=1.3, top_k=20, top_p=0.9),
    SamplingParams(temperature=0.5, top_p=0.5, min_p=0.2),
    SamplingParams(top_k=1),
    SamplingParams(top_k=30, min_p=0.05),
    SamplingParams(),
    SamplingParams(temperature=0.0, top_p=0.3),
]


def test_filters_match_transformers_row_by_row_in_one_batch() -> None:
    """Each row has its own parameters; the batch result equals transformers on that row alone."""
    logits = _logits(len(MIXED))
    ours = _process(logits, MIXED)
    for row, p in enumerate(MIXED):
        theirs = _hf_chain(logits[row], p)
        assert _survivors(ours[row : row + 1]) == _survivors(theirs[None]), p
        keep = torch.isfinite(theirs)
        torch.testing.assert_close(ours[row][keep], theirs[keep])
    sizes = [len(s) for s in _survivors(ours)]
    assert sizes[1] == 5 and sizes[6] == 1 and sizes[8] == V and 1 < sizes[2] < V


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(top_k=7),
        SamplingParams(top_p=0.6),
        SamplingParams(top_p=0.95, temperature=2.0),
        SamplingParams(min_p=0.3),
        SamplingParams(top_k=40, top_p=0.7, min_p=0.02, temperature=0.8),
    ],
    ids=["top_k", "top_p", "top_p-hot", "min_p", "all"],
)
def test_surviving_sets_match_transformers(params: SamplingParams, seed: int) -> None:
    logits = _logits(4, seed)
    ours = _process(logits, [params] * 4)
    assert _survivors(ours) == _survivors(torch.stack([_hf_chain(r, params) for r in logits]))


def test_top_k_keeps_ties_with_the_kth() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0, 2.0, 0.0]])
    assert _survivors(_process(logits, [SamplingParams(top_k=2)])) == [{1, 2, 3}]


def test_repetition_penalty_matches_transformers() -> None:
    logits = _logits(2)
    prompt, output = [[3, 5, 5, 8], [1]], [[8, 9, 42], [1, 2, 2]]
    params = [SamplingParams(repetition_penalty=1.3), SamplingParams(repetition_penalty=0.7)]
    ours = _process(logits, params, prompt, output)
    for row, p in enumerate(params):
        ids = torch.tensor([prompt[row] + output[row]])
        theirs = lp.RepetitionPenaltyLogitsProcessor(p.repetition_penalty)(ids, logits[row : row + 1].clone())
        torch.testing.assert_close(ours[row], theirs[0])
    assert not torch.equal(ours[0], logits[0])


def test_presence_and_frequency_penalties_hand_computed() -> None:
    """OpenAI: logit -= presence * (count > 0) + frequency * count, on generated tokens only."""
    logits = torch.zeros(1, 6)
    p = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25)
    out = _process(logits, [p], prompt=[[0, 0, 0, 5]], output=[[1, 2, 2, 2]])
    assert out[0].tolist() == [0.0, -0.75, -1.25, 0.0, 0.0, 0.0]  # prompt tokens 0 and 5 untouched
    negative = _process(logits, [SamplingParams(presence_penalty=-1.0)], output=[[4]])
    assert negative[0, 4] == 1.0


def test_logit_bias_is_added_and_clamped() -> None:
    logits = torch.zeros(1, 5)
    out = _process(logits, [SamplingParams(logit_bias={1: 2.5, 2: 500.0, 3: -1e9})])
    assert out[0].tolist() == [0.0, 2.5, 100.0, -100.0, 0.0]


def test_allowed_mask_applies_first_and_greedy_respects_it() -> None:
    logits = torch.tensor([[5.0, 1.0, 4.0, 0.0]])
    allowed = torch.tensor([[False, True, True, True]])
    # the bias would make token 0 best, but it is not allowed
    p = SamplingParams(temperature=0.0, logit_bias={0: 10.0})
    out = Sampler()(logits, [p], [None], [[]], [[]], allowed)
    assert out.tokens == [2]
    sampled = Sampler()(logits, [SamplingParams()] * 1, [make_generator(0)], [[]], [[]], allowed)
    assert sampled.tokens[0] != 0
    with pytest.raises(ValueError, match="allows no token"):
        Sampler()(logits, [p], [None], [[]], [[]], torch.zeros(1, 4, dtype=torch.bool))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_greedy_is_argmax_of_processed_logits(dtype: torch.dtype) -> None:
    logits = _logits(6, seed=3).to(dtype)
    params = [SamplingParams(temperature=0.0)] * 5 + [SamplingParams(temperature=0.0, logit_bias={7: 100.0})]
    out = Sampler()(logits, params, [None] * 6, [[]] * 6, [[]] * 6)
    expected = [*logits.float().argmax(-1).tolist()[:5], 7]
    assert out.tokens == expected


def _run_steps(steps: list[torch.Tensor], params: list[SamplingParams], target: int) -> list[int]:
    """Feed a fixed sequence of logits [B, V] for 50 steps; return row `target`'s tokens."""
    sampler = Sampler()
    gens = [make_generator(p.seed) for p in params]
    outputs: list[list[int]] = [[] for _ in params]
    prompts = [[1, 2, 3]] * len(params)
    for logits in steps:
        out = sampler(logits, params, gens, prompts, outputs)
        for row, token in enumerate(out.tokens):
            outputs[row].append(token)
    return outputs[target]


def test_seeded_sampling_repeats_alone_or_batched() -> None:
    mine = SamplingParams(temperature=0.9, top_p=0.95, frequency_penalty=0.3, seed=1234)
    own = [_logits(1, seed=100 + i)[0] for i in range(50)]
    alone = _run_steps([x[None] for x in own], [mine], 0)
    assert alone == _run_steps([x[None] for x in own], [mine], 0)
    others = [
        SamplingParams(temperature=0.5, seed=7),
        SamplingParams(top_k=3, seed=8),
        SamplingParams(temperature=0.0),
        SamplingParams(min_p=0.2, repetition_penalty=1.5, seed=9),
    ]
    batch_steps = []
    for i, x in enumerate(own):
        rows = _logits(4, seed=1000 + i)
        batch_steps.append(torch.cat((rows[:2], x[None], rows[2:])))
    batched = _run_steps(batch_steps, [*others[:2], mine, *others[2:]], 2)
    assert batched == alone
    assert len(set(alone)) > 10  # really sampled, not stuck on one token
    other_seed = SamplingParams(temperature=0.9, top_p=0.95, frequency_penalty=0.3, seed=1235)
    assert _run_steps([x[None] for x in own], [other_seed], 0) != alone


def test_unseeded_generators_differ() -> None:
    a, b = make_generator(None), make_generator(None)
    assert not torch.equal(torch.rand(8, generator=a), torch.rand(8, generator=b))


def _empirical(logits: torch.Tensor, params: SamplingParams, n: int = 20_000) -> torch.Tensor:
    out = Sampler()(
        logits.expand(n, -1), [params] * n, [make_generator(i) for i in range(n)], [[]] * n, [[]] * n
    )
    return torch.bincount(torch.tensor(out.tokens), minlength=logits.shape[-1]).double() / n


def test_empirical_distribution_matches_softmax() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -0.5, -1.0, 1.5, 0.2, -2.0, 0.8]])
    freq = _empirical(logits, SamplingParams())
    expected = logits[0].double().softmax(-1)
    assert (freq - expected).abs().max() < 0.01
    chi2 = float(((freq - expected) ** 2 / expected).sum() * 20_000)
    assert chi2 < 27.9  # 9 degrees of freedom, p = 0.001


def test_empirical_distribution_after_filtering() -> None:
    """Top-k 3 at temperature 0.5: only the three best tokens, renormalized; the others never."""
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, 1.5, -1.0]])
    freq = _empirical(logits, SamplingParams(temperature=0.5, top_k=3))
    expected = torch.zeros(6, dtype=torch.float64)
    expected[[0, 4, 1]] = (logits[0, [0, 4, 1]].double() / 0.5).softmax(-1)
    assert (freq - expected).abs().max() < 0.01
    assert freq[[2, 3, 5]].sum() == 0


def test_logprobs_are_of_the_raw_distribution() -> None:
    logits = _logits(3, seed=5)
    params = [
        SamplingParams(temperature=0.5, top_k=3, logprobs=4, seed=1, repetition_penalty=2.0),
        SamplingParams(temperature=0.0, logprobs=0, logit_bias={9: 100.0}),
        SamplingParams(seed=2),
    ]
    out = Sampler()(logits, params, [make_generator(p.seed) for p in params], [[9]] * 3, [[]] * 3)
    raw = torch.log_softmax(logits, dim=-1)
    assert out.tokens[1] == 9
    assert out.logprobs is not None and out.top_logprobs is not None
    for row in range(3):
        assert out.logprobs[row] == pytest.approx(float(raw[row, out.tokens[row]]), abs=1e-6)
    top = out.top_logprobs[0]
    assert [t for t, _ in top] == raw[0].topk(4).indices.tolist()
    assert [v for _, v in top] == sorted((v for _, v in top), reverse=True)
    assert [v for _, v in top] == pytest.approx(raw[0].topk(4).values.tolist(), abs=1e-6)
    assert out.top_logprobs[1] == [] and out.top_logprobs[2] == []


def test_no_logprobs_unless_asked() -> None:
    out = Sampler()(_logits(2), [SamplingParams(temperature=0.0)] * 2, [None] * 2, [[]] * 2, [[]] * 2)
    assert out.logprobs is None and out.top_logprobs is None
    only = Sampler()(_logits(1), [SamplingParams(temperature=0.0, logprobs=0)], [None], [[]], [[]])
    assert only.logprobs is not None and only.top_logprobs is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_tokens": 0}, r"max_tokens=0 is invalid: it must be at least 1"),
        ({"temperature": -0.5}, r"temperature=-0.5 is invalid: it must be >= 0"),
        ({"temperature": math.nan}, r"temperature=nan is invalid"),
        ({"top_p": 0.0}, r"top_p=0.0 is invalid: it must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p=1.5 is invalid: it must be in \(0, 1\]"),
        ({"top_k": -1}, r"top_k=-1 is invalid: it must be >= 0"),
        ({"min_p": -0.1}, r"min_p=-0.1 is invalid: it must be in \[0, 1\]"),
        ({"min_p": 1.5}, r"min_p=1.5 is invalid: it must be in \[0, 1\]"),
        ({"repetition_penalty": 0.0}, r"repetition_penalty=0.0 is invalid: it must be > 0"),
        ({"presence_penalty": 2.5}, r"presence_penalty=2.5 is invalid: it must be in \[-2, 2\]"),
        ({"frequency_penalty": -3.0}, r"frequency_penalty=-3.0 is invalid: it must be in \[-2, 2\]"),
        ({"logit_bias": {100: 1.0}}, r"logit_bias=100 is invalid: token ids must be integers in \[0, 100\)"),
        ({"logit_bias": {-1: 1.0}}, r"logit_bias=-1 is invalid"),
        ({"logit_bias": {"5": 1.0}}, r"logit_bias='5' is invalid"),
        ({"stop_token_ids": [100]}, r"stop_token_ids=100 is invalid: token ids must be in \[0, 100\)"),
        ({"stop": ["ok", ""]}, r"stop=\['ok', ''\] is invalid: stop strings must not be empty"),
        ({"n": 0}, r"n=0 is invalid: it must be at least 1"),
        ({"logprobs": -1}, r"logprobs=-1 is invalid: it must be in \[0, 100\]"),
        ({"logprobs": 101}, r"logprobs=101 is invalid: .*more logprobs than the vocabulary"),
        ({"num_beams": 0}, r"num_beams=0 is invalid: it must be at least 1"),
        ({"num_beams": 4}, r"num_beams=4 is invalid: beam search is deterministic: set temperature=0"),
        ({"num_beams": 2, "temperature": 0.0, "n": 3}, r"n=3 is invalid: beam search returns at most"),
        ({"num_beams": 2, "temperature": 0.0, "early_stopping": "maybe"}, r"early_stopping='maybe'"),
    ],
)
def test_validation_messages(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs).validate(vocab_size=V)


def test_valid_parameters_pass() -> None:
    p = SamplingParams(
        max_tokens=None,
        temperature=0.0,
        top_k=V,
        top_p=1.0,
        min_p=1.0,
        logit_bias={0: -100.0, V - 1: 100.0},
        logprobs=V,
        num_beams=4,
        n=4,
        early_stopping="never",
        stop=["\n"],
    )
    assert p.validate(V) is p
