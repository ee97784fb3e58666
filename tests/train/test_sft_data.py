"""SFTDataset: labels are exactly the assistant replies, a packed row computes what each example would
alone (the model is the oracle), and batches are deterministic, disjoint across ranks and resumable."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from genloop.config import TokenizerConfig
from genloop.data.document import Example
from genloop.errors import UserError
from genloop.model import build_model, preset
from genloop.preprocess.tokenizer import Tokenizer
from genloop.train.objectives import OBJECTIVES
from genloop.train.sft_data import IGNORE, SFTDataset, best_fit, rows_at_least

WORDS = ["the", "cat", "sat", "on", "a", "mat", "while", "dogs", "ran", "over", "hills", "in", "rain"]


def make(source: object, tok: Tokenizer, seq_len: int, batch_size: int = 2, **kw: object) -> SFTDataset:
    """An SFTDataset on one rank unless the test says otherwise."""
    kw = {"seed": 0, "rank": 0, "world_size": 1, **kw}
    return SFTDataset(source, tok, seq_len, batch_size, **kw)  # type: ignore[arg-type]


def forward(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    mask, positions = batch["attention_mask"], batch["position_ids"]
    return model(batch["input_ids"], attention_mask=mask, position_ids=positions)


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def conversations(n: int, seed: int = 0) -> list[dict]:
    """Conversations of 1-3 exchanges, some with a system prompt, of varied lengths."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        messages = [{"role": "system", "content": "be brief"}] if i % 3 == 0 else []
        for _ in range(rng.randint(1, 3)):
            messages.append({"role": "user", "content": sentence(rng, rng.randint(1, 6))})
            messages.append({"role": "assistant", "content": sentence(rng, rng.randint(1, 12))})
        out.append({"messages": messages})
    return out


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    rng = random.Random(1)
    texts = [sentence(rng, 40) for _ in range(50)]
    return Tokenizer.train(texts, TokenizerConfig(vocab_size=300), progress=False)


@pytest.fixture(scope="module")
def convs() -> list[dict]:
    return conversations(120)


def learned_text(tok: Tokenizer, labels: torch.Tensor) -> str:
    return tok.decode([t for t in labels.tolist() if t != IGNORE])


def test_labels_are_the_assistant_replies_and_their_end_of_turn(tok: Tokenizer, convs: list[dict]) -> None:
    ds = make(convs, tok, 512, 4)
    assert ds.truncated == 0 and ds.skipped == {} and len(ds.lengths) == len(convs)
    for index, record in enumerate(convs):
        ids, labels = ds.example(index)
        replies = [m["content"] + "<|im_end|>" for m in record["messages"] if m["role"] == "assistant"]
        assert learned_text(tok, torch.from_numpy(labels)) == "".join(replies)
        rendered = tok.apply_chat_template(record["messages"])
        assert tok.decode(ids.tolist()) + "\n" == rendered  # inputs: all but the final newline
        learned = labels != IGNORE
        assert np.array_equal(labels[:-1][learned[:-1]], ids[1:][learned[:-1]])  # labels are shifted ids


def test_prompt_completion_learns_the_completion_only(tok: Tokenizer) -> None:
    records = [
        {"prompt": "the cat sat", "completion": " on a mat"},
        {"prompt": [{"role": "user", "content": "dogs ran"}],
         "completion": [{"role": "assistant", "content": "hills"}]},
    ]  # fmt: skip
    ds = make(records, tok, 64, 1, packing=False)
    ids, labels = ds.example(0)
    assert tok.decode(ids.tolist()) == "the cat sat on a mat"
    assert learned_text(tok, torch.from_numpy(labels)) == " on a mat<|endoftext|>"  # EOS ends it
    assert learned_text(tok, torch.from_numpy(ds.example(1)[1])) == "hills<|im_end|>"


def test_smollm2_template_labels_skip_its_default_system_prompt(smollm2: Path) -> None:
    tok = Tokenizer.load(smollm2)
    record = {"messages": [
        {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "It is 6."},
    ]}  # fmt: skip
    ds = make([record], tok, 256, 1)
    ids, labels = ds.example(0)
    assert "You are a helpful AI assistant" in tok.decode(ids.tolist())
    assert learned_text(tok, torch.from_numpy(labels)) == "4.<|im_end|>It is 6.<|im_end|>"


def segments(batch: dict[str, torch.Tensor], row: int) -> list[tuple[int, int]]:
    """(start, end) of each packed example in a row, read off the position ids."""
    pos = batch["position_ids"][row].tolist()
    real = int((batch["labels"][row] != IGNORE).nonzero().max()) + 1  # past the last learned token
    starts = [t for t in range(real) if pos[t] == 0]
    return [(s, e) for s, e in zip(starts, [*starts[1:], real], strict=True)]


