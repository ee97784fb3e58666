"""Head-to-head judging of two models' answers to the same prompts: by a reward model or a judge model.

Each prompt ends as +1 (B's answer is better), 0 (tie) or -1 (A's is better). Identical answers tie
without asking anyone. An empty answer loses to a non-empty one: it cannot be scored (a reward model
reads the last answer token) and answers nothing.

A reward model (a directory made by `genloop rm`) scores each (prompt, answer); B wins when its score
is higher. A judge is a chat model shown the rubric, the prompt and both answers labelled A and B, and
asked which is better; its preference is read from the log-probabilities of the two letters as the
next tokens of its reply, never from free text. Each prompt is judged twice with the answers swapped,
which cancels a judge's bias toward a position: a verdict counts only when both orders agree, and a
disagreement is a tie.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genloop.errors import UserError

DEFAULT_RUBRIC = (
    "You judge two answers to the same request. The better answer is helpful (it does what was asked), "
    "correct (it states nothing false) and concise (it says no more than needed)."
)
JUDGE_PROMPT = (
    "{rubric}\n\nRequest:\n{prompt}\n\nAnswer A:\n{first}\n\nAnswer B:\n{second}\n\n"
    "Which answer is better? Reply with the single letter A or B."
)


Decisions = dict[int, tuple[int, dict[str, float]]]


def decide_pairs(
    a: Sequence[str], b: Sequence[str], decide: Callable[[list[int]], Decisions]
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """+1/0/-1 per prompt and what decided it; `decide(indices)` rules on the pairs that need a judge."""
    out = np.zeros(len(a), dtype=np.int64)
    details: list[dict[str, Any]] = [{} for _ in a]
    ask = []
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if x == y:
            details[i] = {"decided_by": "identical answers"}
        elif not x.strip() or not y.strip():
            out[i], details[i] = (1 if not x.strip() else -1), {"decided_by": "empty answer"}
        else:
            ask.append(i)
    for i, (outcome, detail) in (decide(ask) if ask else {}).items():
        out[i], details[i] = outcome, detail
    return out, details


def reward_model_outcomes(
    path: Path,
    prompts: Sequence[str],
    a: Sequence[str],
    b: Sequence[str],
    *,
    chat: bool = False,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Win/tie/loss per prompt by reward-model score; `chat` sends prompts and answers as messages.

    The reward model runs on the CPU: `score_texts` builds its batches there.
    """
    from genloop.preprocess import Tokenizer
    from genloop.train.reward_model import RewardModel, score_texts

    model = RewardModel.load(path)
    tokenizer = Tokenizer.load(path)
    seq_len = model.config.max_seq_len

    def as_prompt(text: str) -> object:
        return [{"role": "user", "content": text}] if chat else text

    def decide(ask: list[int]) -> Decisions:
        asked = [as_prompt(prompts[i]) for i in ask] * 2
        answers = [a[i] for i in ask] + [b[i] for i in ask]
        values = score_texts(model, tokenizer, asked, answers, seq_len=seq_len)
        return {
            i: (int(np.sign(sb - sa)), {"score_a": sa, "score_b": sb})
            for i, sa, sb in zip(ask, values[: len(ask)], values[len(ask) :], strict=True)
        }

    return decide_pairs(a, b, decide)


