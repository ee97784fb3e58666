"""The sampling layer: OpenAI/vLLM-style parameters and one `Sampler` that turns a batch of next-token
logits into tokens, each row with its own parameters and its own random stream.

Processing order (as vLLM and transformers): allowed-mask and logit_bias, penalties, temperature, then
top-k, top-p and min-p filtering, then the draw. Every row draws exactly one uniform per step from its
own `torch.Generator` and picks a token by inverse CDF over the vocabulary in id order, so a seeded
request produces the same text whether it runs alone or batched with others.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

LOGIT_BIAS_LIMIT = 100.0  # OpenAI's range for logit_bias values; larger ones are clamped to it


@dataclass
class SamplingParams:
    """How to pick tokens for one request. Defaults follow the OpenAI API (temperature 1, no filtering).

    max_tokens None generates until the context is full; temperature 0 is greedy; top_k 0, top_p 1,
    min_p 0 and the penalties at their neutral values are off. logprobs None = off, 0 = the log-prob of
    the chosen token only, k = also the k most likely tokens. num_beams > 1 selects beam search (needs
    temperature 0), scored like transformers with `length_penalty` and `early_stopping`.
    """

    max_tokens: int | None = 256
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    n: int = 1
    seed: int | None = None
    logprobs: int | None = None
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False

    def validate(self, vocab_size: int) -> SamplingParams:
        """Raise ValueError naming the field, the bad value and the valid range; return self if all is well.

        Checked here rather than deep in the engine so a bad request fails when it is submitted, with a
        message a user can act on, instead of failing every request in the batch later.
        """

        def bad(name: str, value: object, valid: str) -> ValueError:
            return ValueError(f"{name}={value!r} is invalid: {valid}")

        if self.max_tokens is not None and self.max_tokens < 1:
            raise bad("max_tokens", self.max_tokens, "it must be at least 1 (or None for no limit)")
        if not self.temperature >= 0:  # also rejects NaN
            raise bad("temperature", self.temperature, "it must be >= 0 (0 = greedy)")
        if not 0 < self.top_p <= 1:
            raise bad("top_p", self.top_p, "it must be in (0, 1] (1 = off)")
        if self.top_k < 0:
            raise bad("top_k", self.top_k, "it must be >= 0 (0 = off)")
        if not 0 <= self.min_p <= 1:
            raise bad("min_p", self.min_p, "it must be in [0, 1] (0 = off)")
        if not self.repetition_penalty > 0:
            raise bad("repetition_penalty", self.repetition_penalty, "it must be > 0 (1 = off)")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not -2 <= value <= 2:
                raise bad(name, value, "it must be in [-2, 2] (0 = off)")
        for token in self.logit_bias or {}:
            if not isinstance(token, int) or not 0 <= token < vocab_size:
                raise bad("logit_bias", token, f"token ids must be integers in [0, {vocab_size})")
        for token in self.stop_token_ids:
            if not 0 <= token < vocab_size:
                raise bad("stop_token_ids", token, f"token ids must be in [0, {vocab_size})")
        if any(not s for s in self.stop):
            raise bad("stop", self.stop, "stop strings must not be empty")
        if self.n < 1:
            raise bad("n", self.n, "it must be at least 1")
        if self.logprobs is not None and not 0 <= self.logprobs <= vocab_size:
            raise bad(
                "logprobs",
                self.logprobs,
                f"it must be in [0, {vocab_size}] (more logprobs than the vocabulary of {vocab_size})",
            )
        if self.num_beams < 1:
            raise bad("num_beams", self.num_beams, "it must be at least 1 (1 = no beam search)")
        if self.num_beams > 1 and self.temperature > 0:
            raise bad(
                "num_beams",
                self.num_beams,
                f"beam search is deterministic: set temperature=0 (got temperature={self.temperature})",
            )
        if self.num_beams > 1 and self.n > self.num_beams:
            raise bad("n", self.n, f"beam search returns at most num_beams={self.num_beams} sequences")
        if self.early_stopping not in (True, False, "never"):
            raise bad("early_stopping", self.early_stopping, "it must be true, false or 'never'")
        return self


@dataclass
class SampleOutput:
    """One step's choice per row. Log-probs are of the RAW model distribution (log_softmax of the
    unprocessed logits), as vLLM and OpenAI report them; None when no row asked for them."""

    tokens: list[int]
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None


def make_generator(seed: int | None) -> torch.Generator:
    """A CPU generator for one sequence: seeded, or from fresh OS entropy when seed is None.

    Uniforms are always drawn on the CPU, so a seed gives the same text whatever device the model is on.
    """
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


class Sampler:
    """Picks one token per row of logits; stateless, so one instance serves the whole engine."""

    def __call__(
        self,
        logits: Tensor,
        params: Sequence[SamplingParams],
        generators: Sequence[torch.Generator | None],
        prompt_tokens: Sequence[Sequence[int]],
        output_tokens: Sequence[Sequence[int]],
        allowed: Tensor | None = None,
    ) -> SampleOutput:
        """logits [B, V] (any float dtype); allowed bool [B, V] from structured output, or None.

        A row without a generator uses torch's global RNG (only meant for one-off use: it breaks the
        alone-or-batched guarantee).
        """
        raw = logits.float()
        x = self.process(raw, params, prompt_tokens, output_tokens, allowed)
        greedy = [p.temperature == 0 for p in params]
        tokens = x.argmax(-1).tolist() if any(greedy) else [0] * len(params)
        if not all(greedy):
            sampled = _draw(torch.softmax(x, dim=-1), generators, greedy)
            tokens = [t if g else s for t, s, g in zip(tokens, sampled, greedy, strict=True)]
        return _logprobs(raw, tokens, params)

    def process(
        self,
        logits: Tensor,
        params: Sequence[SamplingParams],
        prompt_tokens: Sequence[Sequence[int]],
        output_tokens: Sequence[Sequence[int]],
        allowed: Tensor | None = None,
    ) -> Tensor:
        """The processed float32 logits [B, V] the draw is made from (filtered tokens are -inf)."""
        x = logits.float().clone()
        if allowed is not None:
            x.masked_fill_(~allowed.to(x.device, torch.bool), -math.inf)
            if not bool(torch.isfinite(x).any(-1).all()):
                raise ValueError("the structured-output mask allows no token for some row")
        apply_logit_bias(x, [p.logit_bias for p in params])
        apply_penalties(x, params, prompt_tokens, output_tokens)
        temps = [p.temperature if p.temperature > 0 else 1.0 for p in params]
        if any(t != 1.0 for t in temps):
            x /= torch.tensor(temps, device=x.device)[:, None]
        apply_top_k_top_p(x, [p.top_k for p in params], [p.top_p for p in params])
        apply_min_p(x, [p.min_p for p in params])
        return x


def apply_logit_bias(x: Tensor, biases: Sequence[dict[int, float] | None]) -> None:
    """logit[t] += bias[t], each bias clamped to [-100, 100] as OpenAI does (±100 bans or forces)."""
    for row, bias in enumerate(biases):
        if bias:
            ids = torch.tensor(list(bias), device=x.device)
            vals = torch.tensor([float(v) for v in bias.values()], device=x.device)
            x[row, ids] += vals.clamp(-LOGIT_BIAS_LIMIT, LOGIT_BIAS_LIMIT)


def apply_penalties(
    x: Tensor,
    params: Sequence[SamplingParams],
    prompt_tokens: Sequence[Sequence[int]],
    output_tokens: Sequence[Sequence[int]],
) -> None:
    """Repetition, presence and frequency penalties, in place, one row at a time.

    repetition_penalty r (transformers/CTRL): for every token in prompt + output, logit / r if the logit
      is positive, logit * r if negative, so r > 1 always makes a seen token less likely.
    presence p and frequency f (OpenAI): on generated tokens only,
      logit[t] -= p * (count[t] > 0) + f * count[t].
    """
    for row, p in enumerate(params):
        if p.repetition_penalty != 1.0:
            seen = [*prompt_tokens[row], *output_tokens[row]]
            if seen:
                ids = torch.tensor(seen, device=x.device)
                vals = x[row, ids]
                r = p.repetition_penalty
                x[row, ids] = torch.where(vals < 0, vals * r, vals / r)
        if (p.presence_penalty or p.frequency_penalty) and output_tokens[row]:
            ids = torch.tensor(list(output_tokens[row]), device=x.device)
            counts = torch.bincount(ids, minlength=x.shape[-1]).to(x.dtype)
            x[row] -= p.presence_penalty * (counts > 0).to(x.dtype) + p.frequency_penalty * counts


def apply_top_k_top_p(x: Tensor, top_k: Sequence[int], top_p: Sequence[float]) -> None:
    """Keep each row's k largest logits (ties with the k-th kept), then its nucleus: the smallest set of
    most likely tokens whose probability (renormalized after top-k) reaches p. In place.

    Both work on one ascending sort, like transformers and vLLM, so the surviving sets match theirs:
    a token is dropped when the probability of all tokens up to and including it is <= 1 - p.
    """
    vocab = x.shape[-1]
    ks = [k if 0 < k < vocab else 0 for k in top_k]
    use_k, use_p = any(ks), any(p < 1.0 for p in top_p)
    if not (use_k or use_p):
        return
    sorted_x, order = x.sort(dim=-1)  # ascending
    remove = torch.zeros_like(sorted_x, dtype=torch.bool)
    if use_k:
        k = torch.tensor([k or vocab for k in ks], device=x.device)
        kth = sorted_x.gather(-1, (vocab - k)[:, None])
        remove |= sorted_x < kth
        sorted_x = sorted_x.masked_fill(remove, -math.inf)
    if use_p:
        p = torch.tensor(top_p, device=x.device, dtype=torch.float32)[:, None]
        cum = sorted_x.softmax(dim=-1).cumsum(dim=-1)
        drop = (cum <= 1 - p) & (p < 1.0)
        drop[:, -1] = False  # the most likely token always survives
        remove |= drop
    x.masked_fill_(remove.scatter(-1, order, remove), -math.inf)


def apply_min_p(x: Tensor, min_p: Sequence[float]) -> None:
    """Drop tokens whose probability is below min_p times the most likely token's. In place."""
    if not any(m > 0 for m in min_p):
        return
    probs = x.softmax(dim=-1)
    m = torch.tensor(min_p, device=x.device, dtype=torch.float32)[:, None]
    x.masked_fill_(probs < m * probs.amax(dim=-1, keepdim=True), -math.inf)


