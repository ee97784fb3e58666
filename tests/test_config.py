"""Configs: YAML + key=value overrides; every mistake is one line naming the key, type or path, exit 2."""

from __future__ import annotations

import pytest

from genloop.config import RunConfig, load_config, parse_overrides
from genloop.errors import ConfigError
from tests.helpers import assert_one_line_error, run_genloop

GOOD = """
preset: tiny
model:
  n_layers: 4
train:
  learning_rate: 1.0e-3
  batch_size: 8
"""


def test_yaml_then_overrides(tmp_path) -> None:
    f = tmp_path / "run.yaml"
    f.write_text(GOOD)
    cfg = load_config(
        RunConfig, f, ["train.batch_size=32", "model.norm=layernorm", "train.betas=[0.9, 0.99]"]
    )
    assert cfg.model.n_layers == 4
    assert cfg.train.learning_rate == 1e-3
    assert cfg.train.batch_size == 32
    assert cfg.model.norm == "layernorm"
    assert cfg.train.betas == (0.9, 0.99)


def test_preset_fills_the_model_and_model_keys_win(tmp_path) -> None:
    from genloop.model import preset

    f = tmp_path / "run.yaml"
    f.write_text(GOOD)
    cfg = load_config(RunConfig, f)
    assert cfg.model == preset("tiny", n_layers=4)
    cfg = load_config(RunConfig, f, ["preset=gpt2-124m"])
    assert cfg.model == preset("gpt2-124m", n_layers=4)


def test_override_parsing() -> None:
    assert parse_overrides(["a.b=1", "a.c=x", "d=true"]) == {"a": {"b": 1, "c": "x"}, "d": True}
    with pytest.raises(ConfigError, match="not key=value"):
        parse_overrides(["oops"])


@pytest.mark.parametrize(
    ("yaml_text", "overrides", "needles"),
    [
        (
            "train:\n  learnig_rate: 0.1\n",
            [],
            ["unknown key 'train.learnig_rate'", "did you mean 'learning_rate'"],
        ),
        ("trian: {}\n", [], ["unknown key 'trian'", "did you mean 'train'"]),
        ("", ["model.n_layrs=3"], ["unknown key 'model.n_layrs'", "did you mean 'n_layers'"]),
        ("train:\n  batch_size: lots\n", [], ["'train.batch_size' expects an integer", "'lots'"]),
        ("train:\n  learning_rate: fast\n", [], ["'train.learning_rate' expects a number", "'fast'"]),
        ("", ["train.compile=maybe"], ["'train.compile' must be 'auto', True or False"]),
        ("model:\n  norm: batchnorm\n", [], ["'model.norm' must be 'rmsnorm' or 'layernorm'", "'batchnorm'"]),
        ("model:\n  d_model: 100\n  n_heads: 3\n", [], ["d_model (100) must be divisible by n_heads (3)"]),
        ("train:\n  batch_size: -1\n", [], ["'train.batch_size'", "greater than 0"]),
        ("train: [1, 2\n", [], ["cannot parse YAML at line"]),
        ("preset: smollm2\n", [], ["unknown preset 'smollm2'", "did you mean 'smollm2-135m'"]),
        ("- a\n- b\n", [], ["top level must be a mapping"]),
    ],
)
def test_config_errors_are_one_line_exit_2(tmp_path, cli, yaml_text, overrides, needles) -> None:
    f = tmp_path / "run.yaml"
    f.write_text(yaml_text)
    code, out, err = cli("config", "check", f, *overrides)
    assert code == 2
    assert_one_line_error(err, *needles)
    assert out == ""


def test_missing_config_file_names_the_path(tmp_path, cli) -> None:
    missing = tmp_path / "nope.yaml"
    code, _, err = cli("config", "check", missing)
    assert code == 2
    assert_one_line_error(err, "config file not found", str(missing))


def test_config_error_through_the_real_command(tmp_path) -> None:
    f = tmp_path / "run.yaml"
    f.write_text("train:\n  warmup: 10\n")
    r = run_genloop("config", "check", f)
    assert r.returncode == 2
    assert_one_line_error(r.stderr, "unknown key 'train.warmup'", "did you mean 'warmup_steps'")


def test_config_check_prints_resolved_yaml(tmp_path, cli) -> None:
    f = tmp_path / "run.yaml"
    f.write_text(GOOD)
    code, out, _ = cli("config", "check", f, "train.max_steps=7")
    assert code == 0
    again = tmp_path / "resolved.yaml"
    again.write_text(out)
    assert load_config(RunConfig, again) == load_config(RunConfig, f, ["train.max_steps=7"])
