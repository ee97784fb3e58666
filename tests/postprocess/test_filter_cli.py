"""`genloop filter check`."""

from __future__ import annotations

import pytest


def test_check_shows_rules_and_text(cli, tmp_path) -> None:
    code, out, _ = cli("filter", "check", "hi  there<|im_end|>, mail a.b@example.com")
    assert code == 0
    assert "format:strip_special\tformat\t<|im_end|>" in out and "pii:email\tredact\t<EMAIL>" in out
    assert out.rstrip().endswith("hi there, mail <EMAIL>") and "a.b@example.com" not in out
    config = tmp_path / "serve.yaml"
    config.write_text(
        "model: x\npostprocess:\n  filter:\n    blocklist: [darn]\n    blocklist_action: block\n"
    )
    code, out, _ = cli("filter", "check", "oh d4rn", "--config", str(config))
    assert code == 0 and "blocklist\tblock\tdarn" in out and "blocked: yes" in out
    code, out, _ = cli("filter", "check", "my  key AKIAIOSFODNN7EXAMPLE", "--input")
    assert code == 0 and out.rstrip().endswith("my  key <SECRET>")


def test_bad_config_is_one_line_exit_2(cli, tmp_path) -> None:
    config = tmp_path / "serve.yaml"
    config.write_text("postprocess:\n  filter:\n    pii: [emails]\n")
    code, _, err = cli("filter", "check", "x", "--config", str(config))
    assert code == 2 and "unknown PII kind" in err and len(err.strip().splitlines()) == 1


def test_help_explains_every_flag(cli, capsys) -> None:
    with pytest.raises(SystemExit):
        cli("filter", "check", "--help")
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--config SERVE.yaml", "--input", "--truncated", "'-' reads it from standard input"):
        assert flag in text
