"""The filter_events table: what `record_filter_events` stores and counts, the 0001 -> 0002 upgrade, and
filtered answers in `genloop feedback export` (kto negatives; never good examples anywhere)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from genloop.postprocess import Event
from genloop.serve.filter_events import CLIENT_ID, REQUEST_ID, record_filter_events
from genloop.serve.state import ServerState
from genloop.serve.store import Store, StoreError, alembic_config
from tests.helpers import assert_one_line_error


def U(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def A(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


@pytest.fixture
def state(genloop_home: Path) -> Iterator[ServerState]:
    """A server's state on the default store, without a model (recording needs none)."""
    store = Store()
    yield ServerState(model_name="m", model_path=Path("m"), model_version="1", store=store)
    store.close()


def exchange(store: Store, question: str, answer: str) -> tuple[str, str]:
    c = store.create_conversation(model="m")
    return c, store.add_message(c, "assistant", answer, parent_id=store.add_message(c, "user", question))


def test_events_are_stored_with_their_request_and_counted(state: ServerState) -> None:
    store = state.store
    assert store is not None
    conversation, answer = exchange(store, "hi", "a badword here")
    request, client = REQUEST_ID.set("req_abc"), CLIENT_ID.set("key:0123456789abcdef")
    try:
        ids = record_filter_events(
            state,
            [Event("blocklist", "block", "badword"), Event("pii:email", "redact", "<EMAIL>")],
            direction="output",
            message_id=answer,
        )
        record_filter_events(state, [Event("regex:ssn", "mask", None)], direction="input")
    finally:
        REQUEST_ID.reset(request)
        CLIENT_ID.reset(client)
    assert len(ids) == 2
    events = {e["rule"]: e for e in store.filter_events()}
    assert set(events) == {"blocklist", "pii:email", "regex:ssn"}
    blocked = events["blocklist"]
    assert (blocked["direction"], blocked["action"], blocked["detail"]) == ("output", "block", "badword")
    assert blocked["message_id"] == answer and blocked["conversation_id"] == conversation  # filled in
    assert (blocked["request_id"], blocked["api_key_id"]) == ("req_abc", "key:0123456789abcdef")
    assert events["regex:ssn"]["message_id"] is None and events["regex:ssn"]["detail"] is None
    assert [e["rule"] for e in store.filter_events(direction="input")] == ["regex:ssn"]
    metrics = state.metrics.render().decode()
    assert 'genloop_filter_events_total{action="block",direction="output",rule="blocklist"} 1.0' in metrics
    assert 'genloop_filter_events_total{action="mask",direction="input",rule="regex:ssn"} 1.0' in metrics


def test_bad_ids_and_directions_are_refused(state: ServerState) -> None:
    with pytest.raises(StoreError, match="no message 'nope'"):
        record_filter_events(state, [Event("blocklist", "block", "x")], direction="output", message_id="nope")
    with pytest.raises(StoreError, match="no conversation 'nope'"):
        record_filter_events(
            state, [Event("blocklist", "block", "x")], direction="output", conversation_id="nope"
        )
    with pytest.raises(ValueError, match="direction"):
        record_filter_events(state, [Event("blocklist", "block", "x")], direction="sideways")
    assert state.store is not None and state.store.filter_events() == []
    nothing = ServerState(model_name="m", model_path=Path("m"), model_version="1", store=None)  # --no-store
    assert record_filter_events(nothing, [Event("blocklist", "block", "x")], direction="output") == []
    assert 'rule="blocklist"} 1.0' in nothing.metrics.render().decode()  # still counted


def test_deleting_a_conversation_keeps_its_events_without_the_link(state: ServerState) -> None:
    store = state.store
    assert store is not None
    conversation, answer = exchange(store, "q", "bad")
    record_filter_events(state, [Event("blocklist", "block", "bad")], direction="output", message_id=answer)
    assert store.delete_conversation(conversation)
    [event] = store.filter_events()
    assert (event["rule"], event["message_id"], event["conversation_id"]) == ("blocklist", None, None)


