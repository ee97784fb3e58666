"""`genloop tokenizer train|encode|decode`, in-process and once through the real entry point."""

from __future__ import annotations

import io
import random
import subprocess
import sys
from pathlib import Path

import pytest

from genloop.cli import main

TEXT = "héllo wörld 😀 東京 <|im_end|>"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    (root / "docs").mkdir()
    rng = random.Random(0)
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 8))) for _ in range(300)]
    lines = (" ".join(rng.choices(words, k=10)) for _ in range(600))
    (root / "notes.txt").write_text("\n".join(lines), encoding="utf-8")
    (root / "docs" / "guide.md").write_text("# Guide\nheadings and lists\n- item\n" * 200, encoding="utf-8")
    (root / "photo.txt").write_bytes(b"\xff\xd8\xff\x00binary")
    return root


@pytest.fixture(scope="module")
def trained(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    assert main(["tokenizer", "train", str(corpus), "--out", str(out), "--vocab-size", "320"]) == 0
    return out


def _one_line_error(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("genloop: error: ")
    return lines[0]


def test_train_prints_a_summary_and_writes_hf_files(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tok"
    code = main(
        ["tokenizer", "train", str(corpus), "--out", str(out), "min_frequency=3", "--vocab-size", "300"]
    )
    assert code == 0
    stdout = capsys.readouterr().out
    assert "300 tokens" in stdout and "MB/s" in stdout and str(out) in stdout
    assert "skipped 1 binary" in stdout and "photo.txt" in stdout
    assert {p.name for p in out.iterdir()} >= {"tokenizer.json", "tokenizer_config.json"}


def test_train_reads_settings_from_yaml(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "tok.yaml"
    config.write_text("vocab_size: 310\nadd_bos_token: true\n", encoding="utf-8")
    out = tmp_path / "tok"
    assert (
        main(["tokenizer", "train", str(corpus / "notes.txt"), "--out", str(out), "--config", str(config)])
        == 0
    )
    assert "310 tokens" in capsys.readouterr().out
    assert main(["tokenizer", "encode", str(out), "hi", "--ids-only"]) == 0
    assert capsys.readouterr().out.split()[0] == "0"  # BOS first


def test_encode_decode_round_trip(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tokenizer", "encode", str(trained), TEXT]) == 0
    ids_line, tokens_line = capsys.readouterr().out.splitlines()
    ids = ids_line.split()
    assert all(i.isdigit() for i in ids)
    assert tokens_line.startswith(f"{len(ids)} tokens: [") and '"<|im_end|>"' in tokens_line
    assert main(["tokenizer", "decode", str(trained / "tokenizer.json"), *ids]) == 0
    assert capsys.readouterr().out == TEXT + "\n"
    assert main(["tokenizer", "decode", str(trained), ",".join(ids)]) == 0  # "1,2,3" works too
    assert capsys.readouterr().out == TEXT + "\n"


def test_encode_reads_stdin(
    trained: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("from stdin\n"))
    assert main(["tokenizer", "encode", str(trained), "-", "--ids-only"]) == 0
    ids = capsys.readouterr().out.split()
    assert main(["tokenizer", "decode", str(trained), *ids]) == 0
    assert capsys.readouterr().out == "from stdin\n\n"


def test_missing_input_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no_such_corpus"
    assert main(["tokenizer", "train", str(missing), "--out", str(tmp_path / "o")]) == 2
    assert str(missing) in _one_line_error(capsys.readouterr().err)


def test_no_readable_text_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "blob.txt").write_bytes(b"\x00\x01\x02")
    assert main(["tokenizer", "train", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no readable text" in _one_line_error(capsys.readouterr().err)


def test_missing_or_corrupt_tokenizer_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tokenizer", "encode", str(tmp_path), "hi"]) == 2
    assert str(tmp_path / "tokenizer.json") in _one_line_error(capsys.readouterr().err)
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": {', encoding="utf-8")
    assert main(["tokenizer", "encode", str(tmp_path), "hi"]) == 2
    assert str(tmp_path / "tokenizer.json") in _one_line_error(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("ids", "fragment"), [(["12", "abc"], "'abc' is not an integer"), (["99999"], "out of range")]
)
def test_bad_ids_are_user_errors(
    trained: Path, capsys: pytest.CaptureFixture[str], ids: list[str], fragment: str
) -> None:
    assert main(["tokenizer", "decode", str(trained), *ids]) == 2
    assert fragment in _one_line_error(capsys.readouterr().err)


def test_bad_override_is_one_line(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tokenizer", "train", str(corpus), "--out", str(tmp_path), "vocab_sise=500"]) == 2
    assert "did you mean 'vocab_size'" in _one_line_error(capsys.readouterr().err)


def test_real_entry_point(trained: Path, tmp_path: Path) -> None:
    run = [sys.executable, "-m", "genloop", "tokenizer"]
    ok = subprocess.run(
        [*run, "encode", str(trained), TEXT, "--ids-only"], capture_output=True, text=True, timeout=60
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.split() and all(i.isdigit() for i in ok.stdout.split())
    missing = tmp_path / "missing_dir"
    bad = subprocess.run(
        [*run, "train", str(missing), "--out", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2
    assert str(missing) in _one_line_error(bad.stderr)
