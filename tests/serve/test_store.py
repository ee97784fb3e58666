"""The conversation & feedback store on real SQLite files: round trips, validation, WAL, Alembic."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from genloop.serve.store import Store, StoreError, alembic_config


@pytest.fixture
def store(tmp_path: Path):
    s = Store(f"sqlite:///{tmp_path / 'store.db'}")
    yield s
    s.close()


def _thread(store: Store) -> tuple[str, str, str, str]:
    """A conversation with a user turn and two regenerated answers to it."""
    conv = store.create_conversation(model="tiny", user="ana")
    q = store.add_message(conv, "user", "What is the capital of France?")
    a1 = store.add_message(conv, "assistant", "Lyon.", parent_id=q, model="tiny")
    a2 = store.add_message(conv, "assistant", "Paris.", parent_id=q, model="tiny")
    return conv, q, a1, a2


def test_default_store_lives_in_genloop_home(genloop_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENLOOP_HOME", str(genloop_home / "not" / "yet"))
    with Store() as store:
        assert store.url == f"sqlite:///{genloop_home / 'not' / 'yet' / 'genloop.db'}"
        assert (genloop_home / "not" / "yet" / "genloop.db").is_file()


def test_sqlite_runs_durable_wal(store: Store) -> None:
    assert store.execute("PRAGMA journal_mode") == [("wal",)]
    assert store.execute("PRAGMA synchronous") == [(2,)]  # FULL
    assert store.execute("PRAGMA foreign_keys") == [(1,)]
    assert store.execute("PRAGMA busy_timeout")[0][0] >= 1000


def test_round_trip(store: Store) -> None:
    conv = store.create_conversation(model="smollm2", user="ana")
    sys_id = store.add_message(conv, "system", "Be brief.")
    q = store.add_message(
        conv, "user", "  Explain   photosynthesis " + "in great detail " * 6, parent_id=sys_id
    )
    params = {"temperature": 0.7, "top_p": 0.9, "max_tokens": 64, "seed": 1}
    a = store.add_message(
        conv, "assistant", "", parent_id=q, model="smollm2", model_version="abc123", params=params,
        prompt_tokens=12, status="pending",
    )  # fmt: skip
    assert store.last_message_id(conv) == a
    store.finish_message(a, content="Plants make sugar from light.", completion_tokens=7, latency_ms=81.5,
                         finish_reason="stop")  # fmt: skip

    got = store.get_conversation(conv)
    assert got is not None
    assert got["title"].startswith("Explain photosynthesis in great detail") and len(got["title"]) <= 60
    assert got["title"].endswith("…")
    assert [m["id"] for m in got["messages"]] == [sys_id, q, a]
    answer = got["messages"][2]
    assert answer == answer | {
        "parent_id": q, "role": "assistant", "content": "Plants make sugar from light.", "model": "smollm2",
        "model_version": "abc123", "params": params, "prompt_tokens": 12, "completion_tokens": 7,
        "latency_ms": 81.5, "finish_reason": "stop", "status": "complete", "feedback": [],
    }  # fmt: skip
    assert answer["created_at"].endswith("+00:00")

    fb = store.add_feedback(a, rating=-1, reason="too short", comment="say more", correction="Longer answer.")
    [row] = store.get_conversation(conv)["messages"][2]["feedback"]  # type: ignore[index]
    assert row == row | {"id": fb, "rating": -1, "reason": "too short", "comment": "say more",
                         "correction": "Longer answer.", "preferred_over": None}  # fmt: skip

    assert [m["id"] for m in store.path_to(a)] == [sys_id, q, a]
    assert store.path_to(a)[-1]["content"] == "Plants make sugar from light."
    store.set_title(conv, "Photosynthesis")
    assert store.get_conversation(conv)["title"] == "Photosynthesis"  # type: ignore[index]
    assert store.counts() == {"conversations": 1, "messages": 3, "feedback": 1}

    assert store.delete_conversation(conv) is True
    assert store.counts() == {"conversations": 0, "messages": 0, "feedback": 0}  # cascades
    assert store.get_conversation(conv) is None
    assert store.delete_conversation(conv) is False


def test_paths_follow_branches(store: Store) -> None:
    conv, q, a1, a2 = _thread(store)
    q2 = store.add_message(conv, "user", "And of Italy?", parent_id=a2)
    a3 = store.add_message(conv, "assistant", "Rome.", parent_id=q2)
    assert [m["id"] for m in store.path_to(a3)] == [q, a2, q2, a3]  # the Lyon branch is left out
    assert [m["id"] for m in store.path_to(a1)] == [q, a1]
    assert store.last_message_id(conv) == a3
    assert store.last_message_id(store.create_conversation(model="m")) is None
    assert store.get_conversation(conv)["title"] == "What is the capital of France?"  # type: ignore[index]


def test_preference_and_feedback_kinds(store: Store) -> None:
    _, _, a1, a2 = _thread(store)
    store.add_feedback(a2, preferred_over=a1)
    store.add_feedback(a1, rating=-1)
    store.add_feedback(a2, rating=1)
    store.add_feedback(a2, comment="nice")
    store.add_feedback(a1, correction="Paris")
    assert store.feedback_stats() == {
        "rating": {"+1": 1, "-1": 1, "none": 3},
        "kind": {"upvote": 1, "downvote": 1, "correction": 1, "preference": 1, "comment": 1},
    }
    recent = store.recent_feedback(2)
    assert [r["kind"] for r in recent] == ["correction", "comment"]
    assert recent[0]["answer"] == "Lyon."


@pytest.mark.parametrize(
    ("which", "kwargs", "needle", "status"),
    [
        ("unknown", {"rating": 1}, "no message", 404),
        ("user", {"rating": 1}, "assistant answers", 422),
        ("a1", {"rating": 0}, "rating must be 1", 422),
        ("a1", {"rating": 2}, "rating must be 1", 422),
        ("a1", {"rating": True}, "rating must be 1", 422),
        ("a1", {}, "needs a rating", 422),
        ("a1", {"correction": "  "}, "correction cannot be empty", 422),
        ("a1", {"preferred_over": "self"}, "not a sibling", 422),
        ("a1", {"preferred_over": "user"}, "not a sibling", 422),
        ("a1", {"preferred_over": "cousin"}, "not a sibling", 422),
        ("a1", {"preferred_over": "f" * 32}, "not a sibling", 422),
    ],
)
def test_feedback_validation(store: Store, which: str, kwargs: dict, needle: str, status: int) -> None:
    conv, q, a1, _ = _thread(store)
    q2 = store.add_message(conv, "user", "Again?", parent_id=a1)
    cousin = store.add_message(conv, "assistant", "Paris!", parent_id=q2)  # answers a different turn
    ids = {"unknown": "0" * 32, "user": q, "a1": a1, "self": a1, "cousin": cousin}
    if "preferred_over" in kwargs:
        kwargs = {"preferred_over": ids.get(kwargs["preferred_over"], kwargs["preferred_over"])}
    with pytest.raises(StoreError, match=needle) as err:
        store.add_feedback(ids[which], **kwargs)
    assert err.value.http_status == status
    assert err.value.exit_code == 2
    assert store.counts()["feedback"] == 0


def test_message_validation(store: Store) -> None:
    conv, q, _, _ = _thread(store)
    other = store.create_conversation(model="tiny")
    with pytest.raises(StoreError, match="no conversation"):
        store.add_message("nope", "user", "hi")
    with pytest.raises(StoreError, match="unknown role 'robot'"):
        store.add_message(conv, "robot", "hi")
    with pytest.raises(StoreError, match="unknown status 'done'"):
        store.add_message(conv, "assistant", "hi", status="done")
    with pytest.raises(StoreError, match="not in conversation"):
        store.add_message(other, "assistant", "hi", parent_id=q)
    with pytest.raises(StoreError, match="no message"):
        store.finish_message("nope", content="x")
    with pytest.raises(StoreError, match="no message"):
        store.path_to("nope")
    with pytest.raises(StoreError, match="no conversation"):
        store.set_title("nope", "t")
    with pytest.raises(StoreError, match="model"):
        store.create_conversation(model="")


def test_list_newest_activity_first(store: Store) -> None:
    first = store.create_conversation(model="m", title="first", user="ana")
    second = store.create_conversation(model="m", title="second", user="bo")
    third = store.create_conversation(model="m", title="third", user="ana")
    assert [c["id"] for c in store.list_conversations()] == [third, second, first]
    store.add_message(first, "user", "back to you")  # activity moves it to the top
    listed = store.list_conversations()
    assert [c["id"] for c in listed] == [first, third, second]
    assert listed[0] == listed[0] | {"title": "first", "model": "m", "message_count": 1}
    assert set(listed[0]) >= {"id", "title", "model", "created_at", "updated_at", "message_count"}
    assert [c["id"] for c in store.list_conversations(limit=1, offset=1)] == [third]
    assert [c["id"] for c in store.list_conversations(user="ana")] == [first, third]
    assert store.list_conversations(user="nobody") == []


def test_concurrent_writers_wait_instead_of_failing(store: Store) -> None:
    conv = store.create_conversation(model="m")
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for i in range(15):
                mid = store.add_message(conv, "assistant", f"answer {i}", status="pending")
                store.finish_message(mid, content=f"answer {i} done")
                store.add_feedback(mid, rating=1)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.counts() == {"conversations": 1, "messages": 90, "feedback": 90}


def test_fresh_database_gets_schema_through_alembic(tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from genloop.serve.store_models import Base

    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    with Store(url) as store:
        assert store.execute("SELECT version_num FROM alembic_version") == [(head,)]
        with store._reader.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
            )
        assert diff == [], diff
    with Store(url) as again:  # a second open is a no-op upgrade
        assert again.execute("SELECT count(*) FROM alembic_version") == [(1,)]


def test_database_from_a_newer_genloop_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "newer.db"
    Store(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(StoreError, match="schema this genloop does not know"):
        Store(f"sqlite:///{path}")


def test_bad_url_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="bad database URL"):
        Store("not a url")
