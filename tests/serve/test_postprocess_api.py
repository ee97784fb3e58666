"""The postprocess pipeline behind the HTTP API of a real server: a blocked answer ends with the
refusal and finish_reason content_filter (streamed or not, never leaking the blocked text), prompts
are screened when the config asks for it, and every event reaches the store, /metrics and the export."""

from __future__ import annotations

import json
import sqlite3

import httpx
import pytest

from tests.serve.live import live_server, tiny_model

CONFIG = """
postprocess:
  filter:
    regex:
      - {name: repeat, pattern: "tatat", action: block}
      - {name: blank, pattern: "\\n{4}", action: block}
    blocklist: [forbidden]
    refusal: "Sorry, I can't answer that."
    inputs: true
"""
BODY = {"model": "tiny-chat", "max_tokens": 30, "temperature": 0}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("post")
    model = tiny_model(root)
    (root / "serve.yaml").write_text(CONFIG)
    home = root / "home"
    home.mkdir()
    with live_server(model, home, "--config", str(root / "serve.yaml"), "--dtype", "float32") as base:
        yield base, home


def test_a_blocked_answer_ends_with_the_refusal(server) -> None:
    base, _ = server
    reply = httpx.post(f"{base}/v1/completions", json={**BODY, "prompt": "the cat"}, timeout=60).json()
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "content_filter"
    assert choice["text"].endswith("Sorry, I can't answer that.") and "tatat" not in choice["text"]


def test_a_blocked_stream_never_sends_the_blocked_text(server) -> None:
    base, _ = server
    body = {**BODY, "messages": [{"role": "user", "content": "the cat"}], "stream": True}
    text, reasons = "", []
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                choice = json.loads(line[6:])["choices"][0]
                text += choice["delta"].get("content") or ""
                reasons.append(choice["finish_reason"])
    assert "\n\n\n\n" not in text and text.endswith("Sorry, I can't answer that.")  # (a tiny model's chat)
    assert reasons[-1] == "content_filter"


def test_prompts_are_screened(server) -> None:
    base, _ = server
    body = {**BODY, "messages": [{"role": "user", "content": "say something f0rb1dden"}]}
    response = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "content_filter" and "blocklist" in error["message"]


def test_events_reach_the_store_metrics_and_the_export(server) -> None:
    base, home = server
    body = {**BODY, "messages": [{"role": "user", "content": "the cat"}]}
    assert httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60).status_code == 200
    with sqlite3.connect(home / "genloop.db") as db:
        rows = db.execute("SELECT direction, rule, action FROM filter_events").fetchall()
        stored = db.execute(
            "SELECT content FROM messages WHERE role = 'assistant' AND finish_reason = 'content_filter'"
        ).fetchall()
    assert ("output", "regex:blank", "block") in rows and ("input", "blocklist", "mask") in rows
    assert stored and all("Sorry" not in content for (content,) in stored)  # what the model wrote
    metrics = httpx.get(f"{base}/metrics", timeout=10).text
    assert 'genloop_filter_events_total{action="block",direction="output",rule="regex:blank"}' in metrics