@pytest.mark.parametrize("name", ["tiny", "tiny-gpt2"])
def test_packed_row_matches_each_example_run_alone(tok: Tokenizer, convs: list[dict], name: str) -> None:
    torch.manual_seed(0)
    model = build_model(preset(name, vocab_size=tok.vocab_size)).eval()
    ds = make(convs, tok, 256, 2)
    batch = ds.batch(0)
    assert batch["attention_mask"].shape == (2, 1, 256, 256) and batch["attention_mask"].dtype == torch.bool
    with torch.no_grad():
        packed = forward(model, batch)
    assert torch.isfinite(packed).all()  # padding sees itself: no NaN anywhere
    rows = ds.rows(0)[:2]
    for b in range(2):
        assert len(rows[b]) >= 3  # several examples share the row
        pos = batch["position_ids"][b].tolist()
        at = 0
        for index in rows[b]:
            ids, labels = ds.example(int(index))
            n = len(ids)
            assert pos[at : at + n] == list(range(n))
            assert batch["input_ids"][b, at : at + n].tolist() == ids.tolist()
            assert batch["labels"][b, at : at + n].tolist() == labels.tolist()
            with torch.no_grad():
                alone = model(torch.from_numpy(ids)[None])
            torch.testing.assert_close(packed[b, at : at + n], alone[0], atol=1e-5, rtol=0)
            at += n
        assert (batch["labels"][b, at:] == IGNORE).all() and (batch["input_ids"][b, at:] == ds.pad_id).all()


def test_padding_positions_leave_gradients_finite(tok: Tokenizer, convs: list[dict]) -> None:
    torch.manual_seed(0)
    model = build_model(preset("tiny", vocab_size=tok.vocab_size))
    batch = make(convs, tok, 256, 2).batch(3)
    logits = forward(model, batch).flatten(0, 1)
    loss = torch.nn.functional.cross_entropy(logits, batch["labels"].flatten(), ignore_index=IGNORE)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_packing_keeps_examples_whole_and_uses_almost_all(tok: Tokenizer, convs: list[dict]) -> None:
    ds = make(convs, tok, 256, 2, seed=5)
    for epoch in range(3):
        rows = ds.rows(epoch)
        assert len(rows) == len(ds) * 2
        assert all(int(ds.lengths[r].sum()) <= 256 for r in rows)
        seen = np.concatenate(rows)
        assert len(set(seen.tolist())) == len(seen)  # no example twice in an epoch
        stats = ds.epoch_stats(epoch)
        assert stats["examples_left_out"] == len(convs) - len(seen)
        assert stats["rows_used"] >= rows_at_least(ds.lengths, 256) - 2 * 1  # whole batches only
        assert stats["examples_left_out"] <= 0.1 * len(convs)


def test_best_fit_packs_tightly() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 200, size=3000)
    rows = best_fit(lengths.tolist(), 512)
    assert sorted(i for r in rows for i in r) == list(range(3000))
    assert all(lengths[r].sum() <= 512 for r in rows)
    assert len(rows) <= 1.02 * rows_at_least(lengths, 512)


def test_unpacked_rows_pad_to_the_longest_in_the_batch(tok: Tokenizer, convs: list[dict]) -> None:
    ds = make(convs, tok, 512, 4, packing=False)
    assert len(ds) == len(convs) // 4
    batch = ds.batch(2)
    rows = ds.rows(0)[8:12]
    lengths = [int(ds.lengths[r[0]]) for r in rows]
    assert batch["input_ids"].shape == (4, max(lengths)) and batch["attention_mask"].shape[-1] == max(lengths)
    for b, n in enumerate(lengths):
        assert batch["position_ids"][b, :n].tolist() == list(range(n))
        assert (batch["labels"][b, n:] == IGNORE).all()
        assert not batch["attention_mask"][b, 0, n:, :n].any()  # padding never looks at the example


def test_batches_depend_on_seed_step_and_rank_only(tok: Tokenizer, convs: list[dict]) -> None:
    a = make(convs, tok, 256, 2, seed=1)
    b = make(convs, tok, 256, 2, seed=1)
    c = make(convs, tok, 256, 2, seed=2)
    for step in (0, 3, len(a) + 1):
        x, y = a.batch(step), b.batch(step)
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert not torch.equal(a.batch(0)["input_ids"], c.batch(0)["input_ids"])
    assert not torch.equal(a.batch(len(a))["input_ids"], a.batch(0)["input_ids"])  # a new epoch, a new order


def test_ranks_read_disjoint_examples(tok: Tokenizer, convs: list[dict]) -> None:
    for packing in (True, False):
        ranks = [
            SFTDataset(convs, tok, seq_len=256, batch_size=2, seed=3, rank=r, world_size=2, packing=packing)
            for r in range(2)
        ]
        assert len(ranks[0]) == len(ranks[1])
        for epoch in range(2):
            mine = [set(np.concatenate(ds.rows(epoch)).tolist()) for ds in ranks]
            assert mine[0] and mine[1] and not mine[0] & mine[1]


