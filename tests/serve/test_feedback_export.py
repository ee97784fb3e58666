"""Feedback to TRL-format JSONL: exact rows per format, --since, the CLI, and loading with `datasets`."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from genloop.cli.feedback_cmd import parse_since
from genloop.errors import UserError
from genloop.home import db_path
from genloop.serve.store import Store
from tests.helpers import assert_one_line_error, run_genloop


def U(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def A(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


SFT = [
    {"messages": [U("What is 2+2?"), A("4")]},
    {"messages": [{"role": "system", "content": "Be brief."}, U("Capital of France?"), A("Paris")]},
]
PREFERENCE = [
    {"prompt": [{"role": "system", "content": "Be brief."}, U("Capital of France?")],
     "chosen": [A("Paris")], "rejected": [A("Lyon")]},
    {"prompt": [U("Tell a joke")], "chosen": [A("joke two")], "rejected": [A("joke one")]},
]  # fmt: skip
KTO = [
    {"prompt": [U("What is 2+2?")], "completion": [A("4")], "label": True},
    {"prompt": [{"role": "system", "content": "Be brief."}, U("Capital of France?")],
     "completion": [A("Lyon")], "label": False},
    {"prompt": [U("Hi"), A("Hello!"), U("Name a color")], "completion": [A("Blue")], "label": False},
]  # fmt: skip


@pytest.fixture
def feedback_db(genloop_home: Path) -> Path:
    """The default store with one of each: upvote, downvote + correction, regenerate-and-pick, downvote
    deep in a thread, plus rows that must not export (an unrated answer, an upvoted cut-off answer)."""
    with Store() as s:
        c = s.create_conversation(model="tiny")
        s.add_feedback(s.add_message(c, "assistant", "4", parent_id=s.add_message(c, "user", "What is 2+2?")),
                       rating=1)  # fmt: skip

        c = s.create_conversation(model="tiny")
        q = s.add_message(c, "user", "Capital of France?", parent_id=s.add_message(c, "system", "Be brief."))
        s.add_feedback(s.add_message(c, "assistant", "Lyon", parent_id=q), rating=-1, reason="wrong",
                       correction="Paris")  # fmt: skip

        c = s.create_conversation(model="tiny")
        q = s.add_message(c, "user", "Tell a joke")
        one = s.add_message(c, "assistant", "joke one", parent_id=q)
        two = s.add_message(c, "assistant", "joke two", parent_id=q)
        s.add_feedback(two, preferred_over=one)

        c = s.create_conversation(model="tiny")
        a = s.add_message(c, "assistant", "Hello!", parent_id=s.add_message(c, "user", "Hi"))
        q = s.add_message(c, "user", "Name a color", parent_id=a)
        s.add_feedback(s.add_message(c, "assistant", "Blue", parent_id=q), rating=-1)
        s.add_message(c, "assistant", "Red", parent_id=q)  # no feedback: exported nowhere
        cut = s.add_message(c, "assistant", "Gre", parent_id=q, status="cancelled")
        s.add_feedback(cut, rating=1)  # a cut-off answer is no good example
    return db_path()


@pytest.mark.parametrize(("kind", "expected"), [("sft", SFT), ("preference", PREFERENCE), ("kto", KTO)])
def test_export_rows(feedback_db: Path, kind: str, expected: list[dict]) -> None:
    with Store() as s:
        assert s.export(kind) == expected


def test_latest_feedback_on_an_answer_wins(tmp_path: Path) -> None:
    with Store(f"sqlite:///{tmp_path / 's.db'}") as s:
        c = s.create_conversation(model="m")
        q = s.add_message(c, "user", "q")
        a = s.add_message(c, "assistant", "ok", parent_id=q)
        s.add_feedback(a, rating=1)
        s.add_feedback(a, rating=1)  # a double click
        assert s.export("kto") == [{"prompt": [U("q")], "completion": [A("ok")], "label": True}]
        s.add_feedback(a, rating=-1)  # changed their mind
        b = s.add_message(c, "assistant", "better", parent_id=q)
        s.add_feedback(b, preferred_over=a)
        s.add_feedback(a, correction="better")  # the same pair twice: one row
        assert s.export("preference") == [
            {"prompt": [U("q")], "chosen": [A("better")], "rejected": [A("ok")]}
        ]
        assert s.export("kto") == [{"prompt": [U("q")], "completion": [A("ok")], "label": False}]
        assert s.export("sft") == [{"messages": [U("q"), A("better")]}]


def _age_feedback(path: Path, answer: str, when: datetime) -> None:
    """Backdate the feedback on one answer (the store itself only ever writes 'now')."""
    stamp = when.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
    with sqlite3.connect(path) as db:
        db.execute(
            "UPDATE feedback SET created_at = ? WHERE message_id IN "
            "(SELECT id FROM messages WHERE content = ?)",
            (stamp, answer),
        )


def test_since_filters_on_when_feedback_was_given(feedback_db: Path, cli) -> None:
    _age_feedback(feedback_db, "4", datetime(2024, 3, 1, 12, tzinfo=UTC))
    with Store() as s:
        assert s.export("sft", since=datetime(2024, 1, 1)) == SFT
        assert s.export("sft", since=datetime(2024, 3, 2)) == SFT[1:]
        assert s.export("kto", since=datetime.now(UTC) - timedelta(days=7)) == KTO[1:]
    code, out, err = cli("feedback", "export", "--format", "sft", "--since", "7d")
    assert code == 0, err
    assert [json.loads(line) for line in out.splitlines()] == SFT[1:]
    assert "wrote 1 sft example since " in err
    code, out, _ = cli("feedback", "export", "--format", "sft", "--since", "2024-02-29T00:00:00Z")
    assert [json.loads(line) for line in out.splitlines()] == SFT


def test_parse_since() -> None:
    now = datetime(2025, 6, 10, 12, tzinfo=UTC)
    assert parse_since("24h", now) == now - timedelta(hours=24)
    assert parse_since("7d", now) == now - timedelta(days=7)
    assert parse_since("30m", now) == now - timedelta(minutes=30)
    assert parse_since("2w", now) == now - timedelta(weeks=2)
    assert parse_since("2025-06-01", now) == datetime(2025, 6, 1, tzinfo=UTC)
    assert parse_since("2025-06-01T08:30:00+02:00", now) == datetime(2025, 6, 1, 6, 30, tzinfo=UTC)
    for bad in ("yesterday", "7", "-1d", "2025-13-01", "9999999999d"):
        with pytest.raises(UserError, match="ISO-8601"):
            parse_since(bad, now)


def test_cli_export_to_file_and_stdout(feedback_db: Path, cli, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "pref.jsonl"
    code, stdout, err = cli("feedback", "export", "--format", "preference", "--out", out)
    assert code == 0, err
    assert stdout == ""
    assert err.strip() == f"wrote 2 preference examples to {out}"
    assert [json.loads(line) for line in out.read_text().splitlines()] == PREFERENCE
    assert [p.name for p in out.parent.iterdir()] == ["pref.jsonl"]  # no temporary file left behind

    code, stdout, err = cli("feedback", "export", "--format", "kto", "--db", feedback_db)
    assert code == 0, err
    assert [json.loads(line) for line in stdout.splitlines()] == KTO
    assert err.strip() == "wrote 3 kto examples to stdout"


def test_cli_list_and_stats(feedback_db: Path, cli) -> None:
    code, out, err = cli("feedback", "stats")
    assert code == 0, err
    assert "4 conversations, 14 messages, 5 feedback" in out
    assert "by rating: +1 2, -1 2, none 1" in out
    assert "by kind:   upvote 2, downvote 1, correction 1, preference 1, comment 0" in out
    code, out, err = cli("feedback", "list", "--limit", "2")
    assert code == 0, err
    assert "KIND" in out and "upvote" in out and "Gre" in out and "Blue" in out
    assert "joke" not in out  # older than the two newest rows


def test_cli_bad_input_is_one_line(feedback_db: Path, cli, tmp_path: Path, capsys) -> None:
    code, _, err = cli("feedback", "export", "--format", "sft", "--since", "last tuesday")
    assert code == 2
    assert_one_line_error(err, "--since", "'last tuesday'", "24h", "2024-05-01")
    with pytest.raises(SystemExit) as exit_:  # argparse's own usage error, turned into one line
        cli("feedback", "export", "--format", "dpo")
    assert exit_.value.code == 2
    assert_one_line_error(capsys.readouterr().err, "--format", "'dpo'", "preference")
    code, _, err = cli("feedback", "export", "--format", "sft", "--db", tmp_path / "missing.db")
    assert code == 2
    assert_one_line_error(err, "no feedback store", "missing.db", "--db")
    assert not (tmp_path / "missing.db").exists()  # a read command never creates a database
    code, _, err = cli("feedback", "list", "--limit", "0")
    assert code == 2
    assert_one_line_error(err, "--limit")


def test_cli_without_a_store_says_how_to_get_one(cli) -> None:
    code, _, err = cli("feedback", "stats")
    assert code == 2
    assert_one_line_error(err, "no feedback store", "genloop serve")
    assert not db_path().exists()


def test_real_subprocess(feedback_db: Path, tmp_path: Path) -> None:
    out = tmp_path / "sft.jsonl"
    proc = run_genloop(
        "feedback", "export", "--format", "sft", "--out", out, "--db", f"sqlite:///{feedback_db}"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == f"wrote 2 sft examples to {out}"
    assert [json.loads(line) for line in out.read_text().splitlines()] == SFT
    bad = run_genloop("feedback", "export", "--format", "sft", "--since", "soon")
    assert bad.returncode == 2
    assert_one_line_error(bad.stderr, "--since")


def test_exports_load_with_datasets_in_trl_columns(feedback_db: Path, cli, tmp_path: Path) -> None:
    import datasets

    columns = {"sft": ["messages"], "preference": ["prompt", "chosen", "rejected"],
               "kto": ["prompt", "completion", "label"]}  # fmt: skip
    expected = {"sft": SFT, "preference": PREFERENCE, "kto": KTO}
    for kind, cols in columns.items():
        path = tmp_path / f"{kind}.jsonl"
        assert cli("feedback", "export", "--format", kind, "--out", path)[0] == 0
        ds = datasets.load_dataset(
            "json", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf")
        )
        assert ds.column_names == cols
        assert ds.to_list() == expected[kind]
        for col in cols:
            if col != "label":  # conversational form: lists of {"role", "content"} turns
                assert all(set(turn) == {"role", "content"} for row in ds[col] for turn in row)
    assert ds.features["label"].dtype == "bool"
