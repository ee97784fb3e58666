"""PackedDataset: windows come from the token stream, order depends only on the seed, ranks are
disjoint (also under real torchrun), and resuming at step k gives exactly the batches from step k."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from genloop.data.loader import PackedDataset
from genloop.errors import UserError
from tests.data.shardkit import write_stream

T, B = 16, 4


@pytest.fixture
def stream_dir(tmp_path: Path) -> Path:
    # token i of the stream is i: a window is identified by its first token, and crossing a shard
    # boundary (shards of 1,000 tokens) shows as a gap or repeat if the reader gets it wrong
    return write_stream(tmp_path / "shards", np.arange(10_007, dtype=np.uint32), tokens_per_shard=1000)


def starts(ds: PackedDataset, steps: range) -> list[int]:
    out = []
    for step in steps:
        x, _ = ds.batch(step)
        out += x[:, 0].tolist()
    return out


def test_windows_are_contiguous_slices_of_the_stream(stream_dir: Path) -> None:
    ds = PackedDataset(stream_dir, seq_len=T, batch_size=B, seed=3, rank=0, world_size=1)
    assert ds.windows == (10_007 - 1) // T
    for step in range(len(ds)):
        x, y = ds.batch(step)
        assert x.shape == y.shape == (B, T) and x.dtype == torch.int64
        expected = x[:, :1] + torch.arange(T)
        assert torch.equal(x, expected) and torch.equal(y, expected + 1)
        assert bool((x[:, 0] % T == 0).all())
    seen = starts(ds, range(len(ds)))
    assert len(set(seen)) == len(seen) == len(ds) * B  # one epoch: no window twice


def test_order_depends_on_seed_and_epoch_only(stream_dir: Path) -> None:
    a = PackedDataset(stream_dir, seq_len=T, batch_size=B, seed=1, rank=0, world_size=1)
    b = PackedDataset(stream_dir, seq_len=T, batch_size=B, seed=1, rank=0, world_size=1)
    c = PackedDataset(stream_dir, seq_len=T, batch_size=B, seed=2, rank=0, world_size=1)
    assert starts(a, range(5)) == starts(b, range(5)) != starts(c, range(5))
    n = len(a)
    assert starts(a, range(n, n + 5)) != starts(a, range(5))  # a new epoch is a new permutation


def test_resume_at_step_k_yields_the_same_batches(stream_dir: Path) -> None:
    full = PackedDataset(stream_dir, seq_len=T, batch_size=B, seed=7, rank=0, world_size=1)
    it = iter(full)
    reference = [next(it) for _ in range(200)]  # crosses into the second epoch (156 steps each)
    assert len(full) < 200
    k = 123
    first = PackedDataset(stream_dir, seq_len=T, batch_size=B, seed=7, rank=0, world_size=1)
    it = iter(first)
    for _ in range(k):
        next(it)
    state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint would store it
    resumed = PackedDataset(stream_dir, seq_len=T, batch_size=B, seed=7, rank=0, world_size=1)
    resumed.load_state_dict(state)
    it = iter(resumed)
    for expected in reference[k:]:
        x, y = next(it)
        assert torch.equal(x, expected[0]) and torch.equal(y, expected[1])


def test_resume_with_other_settings_is_refused(stream_dir: Path) -> None:
    ds = PackedDataset(stream_dir, seq_len=T, batch_size=B, seed=7, rank=0, world_size=1)
    with pytest.raises(UserError, match="batch_size"):
        PackedDataset(stream_dir, seq_len=T, batch_size=B * 2, seed=7, rank=0, world_size=1).load_state_dict(
            ds.state_dict()
        )


def test_two_ranks_are_disjoint_and_cover_the_epoch(stream_dir: Path) -> None:
    ranks = [PackedDataset(stream_dir, seq_len=T, batch_size=B, seed=5, rank=r, world_size=2) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1])
    seen = [set(starts(ds, range(len(ds)))) for ds in ranks]
    assert not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == 2 * len(ranks[0]) * B


def test_too_small_split_is_a_clear_error(tmp_path: Path) -> None:
    folder = write_stream(tmp_path / "tiny", np.arange(40, dtype=np.uint32), tokens_per_shard=1000)
    with pytest.raises(UserError, match="too few for one batch"):
        PackedDataset(folder, seq_len=T, batch_size=B, rank=0, world_size=1)
    with pytest.raises(UserError, match="no split 'validation'"):
        PackedDataset(folder, split="validation", seq_len=2, batch_size=1, rank=0, world_size=1)


RANK_SCRIPT = """
import json, sys, torch.distributed as dist
from genloop.data.loader import PackedDataset
dist.init_process_group("gloo")
ds = PackedDataset(sys.argv[1], seq_len=16, batch_size=4, seed=11)
seen = [int(v) for s in range(len(ds)) for v in ds.batch(s)[0][:, 0]]
with open(f"{sys.argv[2]}/rank{dist.get_rank()}.json", "w") as fh:
    json.dump({"rank": ds.rank, "world": ds.world_size, "seen": seen}, fh)
dist.destroy_process_group()
"""


def test_torchrun_ranks_see_disjoint_data(stream_dir: Path, tmp_path: Path) -> None:
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    proc = subprocess.run(
        [*cmd, str(script), str(stream_dir), str(tmp_path)], capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world"]) for r in runs] == [(0, 2), (1, 2)]
    a, b = (set(r["seen"]) for r in runs)
    assert a and b and not a & b
    solo = PackedDataset(stream_dir, seq_len=16, batch_size=4, seed=11, rank=1, world_size=2)
    assert runs[1]["seen"] == starts(solo, range(len(solo)))
