"""Plain greedy decoding with a KV cache: the reference loop the batching engine is checked against."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from genloop.model import DecoderLM, DynamicCache, EncoderDecoderLM


@torch.no_grad()
def greedy_decode(
    model: DecoderLM, input_ids: Tensor, max_new_tokens: int, eos_token_id: int | None = None
) -> Tensor:
    """Extend each row of input_ids [B, T] (no padding) by up to max_new_tokens argmax tokens."""
    cache = DynamicCache()
    logits = model(input_ids, cache=cache)[:, -1]
    out = input_ids
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    for _ in range(max_new_tokens):
        nxt = logits.argmax(-1)
        if eos_token_id is not None:
            nxt = torch.where(done, torch.full_like(nxt, eos_token_id), nxt)
            done |= nxt == eos_token_id
        out = torch.cat((out, nxt[:, None]), dim=1)
        if bool(done.all()):
            break
        logits = model(nxt[:, None], cache=cache)[:, -1]
    return out


@torch.no_grad()
def greedy_seq2seq(
    model: EncoderDecoderLM,
    input_ids: Tensor,
    max_new_tokens: int,
    attention_mask: Tensor | None = None,
    start_token_id: int | None = None,
) -> Tensor:
    """Greedy target tokens [B, max_new_tokens] for source ids [B, S]; encoder run once, cross-KV cached."""
    start = start_token_id if start_token_id is not None else model.config.decoder_start_token_id or 0
    enc = model.encode(input_ids, attention_mask)
    cache = DynamicCache()
    step = torch.full((input_ids.shape[0], 1), start, dtype=torch.long, device=input_ids.device)
    tokens = []
    for _ in range(max_new_tokens):
        logits = model.decode(step, enc, attention_mask, cache=cache)[:, -1]
        step = logits.argmax(-1, keepdim=True)
        tokens.append(step)
    return torch.cat(tokens, dim=1)


@torch.no_grad()
def stream_greedy(
    model: DecoderLM,
    input_ids: list[int],
    max_new_tokens: int,
    stop_ids: set[int] | frozenset[int] = frozenset(),
) -> Iterator[int]:
    """Yield greedy next tokens one at a time for one prompt, stopping at any of `stop_ids`."""
    cache = DynamicCache()
    ids = torch.tensor([input_ids], dtype=torch.long, device=model.device)
    logits = model(ids, cache=cache)[:, -1]
    for _ in range(max_new_tokens):
        nxt = int(logits.argmax(-1))
        if nxt in stop_ids:
            return
        yield nxt
        logits = model(torch.tensor([[nxt]], device=model.device), cache=cache)[:, -1]


class TextStream:
    """Turns a growing list of token ids into text deltas, holding back a partial UTF-8 character."""

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self.decode, self.ids, self.sent = decode, [], 0

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.decode(self.ids)
        if text.endswith("\ufffd"):  # the rest of this character is in the next token
            return ""
        delta, self.sent = text[self.sent :], len(text)
        return delta
