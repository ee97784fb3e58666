"""Beam search with the exact semantics of transformers' `generate(num_beams=..., do_sample=False)`.

Matching transformers (rather than a textbook variant) matters because users compare outputs with it
and because its defaults encode choices that change results:

- each step keeps the top `max(2, 1 + number of EOS ids) * num_beams` candidates, so that enough beams
  survive when some of them end; only candidates among the top `num_beams` may become finished beams;
- a finished beam (ended by EOS, or by reaching max_new_tokens) scores
  `sum(log p) / generated_length ** length_penalty`, where generated_length counts the new tokens
  including the EOS token and excluding the prompt;
- early_stopping=True stops once `num_beams` beams are finished; False stops once they are and the
  best running beam, scored at its current length, cannot beat the worst of them; "never" does the
  same with the best length it could still reach when length_penalty > 0 (the canonical algorithm).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from genloop.model import DecoderLM, DynamicCache

_NEG = -1.0e9  # transformers' "impossible" score, kept so that ties and thresholds behave the same


@torch.no_grad()
def beam_search(
    model: DecoderLM,
    input_ids: list[int],
    num_beams: int,
    max_new_tokens: int,
    eos_token_id: int | Sequence[int] | None,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    num_return_sequences: int = 1,
) -> list[tuple[list[int], float]]:
    """The best `num_return_sequences` beams, best first: (new token ids, ending with the EOS token when
    a beam ended by one, and the length-penalized score). eos_token_id may be several ids (chat models
    end turns with their own token); max_new_tokens is capped by the model's context."""
    if num_beams < 1 or not 1 <= num_return_sequences <= num_beams:
        raise ValueError(
            f"need num_beams >= 1 and 1 <= num_return_sequences <= num_beams, "
            f"got num_beams={num_beams}, num_return_sequences={num_return_sequences}"
        )
    if not input_ids:
        raise ValueError("beam search needs a prompt of at least one token")
    max_new_tokens = min(max_new_tokens, model.config.max_seq_len - len(input_ids))
    if max_new_tokens < 1:
        raise ValueError(f"the prompt of {len(input_ids)} tokens leaves no room in the context")
    device = model.device
    cache = DynamicCache()
    logits = model(torch.tensor([input_ids], device=device), cache=cache, logits_to_keep=1)[:, -1]
    vocab = logits.shape[-1]
    eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
    keep = min(max(2, 1 + len(eos)) * num_beams, num_beams * vocab)
    is_top = torch.arange(keep, device=device) < num_beams
    cache.reorder(torch.zeros(num_beams, dtype=torch.long, device=device))
    logits = logits.expand(num_beams, -1)
    # every beam starts as the prompt; only the first may extend it, or all beams would be the same
    running_scores = torch.full((num_beams,), _NEG, device=device)
    running_scores[0] = 0.0
    running = torch.empty(num_beams, 0, dtype=torch.long, device=device)
    done = _Finished(num_beams, device)

    for step in range(max_new_tokens):
        if step:
            logits = model(running[:, -1:], cache=cache, logits_to_keep=1)[:, -1]
        scores = F.log_softmax(logits.float(), dim=-1) + running_scores[:, None]
        top_scores, top_idx = scores.reshape(-1).topk(keep)
        parents, tokens = top_idx // vocab, top_idx % vocab
        candidates = torch.cat((running[parents], tokens[:, None]), dim=1)
        ends = torch.isin(tokens, torch.tensor(eos, dtype=torch.long, device=device))
        ends |= step + 1 >= max_new_tokens

        # the best candidates that did not end keep running
        alive_scores = top_scores + ends.float() * _NEG
        order = alive_scores.topk(num_beams).indices
        running, running_scores = candidates[order], alive_scores[order]
        cache.reorder(parents[order])

        # the ones that ended join the finished beams if they are good enough
        length = step + 1
        # (transformers also bars additions once the search could stop; with one prompt it has stopped)
        final = top_scores / (length**length_penalty) + (~(ends & is_top)).float() * _NEG
        done.merge(candidates, final, ends & is_top)

        best_length = max_new_tokens if early_stopping == "never" and length_penalty > 0 else length
        best_possible = running_scores[0] / (best_length**length_penalty)
        worst = torch.where(done.finished, done.scores.min(), torch.tensor(_NEG, device=device))
        improvable = bool((best_possible > worst).any())  # transformers' early-stop heuristic
        if not improvable or (early_stopping is True and bool(done.finished.all())) or bool(ends.all()):
            break

    return [
        (tokens, float(score))
        for tokens, score, finished in zip(
            done.tokens, done.scores.tolist(), done.finished.tolist(), strict=True
        )
        if finished
    ][:num_return_sequences]


class _Finished:
    """The `num_beams` best finished beams so far, best first (slots not yet filled score -1e9)."""

    def __init__(self, num_beams: int, device: torch.device) -> None:
        self.num_beams = num_beams
        self.scores = torch.full((num_beams,), _NEG, device=device)
        self.finished = torch.zeros(num_beams, dtype=torch.bool, device=device)
        self.tokens: list[list[int]] = [[] for _ in range(num_beams)]

    def merge(self, candidates: Tensor, scores: Tensor, finished: Tensor) -> None:
        merged = torch.cat((self.scores, scores))
        pick = merged.topk(self.num_beams).indices.tolist()
        n = self.num_beams
        self.tokens = [self.tokens[i] if i < n else candidates[i - n].tolist() for i in pick]
        self.scores = merged[pick]
        self.finished = torch.cat((self.finished, finished))[pick]