def _draw(probs: Tensor, generators: Sequence[torch.Generator | None], skip: Sequence[bool]) -> list[int]:
    """Inverse-CDF sampling, one uniform per row from that row's own (CPU) generator.

    The CDF runs over token ids in a fixed order (not sorted by probability), in float64, and row by
    row, so a row's choice depends only on its probabilities and its generator, never on the batch.
    `right=True` never lands on a zero-probability token: the CDF does not rise there.
    """
    u = torch.tensor(
        [
            0.0 if s else float(torch.rand(1, generator=g, dtype=torch.float64))
            for g, s in zip(generators, skip, strict=True)
        ],
        dtype=torch.float64,
    ).to(probs.device)
    cdf = probs.double().cumsum(-1)
    tokens = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
    vocab = probs.shape[-1]
    if bool((tokens >= vocab).any()):  # u * total rounded up to the total: take the last possible token
        last = vocab - 1 - (probs > 0).flip(-1).int().argmax(-1)
        tokens = torch.where(tokens >= vocab, last, tokens)
    return tokens.tolist()


def _logprobs(raw: Tensor, tokens: list[int], params: Sequence[SamplingParams]) -> SampleOutput:
    wanted = [p.logprobs for p in params]
    if all(w is None for w in wanted):
        return SampleOutput(tokens)
    lp = torch.log_softmax(raw, dim=-1)
    chosen = lp.gather(-1, torch.tensor(tokens, device=lp.device)[:, None])[:, 0].tolist()
    k_max = max(w or 0 for w in wanted)
    if k_max == 0:
        return SampleOutput(tokens, chosen)
    values, ids = lp.topk(k_max, dim=-1)  # sorted descending
    values_l, ids_l = values.tolist(), ids.tolist()
    top = [
        list(zip(ids_l[row][: w or 0], values_l[row][: w or 0], strict=True)) for row, w in enumerate(wanted)
    ]
    return SampleOutput(tokens, chosen, top)