class Judge:
    """A chat model that states a preference between two answers through the log-probs of 'A' and 'B'."""

    def __init__(self, path: Path, rubric: str | None = None, device: str | None = None, batch_size: int = 8):
        from genloop.checkpoint import load_model
        from genloop.model import DecoderLM
        from genloop.preprocess import Tokenizer

        self.tokenizer = Tokenizer.load(path)
        if not self.tokenizer.chat_template:
            raise UserError(f"judge {path} has no chat template; a judge must be a chat (instruct) model")
        model = load_model(path, dtype=torch.float32)
        if not isinstance(model, DecoderLM):
            raise UserError(f"judge {path} is not a decoder-only model; use a GPT or Llama style chat model")
        self.model = model.to(device or "cpu").eval()
        self.rubric = rubric or DEFAULT_RUBRIC
        self.batch_size = batch_size
        self.letters = [self.tokenizer.encode(x, add_special_tokens=False) for x in ("A", "B")]
        if not all(self.letters):
            raise UserError(f"judge {path}: its tokenizer encodes the letters A/B to nothing")

    def preference(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]) -> np.ndarray:
        """log p("B") − log p("A") for each prompt, with `first` shown as answer A and `second` as B."""
        contexts = []
        for prompt, x, y in zip(prompts, first, second, strict=True):
            text = JUDGE_PROMPT.format(rubric=self.rubric, prompt=prompt, first=x, second=y)
            ids = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
            )
            contexts.append(list(ids)[-self.model.config.max_seq_len :])  # keep the question at the end
        if all(len(letter) == 1 for letter in self.letters):
            logps = self._next_token_logprobs(contexts, [self.letters[0][0], self.letters[1][0]])
            return logps[:, 1] - logps[:, 0]
        from genloop.evaluate.loglik import Pair, continuation_logprobs

        pairs = [Pair(c, letter) for c in contexts for letter in self.letters]
        lls = np.array(
            continuation_logprobs(self.model, pairs, self.model.config.max_seq_len, self.batch_size)
        )
        return lls[1::2] - lls[0::2]

    @torch.inference_mode()
    def _next_token_logprobs(self, contexts: list[list[int]], tokens: list[int]) -> np.ndarray:
        """log p(token | context) [n, len(tokens)]: one forward per context, the head at its last position."""
        device = next(self.model.parameters()).device
        out = np.zeros((len(contexts), len(tokens)))
        order = sorted(range(len(contexts)), key=lambda i: -len(contexts[i]))
        for lo in range(0, len(order), self.batch_size):
            rows = order[lo : lo + self.batch_size]
            ids = torch.zeros(len(rows), len(contexts[rows[0]]), dtype=torch.long)
            for r, i in enumerate(rows):  # right padding leaves a causal model's earlier positions alone
                ids[r, : len(contexts[i])] = torch.tensor(contexts[i])
            h = self.model.hidden_states(ids.to(device))
            last = torch.tensor([len(contexts[i]) - 1 for i in rows], device=device)
            logits = self.model.lm_head(h[torch.arange(len(rows), device=device), last]).float()
            picked = torch.log_softmax(logits, dim=-1)[:, tokens].cpu().numpy()
            out[rows] = picked
        return out

    def outcomes(
        self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Win/tie/loss per prompt: B wins when preferred both as answer B and, swapped, as answer A."""

        def decide(ask: list[int]) -> Decisions:
            ps, xs, ys = [prompts[i] for i in ask], [a[i] for i in ask], [b[i] for i in ask]
            shown_second = self.preference(ps, xs, ys)  # > 0: the judge prefers B's answer
            shown_first = -self.preference(ps, ys, xs)  # > 0: it still prefers B's, now labelled A
            out = {}
            for i, u, v in zip(ask, shown_second.tolist(), shown_first.tolist(), strict=True):
                outcome = 1 if u > 0 and v > 0 else -1 if u < 0 and v < 0 else 0
                out[i] = (outcome, {"b_preferred_shown_second": u, "b_preferred_shown_first": v})
            return out

        return decide_pairs(a, b, decide)


def summarize_outcomes(
    outcomes: np.ndarray, *, resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> dict[str, Any]:
    """Counts, B's win rate (a tie counts half) and its bootstrap interval over prompts."""
    from genloop.evaluate.bootstrap import bootstrap_interval

    points = (np.asarray(outcomes, dtype=np.float64) + 1) / 2  # win 1, tie 0.5, loss 0
    low, high = bootstrap_interval(points, resamples=resamples, seed=seed, confidence=confidence)
    rate = float(points.mean())
    verdict = "B better" if low > 0.5 else "A better" if high < 0.5 else "no clear difference"
    return {
        "n": len(points),
        "wins": int((outcomes > 0).sum()),
        "ties": int((outcomes == 0).sum()),
        "losses": int((outcomes < 0).sum()),
        "win_rate": rate,
        "ci": [low, high],
        "verdict": verdict,
    }
