"""Rollouts for RL: G sampled completions per prompt from the policy being trained, in one batch.

The generation engine serves requests from a model directory; RL samples from the in-memory model it
is updating, thousands of times, so this is a plain batched decode loop with a `DynamicCache`.
Prompts of different lengths are left-padded and every row gets its own positions (the count of real
tokens before it), so a padded row computes what it would compute alone. Each step records the
log-probability of the drawn token under the sampling distribution (logits / temperature, before
top-p filtering): exactly what a teacher-forced pass over the same tokens gives (`completion_logps`),
so GRPO can use it as the "old" policy when it makes one update per rollout.

`Policy` bundles the model with its tokenizer and stop tokens; `heldout_reward` scores its greedy
answers, the before/after figure of a run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from genloop.checkpoint.directory import load_generation_config
from genloop.generate.sampling import apply_top_k_top_p
from genloop.model import DecoderLM, DynamicCache
from genloop.preprocess.tokenizer import Tokenizer
from genloop.train.rewards import Reward


@dataclass
class Rollout:
    """One batch of completions, row r answering prompt r // group_size.

    prompt_ids [N, P] are left-padded (prompt_mask 0 on padding); completion_ids [N, C] are
    right-padded after the first EOS (which is kept and counted in completion_mask); logps [N, C] are
    the sampled tokens' log-probs (0 outside the mask); finished [N] says a row ended with EOS rather
    than running out of max_new_tokens.
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    completion_ids: Tensor
    completion_mask: Tensor
    logps: Tensor
    finished: Tensor
    group_size: int

    @property
    def input_ids(self) -> Tensor:
        return torch.cat((self.prompt_ids, self.completion_ids), dim=1)

    @property
    def attention_mask(self) -> Tensor:
        return torch.cat((self.prompt_mask, self.completion_mask), dim=1)

    def completion_lengths(self) -> Tensor:
        return self.completion_mask.sum(1)

    def completion_tokens(self, row: int, eos_ids: Sequence[int] = ()) -> list[int]:
        """Row `row`'s completion without padding (and without its EOS when eos_ids are given)."""
        ids = self.completion_ids[row, : int(self.completion_mask[row].sum())].tolist()
        return ids[:-1] if ids and ids[-1] in eos_ids else ids


def positions_from_mask(mask: Tensor) -> Tensor:
    """Position of each token = real tokens before it (left padding gets 0, ignored anyway)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """[N, P] ids and mask for token lists of different lengths, padding on the left."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
        mask[row, width - len(p) :] = 1
    return ids.to(device), mask.to(device)


def _token_logps(logits: Tensor, tokens: Tensor, temperature: float) -> Tensor:
    scaled = logits.float() / (temperature if temperature > 0 else 1.0)
    return torch.log_softmax(scaled, dim=-1).gather(-1, tokens[..., None])[..., 0]


@torch.no_grad()
def sample_completions(
    model: DecoderLM,
    prompts: Sequence[Sequence[int]],
    group_size: int = 1,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    eos_ids: Sequence[int] = (),
    pad_id: int = 0,
    generator: torch.Generator | None = None,
    autocast: torch.dtype | None = None,
) -> Rollout:
    """`group_size` completions of up to `max_new_tokens` for each prompt (token id lists).

    temperature 0 is greedy (log-probs then of the untempered distribution). Draws come from
    `generator` (a CPU generator: the same seed gives the same rollout on any device). The model is
    put in eval mode for the rollout and restored afterwards.
    """
    if group_size < 1 or max_new_tokens < 1:
        raise ValueError("group_size and max_new_tokens must be at least 1")
    device = model.device
    rows = [list(p) for p in prompts for _ in range(group_size)]
    prompt_ids, prompt_mask = left_pad(rows, pad_id, device)
    n = prompt_ids.shape[0]
    eos = torch.tensor(sorted(set(eos_ids)) or [-1], device=device)
    was_training = model.training
    model.eval()
    ctx = torch.autocast(device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext()
    cache = DynamicCache()
    mask = prompt_mask
    positions = positions_from_mask(mask)
    tokens, logps = [], []
    done = torch.zeros(n, dtype=torch.bool, device=device)
    alive = []
    try:
        with ctx:
            logits = model(
                prompt_ids, attention_mask=mask, position_ids=positions, cache=cache, logits_to_keep=1
            )
        next_pos = positions[:, -1:] + 1
        for step in range(max_new_tokens):
            last = logits[:, -1].float()
            if temperature > 0:
                x = last / temperature
                apply_top_k_top_p(x, [top_k] * n, [top_p] * n)
                probs = torch.softmax(x, dim=-1)
                nxt = torch.multinomial(probs.cpu(), 1, generator=generator)[:, 0].to(device)
            else:
                nxt = last.argmax(-1)
            alive.append(~done)
            tokens.append(nxt)
            logps.append(_token_logps(last, nxt, temperature))
            done = done | torch.isin(nxt, eos)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            mask = torch.cat((mask, torch.ones_like(nxt)[:, None]), dim=1)
            with ctx:
                logits = model(nxt[:, None], attention_mask=mask, position_ids=next_pos, cache=cache)
            next_pos = next_pos + 1
    finally:
        model.train(was_training)
    completion_mask = torch.stack(alive, dim=1).long()
    completion_ids = torch.stack(tokens, dim=1).masked_fill(completion_mask == 0, pad_id)
    token_logps = torch.stack(logps, dim=1).masked_fill(completion_mask == 0, 0.0)
    return Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask, token_logps, done, group_size)


