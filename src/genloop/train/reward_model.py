"""A reward model: a decoder with a scalar head, trained on preference pairs (Bradley-Terry).

The score of a (prompt, answer) sequence is a linear read-out of the decoder's last hidden state at
the answer's last input position, so it has read the whole exchange. It is saved as an ordinary
model directory (the backbone, usable on its own) plus `reward_head.safetensors` holding the head,
which is how `genloop rl` and `genloop compare` find and load it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from genloop.errors import UserError
from genloop.model.transformer import DecoderLM

HEAD_FILE = "reward_head.safetensors"


class RewardModel(nn.Module):
    """score(input_ids, labels) -> [B]: the labels mark the answer (not -100), as in preference batches."""

    def __init__(self, backbone: DecoderLM) -> None:
        super().__init__()
        if not isinstance(backbone, DecoderLM):
            raise UserError("a reward model needs a decoder-only model as its backbone")
        self.backbone = backbone
        self.config = backbone.config
        self.score = nn.Linear(backbone.config.d_model, 1, bias=False)
        nn.init.normal_(self.score.weight, std=backbone.config.d_model**-0.5)

    def forward(self, input_ids: Tensor, labels: Tensor, **_: Any) -> Tensor:
        h = self.backbone.hidden_states(input_ids)
        learned = labels != -100
        positions = torch.arange(labels.shape[1], device=labels.device).expand_as(labels)
        last = torch.where(learned, positions, -1).amax(dim=1).clamp_min(0)
        picked = h[torch.arange(h.shape[0], device=h.device), last]
        return self.score(picked).squeeze(-1).float()

    def save(self, folder: Path, tokenizer: Any, provenance: dict[str, Any]) -> None:
        from genloop.checkpoint import save_state

        state = {
            k.removeprefix("backbone."): v for k, v in self.state_dict().items() if k.startswith("backbone.")
        }
        if self.config.tie_embeddings:
            state.pop("lm_head.weight", None)
        save_state(
            state, self.config, folder, tokenizer=tokenizer, provenance={**provenance, "reward_model": True}
        )
        save_file({"score.weight": self.score.weight.detach().float().contiguous()}, str(folder / HEAD_FILE))

    @classmethod
    def load(cls, path: str | Path) -> RewardModel:
        from genloop.checkpoint import load_model, resolve

        folder = resolve(path)
        if not (folder / HEAD_FILE).is_file():
            raise UserError(
                f"{folder} is not a reward model (no {HEAD_FILE}); "
                "train one with `genloop rm MODEL --data PAIRS`"
            )
        backbone = load_model(folder)
        model = cls(backbone)  # type: ignore[arg-type]
        model.score.weight.data.copy_(load_file(str(folder / HEAD_FILE))["score.weight"])
        return model.eval()


def is_reward_model(path: Path) -> bool:
    return (path / HEAD_FILE).is_file()


@torch.no_grad()
def score_texts(
    model: RewardModel,
    tokenizer: Any,
    prompts: Sequence[object],
    answers: Sequence[object],
    seq_len: int = 1024,
) -> list[float]:
    """Scores of (prompt, answer) pairs, prompts as strings or message lists (like the training rows)."""
    from genloop.train.preference_data import pair_batches

    out: list[float] = []
    for batch, _ in pair_batches(tokenizer, prompts, answers, seq_len):
        out.extend(model(batch["input_ids"], batch["labels"]).tolist())
    return out