def test_a_0001_database_upgrades_and_keeps_its_rows(tmp_path: Path) -> None:
    from alembic import command

    path = tmp_path / "old.db"
    url = f"sqlite:///{path}"
    command.upgrade(alembic_config(url), "0001")
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [("0001",)]
        db.execute(
            "INSERT INTO conversations (id, model, created_at, updated_at) VALUES "
            "('c1', 'm', '2024-01-01 00:00:00', '2024-01-01 00:00:00')"
        )
    with Store(url) as store:
        assert store.execute("SELECT version_num FROM alembic_version") == [("0002",)]
        assert store.list_conversations()[0]["id"] == "c1"
        store.add_filter_events([{"direction": "input", "rule": "limit:max_messages", "action": "reject"}])
        assert store.filter_events()[0]["rule"] == "limit:max_messages"


@pytest.fixture
def filtered_store(state: ServerState) -> Store:
    """An upvoted answer a filter blocked, a filtered answer nobody rated, an answer only PII-redacted,
    a clean upvoted answer, and a pick of a filtered answer over its sibling."""
    store = state.store
    assert store is not None
    _, upvoted_bad = exchange(store, "q1", "bad one")
    store.add_feedback(upvoted_bad, rating=1)
    _, unrated_bad = exchange(store, "q2", "bad two")
    _, redacted = exchange(store, "q3", "mail <EMAIL>")
    _, good = exchange(store, "q4", "fine")
    store.add_feedback(good, rating=1)
    c, picked_bad = exchange(store, "q5", "bad pick")
    other = store.add_message(c, "assistant", "ok pick", parent_id=store.path_to(picked_bad)[0]["id"])
    store.add_feedback(picked_bad, preferred_over=other)
    for mid, rule, action in [
        (upvoted_bad, "blocklist", "block"),
        (unrated_bad, "moderation", "block"),
        (unrated_bad, "blocklist", "mask"),  # two events on one answer: one row
        (redacted, "pii:email", "redact"),  # redaction fixes an answer, it does not condemn it
        (picked_bad, "regex:slur", "mask"),
    ]:
        record_filter_events(state, [Event(rule, action, None)], direction="output", message_id=mid)
    return store


def test_filtered_answers_are_kto_negatives_and_never_good_examples(filtered_store: Store) -> None:
    s = filtered_store
    assert s.export("kto") == [
        {"prompt": [U("q1")], "completion": [A("bad one")], "label": False},  # the filter beats the upvote
        {"prompt": [U("q4")], "completion": [A("fine")], "label": True},
        {"prompt": [U("q2")], "completion": [A("bad two")], "label": False},
        {"prompt": [U("q5")], "completion": [A("bad pick")], "label": False},
    ]
    assert s.export("kto", include_filtered=False) == [
        {"prompt": [U("q1")], "completion": [A("bad one")], "label": False},
        {"prompt": [U("q4")], "completion": [A("fine")], "label": True},
    ]
    assert s.export("sft") == [{"messages": [U("q4"), A("fine")]}]
    assert s.export("preference") == []  # the picked answer was filtered
    with pytest.raises(StoreError, match="exported as kto rows"):
        s.export("sft", include_filtered=True)
    later = datetime.now(UTC) + timedelta(minutes=1)
    assert s.export("kto", since=later) == []  # the window applies to filter events too


def test_feedback_export_cli_includes_filtered_answers(filtered_store: Store, cli) -> None:  # type: ignore[no-untyped-def]
    code, out, err = cli("feedback", "export", "--format", "kto")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert {"prompt": [U("q2")], "completion": [A("bad two")], "label": False} in rows and len(rows) == 4
    code, out, _ = cli("feedback", "export", "--format", "kto", "--no-include-filtered")
    assert code == 0 and len(out.splitlines()) == 2
    code, _, err = cli("feedback", "export", "--format", "sft", "--include-filtered")
    assert code == 2
    assert_one_line_error(err, "kto")