def test_resume_at_step_k_yields_the_same_batches(tok: Tokenizer, convs: list[dict]) -> None:
    full = make(convs, tok, 256, 2, seed=7)
    it = iter(full)
    reference = [next(it) for _ in range(len(full) + 5)]  # into the second epoch
    k = len(full) - 3
    first = make(convs, tok, 256, 2, seed=7)
    it = iter(first)
    for _ in range(k):
        next(it)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = make(convs, tok, 256, 2, seed=7)
    resumed.load_state_dict(state)
    it = iter(resumed)
    for expected in reference[k:]:
        got = next(it)
        assert all(torch.equal(got[key], expected[key]) for key in expected)
    other = make(convs, tok, 256, 2, seed=7, packing=False)
    with pytest.raises(UserError, match="packing"):
        other.load_state_dict(state)


def test_long_examples_are_truncated_and_counted(tok: Tokenizer) -> None:
    long = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "cat " * 200}]}
    late = {"messages": [{"role": "user", "content": "rain " * 200}, {"role": "assistant", "content": "ok"}]}
    ds = make([long, late, *conversations(8)], tok, 120, 1)  # the 8 are 58-90 tokens long
    assert ds.truncated == 2  # `late` too, before it was found to have nothing left to learn
    assert ds.skipped == {"without_learned_tokens_within_seq_len": 1}
    assert ds.lengths.max() == 120 and len(ds.lengths) == 9
    ids, labels = ds.example(0)
    first = int(np.argmax(labels != IGNORE))
    assert len(ids) == 120 and first < 20 and (labels[first:] != IGNORE).all()  # the rest of the reply
    with pytest.raises(UserError, match=r"no usable examples .*1 without learned tokens"):
        make([late], tok, 120, 1)


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "expected a JSON object"),
        ('{"text": "x"}', "needs 'messages', or 'prompt' and 'completion'"),
        ('{"messages": [{"role": "user", "content": "hi"}]}', "no assistant turn"),
        ('{"messages": [{"role": "tool", "content": "hi"}, {"role": "assistant", "content": "x"}]}',
         "role 'tool'"),
        ('{"messages": [{"role": "user"}]}', "needs 'role' and 'content'"),
        ('{"messages": [{"role": "assistant", "content": 3}]}', "content must be a string"),
        ('{"prompt": "a", "completion": [{"role": "assistant", "content": "b"}]}', "must both be strings"),
        ('{"prompt": [{"role": "user", "content": "a"}], "completion": [{"role": "user", "content": "b"}]}',
         "completion has no assistant turn"),
    ],
)  # fmt: skip
def test_bad_lines_name_file_and_line(tok: Tokenizer, tmp_path: Path, line: str, needle: str) -> None:
    good = json.dumps(conversations(1)[0])
    path = write(tmp_path / "sft.jsonl", [good, "", good, line])
    with pytest.raises(UserError, match=r"sft\.jsonl:4: ") as info:
        make(path, tok, 64, 1)
    assert needle in str(info.value)


def test_reads_jsonl_files_and_refuses_missing_or_empty_ones(tok: Tokenizer, tmp_path: Path) -> None:
    path = write(tmp_path / "ok.jsonl", [json.dumps(c) for c in conversations(6)])
    assert len(make(path, tok, 256, 2).lengths) == 6
    with pytest.raises(UserError, match="not found"):
        make(tmp_path / "nope.jsonl", tok, 64, 1)
    with pytest.raises(UserError, match="no usable examples"):
        make(write(tmp_path / "e.jsonl", [""]), tok, 64)
    with pytest.raises(UserError, match="lower batch_size"):
        make(path, tok, 256, 64)
    with pytest.raises(UserError, match="outside world size"):
        SFTDataset(path, tok, seq_len=256, batch_size=1, seed=0, rank=2, world_size=2)


def test_takes_curated_examples_and_names_their_origin(tok: Tokenizer) -> None:
    good = [Example(c, source="chat", origin=f"chat.jsonl#{i}") for i, c in enumerate(conversations(4))]
    assert len(make(good, tok, 256, 1).lengths) == 4
    bad = Example({"messages": [{"role": "user", "content": "hi"}]}, source="chat", origin="chat.jsonl#9")
    with pytest.raises(UserError, match=r"record 4 \(chat\.jsonl#9\): the conversation has no assistant"):
        make([*good, bad], tok, 256, 1)


def test_a_packed_batch_trains_through_the_sft_objective(tok: Tokenizer, convs: list[dict]) -> None:
    torch.manual_seed(0)
    model = build_model(preset("tiny", vocab_size=tok.vocab_size))
    batch = make(convs, tok, 256).batch(1)
    loss, count = OBJECTIVES["sft"](model, batch)
    assert count == int((batch["labels"] != IGNORE).sum()) > 0 and torch.isfinite(loss)
