"""Beam search against transformers' own `generate(num_beams=...)` on the same tiny Llama-style weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genloop.checkpoint import save_model
from genloop.generate.beam import beam_search
from genloop.model import DecoderLM, build_model, preset

transformers = pytest.importorskip("transformers")

VOCAB = 32
NEW = 12
PROMPTS = [[5, 17, 30, 2], [20, 21, 7], [28, 3, 3, 26, 11, 12], [1]]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[DecoderLM, object]:
    torch.manual_seed(0)
    model = build_model(preset("tiny", vocab_size=VOCAB, tie_embeddings=False)).eval()
    with torch.no_grad():  # peaked but not one-hot distributions, varying with the context
        model.lm_head.weight.mul_(16)
        model.embed.tokens.weight.mul_(4)
    assert isinstance(model, DecoderLM)
    path: Path = tmp_path_factory.mktemp("beam") / "tiny"
    save_model(model, path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    return model, hf


def _hf_beams(
    hf, prompt: list[int], eos: int | None, n_return: int = 1, **kw
) -> list[tuple[list[int], float]]:
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            num_beams=4,
            do_sample=False,
            max_new_tokens=NEW,
            eos_token_id=eos,
            pad_token_id=0,
            num_return_sequences=n_return,
            output_scores=True,
            return_dict_in_generate=True,
            **kw,
        )
    return [
        (_cut(seq[len(prompt) :].tolist(), eos), float(score))
        for seq, score in zip(out.sequences, out.sequences_scores, strict=True)
    ]


def _cut(tokens: list[int], eos: int | list[int] | None) -> list[int]:
    """Up to and including the first EOS: transformers pads the shorter beams after it."""
    ids = [eos] if isinstance(eos, int) else eos or []
    ends = [i for i, t in enumerate(tokens) if t in ids]
    return tokens[: ends[0] + 1] if ends else tokens


@pytest.fixture(scope="module")
def eos_id(models) -> int:
    """A token the model produces a few steps into its best beam, so EOS ends beams at various lengths."""
    _, hf = models
    return _hf_beams(hf, PROMPTS[0], None)[0][0][4]


def _same(ours: list[tuple[list[int], float]], theirs: list[tuple[list[int], float]]) -> None:
    assert [t for t, _ in ours] == [t for t, _ in theirs]
    assert [s for _, s in ours] == pytest.approx([s for _, s in theirs], abs=1e-4)


def test_without_eos_equals_transformers(models) -> None:
    model, hf = models
    for prompt in PROMPTS:
        ours = beam_search(model, prompt, 4, NEW, None)
        _same(ours, _hf_beams(hf, prompt, None))
        assert len(ours[0][0]) == NEW


@pytest.mark.parametrize("length_penalty", [1.0, 0.0, 2.0, -1.0])
def test_with_eos_equals_transformers(models, eos_id: int, length_penalty: float) -> None:
    """All four finished beams and their scores, for each early-stopping rule."""
    model, hf = models
    results, lengths = {}, []
    for early_stopping in (False, True, "never"):
        for prompt in PROMPTS:
            kw = {"length_penalty": length_penalty, "early_stopping": early_stopping}
            ours = beam_search(model, prompt, 4, NEW, eos_id, num_return_sequences=4, **kw)
            _same(ours, _hf_beams(hf, prompt, eos_id, n_return=4, **kw))
            assert [s for _, s in ours] == sorted((s for _, s in ours), reverse=True)
            results[early_stopping, tuple(prompt)] = ours
            lengths += [len(t) for t, _ in ours]
    assert min(lengths) < NEW  # EOS really ended beams
    if length_penalty == 1.0:  # the three stopping rules really lead to different beams here
        assert all(results[False, tuple(p)] != results[True, tuple(p)] for p in PROMPTS)
    if length_penalty > 0:
        assert any(results[False, tuple(p)] != results["never", tuple(p)] for p in PROMPTS)


def test_several_eos_ids_equal_transformers(models, eos_id: int) -> None:
    model, hf = models
    second = _hf_beams(hf, PROMPTS[1], None)[0][0][2]
    eos = [eos_id, second] if second != eos_id else [eos_id, (eos_id + 1) % VOCAB]
    ended = []
    for prompt in PROMPTS:
        ours = beam_search(model, prompt, 4, NEW, eos, num_return_sequences=4)
        _same(ours, _hf_beams(hf, prompt, eos, n_return=4))
        ended += [t[-1] for t, _ in ours if len(t) < NEW]
    assert set(ended) == set(eos)  # both ids really ended beams


def test_one_beam_is_greedy(models) -> None:
    from genloop.generate import greedy_decode

    model, _ = models
    prompt = PROMPTS[2]
    ref = greedy_decode(model, torch.tensor([prompt]), NEW)[0, len(prompt) :].tolist()
    assert beam_search(model, prompt, 1, NEW, None)[0][0] == ref


def test_bad_arguments(models) -> None:
    model, _ = models
    with pytest.raises(ValueError, match="num_return_sequences"):
        beam_search(model, [1, 2], 2, 4, None, num_return_sequences=3)
    with pytest.raises(ValueError, match="no room"):
        beam_search(model, [1] * model.config.max_seq_len, 2, 4, None)
