"""SpanCorruptionDataset: inputs and targets together give back the window exactly, the noise is T5's
(density, span length, lengths from T5's formula), and batches are deterministic and resumable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from genloop.config import TokenizerConfig
from genloop.errors import UserError
from genloop.model import build_model, preset
from genloop.preprocess.tokenizer import Tokenizer
from genloop.train.objectives import span_corruption
from genloop.train.span_data import SpanCorruptionDataset, corrupted_lengths, window_length
from tests.data.shardkit import write_stream

VOCAB, EOS = 512, 401
SENTINELS = list(range(VOCAB - 1, VOCAB - 101, -1))  # <extra_id_0> = vocab_size - 1, downward


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    stream = np.random.default_rng(0).integers(0, 400, size=60_000).astype(np.uint32)  # below the sentinels
    return write_stream(tmp_path_factory.mktemp("span") / "shards", stream, tokens_per_shard=7_000)


def make(shards: Path, seq_len: int = 128, batch_size: int = 4, **kw: object) -> SpanCorruptionDataset:
    kw = {"seed": 0, "rank": 0, "world_size": 1, "eos_token_id": EOS, **kw}
    return SpanCorruptionDataset(shards, SENTINELS, seq_len, batch_size, **kw)  # type: ignore[arg-type]


def reconstruct(inputs: list[int], targets: list[int], sentinels: list[int]) -> list[int]:
    """Put each sentinel's span from the targets back where the sentinel stands in the inputs."""
    assert inputs[-1] == EOS and targets[-1] == EOS
    spans: dict[int, list[int]] = {}
    current = None
    for token in targets[:-1]:
        if token in sentinels:
            current = spans.setdefault(token, [])
        else:
            assert current is not None, "targets start with a sentinel"
            current.append(token)
    out = []
    for token in inputs[:-1]:
        out += spans.pop(token) if token in sentinels else [token]
    assert not spans, "every span comes back once"
    return out


def test_lengths_follow_t5s_formula() -> None:
    # T5 (and Hugging Face's run_t5_mlm_flax) expand 512 input tokens to 568 raw tokens, 114 targets
    assert window_length(512, 0.15, 3.0) == 568
    assert corrupted_lengths(568, 0.15, 3.0) == (512, 114)


def test_inputs_and_targets_reconstruct_the_window(shards: Path) -> None:
    ds = make(shards)
    assert ds.window_len == window_length(128, 0.15, 3.0) and ds.input_len <= 128
    for step in (0, 5, len(ds) + 2):
        batch = ds.batch(step)
        epoch, i = divmod(step, len(ds))
        windows = ds.windows.order(epoch)[i * 4 : (i + 1) * 4]
        assert batch["input_ids"].shape == (4, 128) and batch["labels"].shape == (4, ds.target_len)
        for row, w in enumerate(windows):
            n = int(batch["attention_mask"][row].sum())
            assert n == ds.input_len and (batch["input_ids"][row, n:] == ds.pad).all()
            inputs, targets = batch["input_ids"][row, :n].tolist(), batch["labels"][row].tolist()
            original = ds.windows.window(int(w))[: ds.window_len].tolist()
            assert reconstruct(inputs, targets, SENTINELS) == original
            used = [t for t in targets if t in SENTINELS]
            assert used == SENTINELS[: len(used)]  # <extra_id_0>, <extra_id_1>, ... in order
        assert torch.equal(batch["decoder_input_ids"][:, 1:], batch["labels"][:, :-1])
        assert (batch["decoder_input_ids"][:, 0] == ds.decoder_start).all()


def test_windows_do_not_overlap_and_cover_the_stream(shards: Path) -> None:
    ds = make(shards)
    stream = np.concatenate([np.asarray(a) for a in ds.windows.arrays])
    for w in (0, 1, 17):
        assert np.array_equal(
            ds.windows.window(w)[: ds.window_len], stream[w * ds.window_len : (w + 1) * ds.window_len]
        )


