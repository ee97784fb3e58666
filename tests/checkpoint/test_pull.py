"""`genloop pull` and the registry commands."""

from __future__ import annotations

import time

from genloop.checkpoint.pull import pull
from tests.helpers import assert_one_line_error


def test_unknown_model_lists_the_known_ones(cli) -> None:
    code, _, err = cli("pull", "llama-70b")
    assert code == 2
    assert_one_line_error(err, "unknown model 'llama-70b'", "smollm2-135m-instruct")


def test_pull_list(cli) -> None:
    code, out, _ = cli("pull", "--list")
    assert code == 0 and "smollm2-135m-instruct" in out and "Apache-2.0" in out


def test_second_pull_is_instant(smollm2, monkeypatch) -> None:
    """The session fixture pulled already; pulling again only checks the registry."""
    monkeypatch.setenv("GENLOOP_HOME", str(smollm2.parents[1]))
    monkeypatch.setenv("GENLOOP_CACHE", str(smollm2.parents[2] / "cache"))
    before = (smollm2 / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    assert pull("smollm2-135m-instruct", progress=False) == smollm2
    assert time.perf_counter() - start < 1.0
    assert (smollm2 / "model.safetensors").stat().st_mtime_ns == before


def test_models_list_show_rm(cli, tmp_path) -> None:
    code, out, _ = cli("models", "list")
    assert code == 0 and "no models" in out
    cli("model", "init", "tiny", tmp_path / "t")
    cli("import", tmp_path / "t", "--name", "mine")
    code, out, _ = cli("models", "list")
    assert code == 0 and "mine" in out and "125K" in out
    code, out, _ = cli("models", "show", "mine")
    assert code == 0 and "llama layout" in out and '"kind": "huggingface"' in out
    code, out, _ = cli("models", "rm", "mine")
    assert code == 0 and "removed" in out
    code, _, err = cli("models", "rm", "mine")
    assert code == 2
    assert_one_line_error(err, "no registered model 'mine'")


def test_chat_with_the_pulled_model(smollm2, cli) -> None:
    """The default dtype (int4 on CPU) answers as fp32 does. Not "What is the capital of France?":
    its first answer token is a near-tie in fp32 ('The' 25.33 vs 'L' 25.24), which int4 weights
    alone flip, and int8 activations further (genloop's AVX2 kernel: 'L'Étoile, la Cité, ...')."""
    code, out, _ = cli("chat", smollm2, "Name the capital city of France.", "--max-tokens", "12")
    assert code == 0
    assert "Paris" in out