def completion_logps(
    model: DecoderLM,
    input_ids: Tensor,
    attention_mask: Tensor,
    n_completion: int,
    temperature: float = 1.0,
) -> Tensor:
    """Teacher-forced log-probs [N, C] of the last `n_completion` tokens of each row (with grad).

    Only the hidden states that predict completion tokens go through the output head, so the logits
    are [N, C, vocab] rather than [N, P + C, vocab]. Positions come from the mask, as in the rollout.
    """
    positions = positions_from_mask(attention_mask)
    h = model.hidden_states(input_ids, attention_mask=attention_mask, position_ids=positions)
    h = h[:, -n_completion - 1 : -1]
    logits = model.lm_head(h).float()
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    targets = input_ids[:, -n_completion:]
    return -F.cross_entropy(logits.flatten(0, 1), targets.reshape(-1), reduction="none").view_as(targets)


# ---- prompts in, texts and scores out ----------------------------------------------------------


def prompt_text(prompt: str | list[dict[str, Any]]) -> str:
    """What a reward sees as the prompt: the text, or the last user message of a conversation."""
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
    return str(users[-1] if users else prompt[-1].get("content", ""))


def encode_prompt(tokenizer: Tokenizer, prompt: str | list[dict[str, Any]]) -> list[int]:
    """Messages through the chat template with the assistant turn opened; a string as raw text."""
    if isinstance(prompt, str):
        return tokenizer.encode(prompt)
    ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
    assert isinstance(ids, list)
    return ids


def stop_ids(path: Path, tokenizer: Tokenizer, model: DecoderLM) -> list[int]:
    """Tokens that end a completion: generation_config's, the tokenizer's and the model's EOS, and
    ChatML's end of turn when the chat template uses it (as the engine decides)."""
    eos = load_generation_config(path).get("eos_token_id")
    ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id, model.config.eos_token_id}
    if "<|im_end|>" in tokenizer.chat_template:
        ids.add(tokenizer.token_to_id("<|im_end|>"))
    return sorted(i for i in ids if isinstance(i, int))


class Policy:
    """The model being trained with what sampling and scoring need: tokenizer, stop tokens, dtype."""

    def __init__(self, model: DecoderLM, tokenizer: Tokenizer, eos: list[int], autocast: torch.dtype | None):
        self.model, self.tokenizer, self.eos, self.autocast = model, tokenizer, eos, autocast
        pad = tokenizer.pad_token_id
        self.pad = pad if pad is not None else (eos[0] if eos else 0)

    def autocast_ctx(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.model.device.type, dtype=self.autocast)

    def texts(self, rollout: Rollout) -> list[str]:
        return [
            self.tokenizer.decode(rollout.completion_tokens(r, self.eos), skip_special_tokens=True)
            for r in range(rollout.completion_ids.shape[0])
        ]


def heldout_reward(
    policy: Policy,
    rows: Sequence[dict[str, Any]],
    ids: Sequence[list[int]],
    reward: Reward,
    max_new_tokens: int,
    batch: int = 64,
) -> tuple[float, list[str]]:
    """Mean reward of greedy answers to `rows` (deterministic, so before and after compare exactly)."""
    scores: list[float] = []
    texts: list[str] = []
    for start in range(0, len(rows), batch):
        part = ids[start : start + batch]
        rollout = sample_completions(
            policy.model, part, 1, max_new_tokens, temperature=0.0, eos_ids=policy.eos, pad_id=policy.pad,
            autocast=policy.autocast,
        )  # fmt: skip
        got = policy.texts(rollout)
        chunk = rows[start : start + batch]
        scores += reward.batch([prompt_text(r["prompt"]) for r in chunk], got, chunk)
        texts += got
    return sum(scores) / max(1, len(scores)), texts
