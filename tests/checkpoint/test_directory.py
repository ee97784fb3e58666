"""The model directory: atomic writes, exact round trips, and bad checkpoints named precisely."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from genloop.checkpoint import load_model, read_config, resolve, save_model
from genloop.errors import CheckpointError
from genloop.model import build_model, preset
from tests.helpers import assert_one_line_error, run_genloop


@pytest.mark.parametrize("name", ["tiny", "tiny-gpt2", "tiny-seq2seq", "tiny-encoder"])
def test_round_trip_is_exact(name: str, tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model(preset(name)).eval()
    save_model(model, tmp_path / "m")
    back = load_model(tmp_path / "m")
    assert back.config == model.config
    for (k, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    if name in ("tiny", "tiny-gpt2"):
        assert back.lm_head.weight is back.embed.tokens.weight  # still tied after loading


def test_bfloat16_round_trip_keeps_dtype(tmp_path) -> None:
    model = build_model(preset("tiny")).to(torch.bfloat16)
    save_model(model, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["dtype"] == "bfloat16"
    assert load_model(tmp_path / "m").dtype == torch.bfloat16


def test_save_is_atomic_when_interrupted(tmp_path, monkeypatch) -> None:
    """A crash mid-write leaves the previous directory intact and no temporary folder behind."""
    model = build_model(preset("tiny"))
    save_model(model, tmp_path / "m")
    before = (tmp_path / "m" / "model.safetensors").read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr("genloop.checkpoint.directory.save_file", boom)
    with pytest.raises(RuntimeError):
        save_model(build_model(preset("tiny", n_layers=3)), tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def _saved(tmp_path):
    save_model(build_model(preset("tiny")), tmp_path / "m")
    return tmp_path / "m"


def test_wrong_shape_names_the_tensor(tmp_path) -> None:
    d = _saved(tmp_path)
    state = load_file(d / "model.safetensors")
    state["model.layers.1.mlp.up_proj.weight"] = torch.zeros(3, 64)
    save_file(state, d / "model.safetensors")
    with pytest.raises(
        CheckpointError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*shape \[3, 64\].*\[176, 64\]"
    ):
        load_model(d)


def test_missing_unexpected_and_integer_tensors_are_named(tmp_path) -> None:
    d = _saved(tmp_path)
    state = load_file(d / "model.safetensors")
    del state["model.norm.weight"]
    save_file(state, d / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"'model\.norm\.weight' is missing"):
        load_model(d)
    state["model.norm.weight"] = torch.ones(64)
    state["model.extra.weight"] = torch.ones(2)
    save_file(state, d / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'model\.extra\.weight'"):
        load_model(d)
    del state["model.extra.weight"]
    state["model.norm.weight"] = torch.ones(64, dtype=torch.int32)
    save_file(state, d / "model.safetensors")
    with pytest.raises(CheckpointError, match="dtype int32"):
        load_model(d)


def test_corrupt_weights_and_config(tmp_path) -> None:
    d = _saved(tmp_path)
    (d / "model.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json is not valid JSON"):
        read_config(d)
    (d / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    with pytest.raises(CheckpointError, match="model_type 'mamba' is not supported"):
        read_config(d)


def test_registry_names_resolve_and_unknown_lists_known(genloop_home, tmp_path) -> None:
    save_model(build_model(preset("tiny")), genloop_home / "models" / "mine")
    assert resolve("mine") == genloop_home / "models" / "mine"
    with pytest.raises(CheckpointError, match="registered models: mine"):
        resolve("other")


def test_cli_reports_wrong_shape_in_one_line(tmp_path) -> None:
    d = _saved(tmp_path)
    state = load_file(d / "model.safetensors")
    state["model.embed_tokens.weight"] = torch.zeros(10, 64)
    save_file(state, d / "model.safetensors")
    # `model info` reads only config.json; loading weights is what `model check` does
    r = run_genloop("model", "check", d)
    assert r.returncode == 2
    assert_one_line_error(r.stderr, "model.embed_tokens.weight", "shape [10, 64]")
