"""Log-probabilities of the prompt's own tokens: what `echo=true` with `logprobs` returns in OpenAI's
legacy completions API, and what harnesses such as lm-eval's `local-completions` score choices with.

The forward pass runs on the engine's thread (`Engine.call`) so it never competes with decoding for
the cores, and uses the engine's own weights, so scores match what the server would generate from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genloop.generate.engine import Engine
from genloop.model import DecoderLM

TOKENS_PER_PASS = 4096  # logits of 4096 positions x a 50k vocabulary: 800 MB in float32


@dataclass(frozen=True)
class PromptScores:
    """For each prompt token: its log-prob given the tokens before it (None for the first, which has
    no context) and the `top` most likely tokens at that position as (token id, log-prob)."""

    token_logprobs: list[float | None]
    top_logprobs: list[list[tuple[int, float]] | None]


def prompt_logprobs(engine: Engine, prompts: list[list[int]], top: int) -> list[PromptScores]:
    """Score the prompts in right-padded forward passes of the engine's model (decoder-only): with
    causal attention, padding after a prompt cannot change the scores of its own tokens. Prompts are
    grouped so that no pass holds logits for more than `TOKENS_PER_PASS` positions."""
    if not isinstance(engine.model, DecoderLM):
        raise ValueError("prompt log-probabilities (echo with logprobs) need a decoder-only model")
    out: list[PromptScores] = []
    group: list[list[int]] = []
    for ids in prompts:
        if group and (len(group) + 1) * max(len(ids), *map(len, group)) > TOKENS_PER_PASS:
            out += engine.call(lambda g=group: _score_group(engine.model, g, top))
            group = []
        group.append(ids)
    return out + engine.call(lambda: _score_group(engine.model, group, top))


@torch.inference_mode()
def _score_group(model: DecoderLM, prompts: list[list[int]], top: int) -> list[PromptScores]:
    width = max(len(ids) for ids in prompts)
    batch = torch.tensor([ids + [0] * (width - len(ids)) for ids in prompts], dtype=torch.long)
    logits = model(batch)
    return [_scores(logits[i, : len(ids) - 1].float(), ids, top) for i, ids in enumerate(prompts)]


def _scores(logits: torch.Tensor, ids: list[int], top: int) -> PromptScores:
    logp = torch.log_softmax(logits, dim=-1)
    chosen = logp.gather(1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1).tolist()
    tops: list[list[tuple[int, float]] | None] = [None]
    if top > 0:
        values, indices = logp.topk(top, dim=-1)
        tops += [list(zip(i, v, strict=True)) for i, v in zip(indices.tolist(), values.tolist(), strict=True)]
    else:
        tops += [[] for _ in chosen]
    return PromptScores([None, *chosen], tops)
