"""`genloop data build` on a folder of junk: duplicates gone, PII replaced, junk skipped and counted,
nothing crashes, and a second run resumes (or only checks) instead of redoing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import genloop.data.build as build_module
from genloop.data.build import build
from genloop.data.curate import Curator
from genloop.data.shards import Shards
from genloop.preprocess.tokenizer import Tokenizer
from tests.data.corpuskit import PII, Prose, make_junk_folder

CONFIG = """
sources:
  - path: corpus
    name: notes
validation: 0.1
tokenizer:
  train: {vocab_size: 400}
tokens_per_shard: 20000
"""


@pytest.fixture(scope="module")
def junk_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("junk")
    make_junk_folder(root / "corpus")
    (root / "build.yaml").write_text(CONFIG + "output: out\n")
    return root


def documents(folder: Path) -> list[str]:
    """Every document in every split, decoded from the shards."""
    shards = Shards.open(folder)
    tokenizer = Tokenizer.load(folder / "tokenizer")
    out = []
    for split in shards.splits():
        ids = np.concatenate(shards.arrays(split))  # documents run across shard boundaries
        ends = np.flatnonzero(ids == shards.eos_token_id)
        starts = np.concatenate([[0], ends[:-1] + 1])
        out += [tokenizer.decode(ids[s:e].tolist()) for s, e in zip(starts, ends, strict=True)]
    return out


def shard_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.glob("*.bin")):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def built(junk_root: Path) -> tuple[Path, dict]:
    result = build(junk_root / "build.yaml", workers=1, progress=False)
    assert not result.up_to_date
    return result.output, result.manifest


def test_junk_is_skipped_and_counted(built: tuple[Path, dict]) -> None:
    _, manifest = built
    stages = manifest["sources"][0]["stages"]
    assert stages["read:binary"] == 1
    assert stages["read:invalid_utf8"] == 1
    assert stages["read:empty"] == 1
    assert stages["read:too_large"] == 1  # the 50 MB line, never read into memory
    assert stages["read:unreadable"] == 2  # the two symlinks pointing at each other
    assert stages["read:bad_json"] == 1
    assert stages["exact_duplicate"] == 2  # the copy and the shouting copy of doc 3
    assert stages["near_duplicate"] == 1  # one word in 500 changed


def test_duplicates_are_gone_and_pii_replaced(built: tuple[Path, dict]) -> None:
    folder, manifest = built
    docs = documents(folder)
    assert sum("Document number 3." in d for d in docs) == 1
    assert sum("Document number 3.".upper() in d for d in docs) == 0
    opening = " ".join((folder.parent / "corpus" / "near" / "original.txt").read_text().split())[:80]
    assert sum(opening in d for d in docs) == 1  # of the original and its one-word edit, one is left
    text = "\n".join(docs)
    for value in PII.values():
        assert value not in text
    for placeholder in ("<EMAIL>", "<PHONE>", "<IP_ADDRESS>", "<CREDIT_CARD>", "<IBAN>", "<SECRET>"):
        assert placeholder in text
    assert "4111 1111 1111 1112" in text  # fails Luhn: not a card number, left alone
    stages = manifest["sources"][0]["stages"]
    assert stages["pii:email"] == 1 and stages["pii:credit_card"] == 1
    assert any("Travel notes" in d and "Cookie policy" not in d for d in docs)  # boilerplate removed
    assert all(len(d) > 0 for d in docs)


def test_manifest_report_and_plot(built: tuple[Path, dict]) -> None:
    folder, manifest = built
    train, val = manifest["splits"]["train"], manifest["splits"]["validation"]
    assert train["tokens"] > 10_000 and val["documents"] >= 1
    assert len(train["shards"]) >= 2  # 20,000 tokens per shard
    for shard in train["shards"]:
        data = (folder / shard["file"]).read_bytes()
        assert len(data) == shard["tokens"] * 2 and hashlib.sha256(data).hexdigest() == shard["sha256"]
    assert manifest["dtype"] == "uint16"
    report = (folder / "report.md").read_text()
    assert "| notes |" in report and "too_large" in report and "near_duplicate" in report
    assert (folder / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(folder.glob(".*.tmp"))


def test_second_run_only_checks(built: tuple[Path, dict], junk_root: Path) -> None:
    folder, manifest = built
    before = shard_digest(folder)
    again = build(junk_root / "build.yaml", workers=1, progress=False)
    assert again.up_to_date and again.seconds < 5
    assert again.manifest == manifest and shard_digest(folder) == before


def test_interrupted_build_resumes_where_it_stopped(
    junk_root: Path, built: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    reference, _ = built
    monkeypatch.setattr(build_module, "PART_DOCS", 4)
    monkeypatch.setattr(build_module, "BATCH_DOCS", 2)
    original_reader = build_module.Source.reader

    def interrupted(self: build_module.Source):  # Ctrl-C after 12 documents
        docs, skipped = original_reader(self)

        def gen():
            for n, doc in enumerate(docs):
                if n == 12:
                    raise KeyboardInterrupt
                yield doc

        return gen(), skipped

    config = junk_root / "build.yaml"
    overrides = ["output=resumed"]
    monkeypatch.setattr(build_module.Source, "reader", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build(config, overrides, workers=1, progress=False)
    state = json.loads((junk_root / "resumed" / ".work" / "state.json").read_text())
    assert (
        state["sources"]["notes"]["consumed"] >= 8 and not (junk_root / "resumed" / "manifest.json").exists()
    )

    monkeypatch.setattr(build_module.Source, "reader", original_reader)
    calls = []
    original_call = Curator.__call__
    monkeypatch.setattr(Curator, "__call__", lambda self, *a: calls.append(1) or original_call(self, *a))
    result = build(config, overrides, workers=1, progress=False)
    total = result.manifest["sources"][0]["stages"]["documents"]
    assert len(calls) == total - state["sources"]["notes"]["consumed"]  # the rest, not everything again
    assert shard_digest(result.output) == shard_digest(reference)  # same shards as without the crash


def test_two_workers_give_the_same_shards(junk_root: Path, built: tuple[Path, dict]) -> None:
    reference, _ = built
    result = build(junk_root / "build.yaml", ["output=two_workers"], workers=2, progress=False)
    assert shard_digest(result.output) == shard_digest(reference)


def test_changed_inputs_rebuild(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    prose = Prose(start=150)
    for i in range(6):
        (corpus / f"d{i}.txt").write_text(prose.take(200))
    (tmp_path / "b.yaml").write_text(CONFIG + "output: out\n")
    first = build(tmp_path / "b.yaml", workers=1, progress=False)
    (corpus / "d6.txt").write_text(prose.take(200))
    second = build(tmp_path / "b.yaml", workers=1, progress=False)
    assert not second.up_to_date
    assert (
        second.manifest["sources"][0]["stages"]["documents"]
        == first.manifest["sources"][0]["stages"]["documents"] + 1
    )
