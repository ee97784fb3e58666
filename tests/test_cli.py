"""The `genloop` command surface: version, help on every sub-command, model info/init/check."""

from __future__ import annotations

import argparse
import json

import pytest
import transformers

from genloop import __version__
from genloop.checkpoint import load_model
from genloop.cli import build_parser
from tests.helpers import assert_one_line_error, run_genloop


def test_version_and_help() -> None:
    r = run_genloop("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"genloop {__version__}"
    r = run_genloop("--help")
    assert r.returncode == 0
    for command in ("model", "tokenizer", "config"):
        assert command in r.stdout


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _walk(child, (*path, name))


def test_every_flag_and_argument_has_help() -> None:
    commands = list(_walk(build_parser()))
    assert len(commands) > 8
    for path, parser in commands:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"genloop {' '.join(path)}: {action.dest} has no help"


@pytest.mark.parametrize("args", [["model", "info"], ["tokenizer", "train"], ["config", "check"]])
def test_help_prints_and_exits_0(args) -> None:
    r = run_genloop(*args, "--help")
    assert r.returncode == 0 and "usage: genloop" in r.stdout


def test_model_info_preset(cli) -> None:
    code, out, _ = cli("model", "info", "gpt2-124m")
    assert code == 0
    assert "124,439,808" in out
    assert "12 query / 12 key-value" in out
    assert "fp32" in out and "bf16" in out


def test_model_init_then_info_check_and_transformers(cli, tmp_path) -> None:
    code, out, _ = cli("model", "init", "tiny", tmp_path / "m", "n_layers=3", "--seed", "5")
    assert code == 0 and "wrote" in out
    code, out, _ = cli("model", "info", tmp_path / "m")
    assert code == 0 and "layers       3" in out
    code, out, _ = cli("model", "check", tmp_path / "m")
    assert code == 0 and out.startswith("ok:")
    meta = json.loads((tmp_path / "m" / "genloop.json").read_text())
    assert meta["seed"] == 5 and meta["preset"] == "tiny"
    assert transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m").config.num_hidden_layers == 3
    a = load_model(tmp_path / "m").state_dict()
    cli("model", "init", "tiny", tmp_path / "m2", "n_layers=3", "--seed", "5")
    b = load_model(tmp_path / "m2").state_dict()
    assert all((a[k] == b[k]).all() for k in a)  # same seed, same weights


def test_model_commands_accept_registry_names(cli, genloop_home) -> None:
    cli("model", "init", "tiny", genloop_home / "models" / "mine")
    code, out, _ = cli("model", "info", "mine")
    assert code == 0 and str(genloop_home / "models" / "mine") in out


def test_unknown_model_lists_presets(cli) -> None:
    code, _, err = cli("model", "info", "gtp2")
    assert code == 2
    assert_one_line_error(err, "model 'gtp2' not found", "gpt2-124m")


def test_bad_override_on_model_init(cli, tmp_path) -> None:
    code, _, err = cli("model", "init", "tiny", tmp_path / "m", "n_head=3")
    assert code == 2
    assert_one_line_error(err, "unknown key 'n_head'", "did you mean 'n_heads'")
    assert not (tmp_path / "m").exists()