def test_noise_density_and_span_length_are_t5s(shards: Path) -> None:
    ds = make(shards, seq_len=256)
    noise = spans = total = 0
    for w in range(200):
        inputs, targets = ds.example(0, w)
        k = int(np.isin(targets, SENTINELS).sum())
        noise, spans, total = noise + len(targets) - 1 - k, spans + k, total + ds.window_len
        assert len(inputs) == ds.input_len and len(targets) == ds.target_len
    assert abs(noise / total - 0.15) < 0.005
    assert abs(noise / spans - 3.0) < 0.2
    # the cut points are random: different windows and epochs give different span layouts
    layouts = {
        tuple(np.flatnonzero(np.isin(ds.example(e, w)[1], SENTINELS))) for e in range(3) for w in range(5)
    }
    assert len(layouts) > 10


def test_batches_are_deterministic_and_resumable(shards: Path) -> None:
    a, b = make(shards, seed=3), make(shards, seed=3)
    assert all(torch.equal(a.batch(7)[k], v) for k, v in b.batch(7).items())
    assert not torch.equal(make(shards, seed=4).batch(7)["labels"], a.batch(7)["labels"])
    it = iter(a)
    reference = [next(it) for _ in range(len(a) + 3)]
    resumed = make(shards, seed=3)
    resumed.load_state_dict(json.loads(json.dumps({**a.state_dict(), "step": len(a) - 2})))
    it = iter(resumed)
    for expected in reference[len(a) - 2 :]:
        got = next(it)
        assert all(torch.equal(got[k], expected[k]) for k in expected)
    with pytest.raises(UserError, match="noise_density"):
        make(shards, seed=3, noise_density=0.3).load_state_dict(a.state_dict())


def test_ranks_read_disjoint_windows(shards: Path) -> None:
    r0, r1 = make(shards, rank=0, world_size=2), make(shards, rank=1, world_size=2)
    assert len(r0) == len(r1) > 0
    assert not set(r0.windows.order(0).tolist()) & set(r1.windows.order(0).tolist())


def test_sentinels_come_from_the_tokenizer(shards: Path) -> None:
    texts = ["the cat sat on the mat"] * 20
    named = [f"<extra_id_{i}>" for i in range(40)]
    tok = Tokenizer.train(texts, TokenizerConfig(vocab_size=400, extra_special_tokens=named), progress=False)
    ds = SpanCorruptionDataset(shards, tok, 128, 4, 0, rank=0, world_size=1)
    assert ds.sentinels[:3].tolist() == [tok.token_to_id(f"<extra_id_{i}>") for i in range(3)]
    assert ds.eos == tok.eos_token_id and ds.pad == ds.decoder_start == tok.pad_token_id
    plain = Tokenizer.train(texts, TokenizerConfig(vocab_size=300), progress=False)
    ds = SpanCorruptionDataset(shards, plain, 128, 4, 0, rank=0, world_size=1, decoder_start_token_id=0)
    assert ds.sentinels[:2].tolist() == [plain.vocab_size - 1, plain.vocab_size - 2] and ds.decoder_start == 0
    few = Tokenizer.train(
        texts, TokenizerConfig(vocab_size=300, extra_special_tokens=named[:2]), progress=False
    )
    with pytest.raises(UserError, match="has 2 <extra_id_N> sentinels"):
        SpanCorruptionDataset(shards, few, 128, 4, 0, rank=0, world_size=1)


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"noise_density": 0.0}, "noise_density"),
        ({"mean_span_length": 0.5}, "mean_span_length"),
        ({"seq_len": 2}, "too short"),
        ({"batch_size": 10_000}, "too few for one batch"),
    ],
)
def test_bad_settings_are_user_errors(shards: Path, kw: dict, needle: str) -> None:
    with pytest.raises(UserError, match=needle):
        make(shards, **kw)


def test_too_few_sentinels_or_no_eos_are_user_errors(shards: Path) -> None:
    with pytest.raises(UserError, match="distinct sentinel ids"):
        SpanCorruptionDataset(shards, [511, 510], 128, 4, 0, rank=0, world_size=1, eos_token_id=EOS)
    with pytest.raises(UserError, match="end-of-sequence"):
        SpanCorruptionDataset(shards, SENTINELS, 128, 4, 0, rank=0, world_size=1)


def test_a_batch_trains_a_seq2seq_model(shards: Path) -> None:
    torch.manual_seed(0)
    model = build_model(preset("tiny-seq2seq", vocab_size=VOCAB))
    ds = make(shards, seq_len=96, decoder_start_token_id=0)
    loss, count = span_corruption(model, ds.batch(0))
    loss.backward()
    assert count == 4 * ds.target_len and torch.isfinite(loss)
