"""`genloop data ...` from the command line: bad input is one line and exit code 2 with nothing
written; inspect, sft and preference work on real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.data.corpuskit import Prose

GOOD_SOURCE = "sources:\n  - path: corpus\n"
TOKENIZER = "tokenizer:\n  train: {vocab_size: 300}\n"


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    prose = Prose(start=100)
    for i in range(8):
        (corpus / f"d{i}.txt").write_text(prose.take(150))
    return tmp_path


BAD_CONFIGS = {
    "missing path": ("sources:\n  - path: no/such/folder\n", "path not found"),
    "unknown recipe": ("sources:\n  - recipe: shakespear\n", "unknown recipe 'shakespear'"),
    "unknown filter": (GOOD_SOURCE + "filters: {lenght: {}}\n", "unknown filter 'lenght'"),
    "bad filter option": (GOOD_SOURCE + "filters: {length: {min_chars: many}}\n", "min_chars"),
    "unknown source filter": (
        "sources:\n  - path: corpus\n    filters: {languag: false}\n",
        "unknown filter 'languag'",
    ),
    "unknown step": (
        GOOD_SOURCE + "normalize: [nfkc, lowercaze]\n",
        "unknown normalization step 'lowercaze'",
    ),
    "unknown key": (GOOD_SOURCE + "dedupe: {}\n", "unknown key 'dedupe'"),
    "path and recipe": ("sources:\n  - {path: corpus, recipe: shakespeare}\n", "exactly one of"),
    "no sources": ("sources: []\n", "sources"),
    "unknown pii": (GOOD_SOURCE + "pii: [email, passport]\n", "unknown PII kind 'passport'"),
    "text-less recipe": ("sources:\n  - recipe: debian-summaries\n", "gives training examples"),
    "missing tokenizer model": (GOOD_SOURCE + "tokenizer: {model: no-such-model}\n", "genloop pull"),
    "bad threshold": (GOOD_SOURCE + "dedup: {threshold: 1.5}\n", "threshold"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_is_one_line_and_writes_nothing(case: str, corpus_dir: Path, cli) -> None:
    body, expected = BAD_CONFIGS[case]
    config = corpus_dir / "bad.yaml"
    config.write_text(body + "output: out\n")
    code, _, err = cli("data", "build", config, "--no-progress")
    assert code == 2, err
    assert expected in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (corpus_dir / "out").exists() or not any((corpus_dir / "out").iterdir())


def test_unwritable_output_is_one_line(corpus_dir: Path, cli) -> None:
    (corpus_dir / "a_file").write_text("not a folder")
    config = corpus_dir / "b.yaml"
    config.write_text(GOOD_SOURCE + TOKENIZER + "output: a_file/out\n")
    code, _, err = cli("data", "build", config, "--no-progress")
    assert code == 2 and "is not writable" in err and err.count("\n") == 1
    assert (corpus_dir / "a_file").read_text() == "not a folder"


def test_missing_config_and_bad_workers(corpus_dir: Path, cli) -> None:
    code, _, err = cli("data", "build", corpus_dir / "nope.yaml")
    assert code == 2 and "config file not found" in err
    (corpus_dir / "ok.yaml").write_text(GOOD_SOURCE + TOKENIZER)
    code, _, err = cli("data", "build", corpus_dir / "ok.yaml", "--workers", "0")
    assert code == 2 and "--workers" in err


def test_build_then_inspect(corpus_dir: Path, cli) -> None:
    config = corpus_dir / "ok.yaml"
    config.write_text(GOOD_SOURCE + TOKENIZER + "output: shards\nvalidation: 0.2\n")
    code, out, err = cli("data", "build", config, "--no-progress", "--workers", "1")
    assert code == 0, err
    assert "built" in out and "train" in out
    code, out, err = cli("data", "build", config, "--no-progress")
    assert code == 0 and out.startswith("up to date")
    code, out, err = cli("data", "inspect", corpus_dir / "shards", "--samples", "2")
    assert code == 0, err
    assert "train" in out and "source corpus" in out and out.count("--- sample") == 2
    assert (corpus_dir / "shards" / "inspect.png").read_bytes()[:4] == b"\x89PNG"
    code, _, err = cli("data", "inspect", corpus_dir)
    assert code == 2 and "manifest.json" in err


def test_sft_and_preference_from_files(tmp_path: Path, cli) -> None:
    qa = tmp_path / "qa.jsonl"
    rows = [{"question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(5)]
    qa.write_text("\n".join(json.dumps(r) for r in [*rows, rows[0]]) + "\n{broken\n" + '{"question": 1}\n')
    out = tmp_path / "sft.jsonl"
    code, stdout, err = cli(
        "data",
        "sft",
        "--file",
        qa,
        "--prompt-field",
        "question",
        "--completion-field",
        "answer",
        "--out",
        out,
    )
    assert code == 0, err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 5
    assert records[1] == {
        "messages": [{"role": "user", "content": "What is 1 + 1?"}, {"role": "assistant", "content": "2"}]
    }
    assert "duplicate" in stdout and "not JSON" in stdout and "not a valid record" in stdout

    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text(
        json.dumps({"q": "Say hi", "good": "Hi!", "bad": "No."})
        + "\n"
        + json.dumps({"q": "Same", "good": "x", "bad": "x"})
        + "\n"
    )
    out = tmp_path / "pref_out.jsonl"
    code, stdout, err = cli(
        "data", "preference", "--file", prefs, "--prompt-field", "q", "--chosen-field", "good",
        "--rejected-field", "bad", "--out", out,
    )  # fmt: skip
    assert code == 0, err
    assert [json.loads(x) for x in out.read_text().splitlines()] == [
        {"prompt": "Say hi", "chosen": "Hi!", "rejected": "No."}
    ]


def test_examples_bad_input(tmp_path: Path, cli) -> None:
    out = tmp_path / "o.jsonl"
    code, _, err = cli("data", "sft", "--out", out)
    assert code == 2 and "--recipe" in err
    code, _, err = cli("data", "sft", "--file", tmp_path / "missing.jsonl", "--out", out)
    assert code == 2 and "not found" in err
    junk = tmp_path / "junk.jsonl"
    junk.write_text("nothing here\n")
    code, _, err = cli("data", "sft", "--file", junk, "--out", out)
    assert code == 2 and "no valid sft records" in err and not out.exists()
    code, _, err = cli("data", "sft", "--recipe", "no-such-recipe", "--out", out)
    assert code == 2 and "unknown recipe" in err
    code, _, err = cli("data", "sft", "--recipe", "shakespeare", "--out", out)
    assert code == 2 and "gives text" in err


def test_sft_and_preference_from_recipes(tmp_path: Path, cli, recipe_cache: Path) -> None:
    out = tmp_path / "sft.jsonl"
    code, stdout, err = cli(
        "data", "sft", "--recipe", "chitchat:limit=20", "--recipe", "ddtp-translations:language=fr,limit=10",
        "--out", out,
    )  # fmt: skip
    assert code == 0, err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 30 and "chitchat 20" in stdout
    for r in records:
        roles = [m["role"] for m in r["messages"]]
        assert roles[-1] == "assistant" and set(roles) <= {"system", "user", "assistant"}
    out = tmp_path / "prefs.jsonl"
    recipe = "debian-summaries:limit=50"
    code, _, err = cli("data", "preference", "--recipe", recipe, "--out", out, "--seed", "1")
    assert code == 0, err
    prefs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(prefs) >= 40
    assert all(p["chosen"] != p["rejected"] and p["prompt"] for p in prefs)


def test_build_with_a_models_tokenizer(corpus_dir: Path, cli) -> None:
    first = corpus_dir / "first.yaml"
    first.write_text(GOOD_SOURCE + TOKENIZER + "output: first\n")
    assert cli("data", "build", first, "--no-progress", "--workers", "1")[0] == 0
    reuse = corpus_dir / "reuse.yaml"
    reuse.write_text(GOOD_SOURCE + "tokenizer: {model: first/tokenizer}\noutput: second\n")
    code, _, err = cli("data", "build", reuse, "--no-progress", "--workers", "1")
    assert code == 0, err
    a = json.loads((corpus_dir / "first" / "manifest.json").read_text())
    b = json.loads((corpus_dir / "second" / "manifest.json").read_text())
    assert a["tokenizer"]["sha256"] == b["tokenizer"]["sha256"]
    assert a["splits"]["train"]["tokens"] == b["splits"]["train"]["tokens"]
