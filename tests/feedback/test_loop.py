"""`genloop loop` end to end: simulated users give feedback through a live server's HTTP API
following a hidden preference (short answers); one round trains, gates and promotes a version the
server switches to without failing a request; the new version satisfies the preference more often.
A round whose candidate regresses is not promoted and says why."""

from __future__ import annotations

import json
import random
import shutil
import sys
import threading
from pathlib import Path

import httpx
import pytest

from genloop.serve.store import Store
from tests.serve import live

WORDS = live.WORDS


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def register_tiny(home: Path) -> Path:
    model = live.tiny_model(home / "build")
    target = home / "models" / "tiny"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(model, target)
    return target


def chat(base: str, messages: list[dict], **extra: object) -> dict:
    body = {"model": "tiny", "messages": messages, "max_tokens": 12, **extra}
    reply = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    return reply.json()


def feedback(base: str, **body: object) -> None:
    reply = httpx.post(f"{base}/v1/feedback", json=body, timeout=30)
    assert reply.status_code == 200, reply.text


def words(reply: dict) -> int:
    return len(reply["choices"][0]["message"]["content"].split())


def play_users(base: str, n: int, rng: random.Random) -> None:
    """Each user asks, regenerates and picks the shorter answer, thumbs down long answers, and
    corrects them with a short one (the hidden preference)."""
    for i in range(n):
        prompt = [{"role": "user", "content": sentence(rng, rng.randint(3, 6))}]
        first = chat(base, prompt, temperature=1.0, seed=i)
        second = chat(
            base, prompt, temperature=1.0, seed=1000 + i, conversation_id=first["conversation_id"],
            parent_id=first["parent_id"], regenerate=True,
        )  # fmt: skip
        short, long = sorted((first, second), key=words)
        if words(short) != words(long):
            feedback(base, message_id=short["message_id"], preferred_over=long["message_id"])
        feedback(base, message_id=long["message_id"], rating=-1, correction=sentence(rng, rng.randint(1, 2)))


def short_rate(base: str, prompts: list[str]) -> float:
    """Share of greedy answers that end by themselves within 12 tokens with at most 3 words."""
    hits = 0
    for p in prompts:
        reply = chat(base, [{"role": "user", "content": p}], temperature=0.0, store=False)
        hits += reply["choices"][0]["finish_reason"] == "stop" and words(reply) <= 3
    return hits / len(prompts)


def loop_yaml(tmp: Path, base: str | None, guard: Path, **train: object) -> Path:
    settings = {"method": "dpo", "steps": 30, "learning_rate": 3e-3, "batch_size": 8, "seq_len": 128,
                "dtype": "float32", **train}  # fmt: skip
    gate = {"holdout": 0.2, "min_examples": 8, "guard_data": str(guard), "max_regression": 0.10}
    config = {"model": "tiny", "server": base, "train": settings, "gate": gate}
    path = tmp / "loop.yaml"
    path.write_text(json.dumps(config))
    return path


def guard_text(tmp: Path) -> Path:
    rng = random.Random(7)
    path = tmp / "general.txt"
    path.write_text("\n".join(sentence(rng, 30) for _ in range(40)))
    return path


@pytest.mark.slow
def test_a_round_learns_the_hidden_preference_and_swaps_without_dropping_requests(cli, tmp_path, monkeypatch):
    home = tmp_path / "home"
    register_tiny(home)
    monkeypatch.setenv("GENLOOP_HOME", str(home))
    rng = random.Random(0)
    held_prompts = [sentence(rng, rng.randint(3, 6)) for _ in range(24)]
    with live.live_server("tiny", home, "--dtype", "float32") as base:
        play_users(base, 40, rng)
        before = short_rate(base, held_prompts)
        dry = cli("loop", str(loop_yaml(tmp_path, base, guard_text(tmp_path))), "--dry-run")
        assert dry[0] == 0 and "would train dpo" in dry[1], dry

        failures: list[str] = []
        answered = [0]
        stop = threading.Event()

        def traffic() -> None:
            while not stop.is_set():
                try:
                    body = {"model": "tiny", "messages": [{"role": "user", "content": "cat"}]}
                    body |= {"max_tokens": 4, "store": False}
                    reply = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=120)
                    if reply.status_code != 200:
                        failures.append(f"{reply.status_code} {reply.text[:200]}")
                    answered[0] += 1
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))

        worker = threading.Thread(target=traffic)
        worker.start()
        try:
            code, out, err = cli(
                "loop", str(loop_yaml(tmp_path, base, guard_text(tmp_path))), "--no-progress"
            )
            served = httpx.get(f"{base}/v1/admin/model", timeout=10).json()
        finally:
            stop.set()
            worker.join()
        assert code == 0, err
        assert "promoted tiny-r1" in out, out
        assert served["version"] == "tiny-r1" and served["path"].endswith("tiny-r1")
        assert failures == [] and answered[0] > 5
        after = short_rate(base, held_prompts)
    figure = f"held-out greedy answers of at most 3 words: {before:.0%} before, {after:.0%} after"
    sys.__stderr__.write(figure + "\n")  # the cli fixture captures stdout
    assert after > before, (before, after)
    meta = json.loads((home / "models" / "tiny-r1" / "genloop.json").read_text())
    assert meta["parent"] == "tiny" and meta["round"] == 1
    round_dir = home / "loop" / "tiny" / "round-001"
    report = (round_dir / "report.md").read_text()
    assert "**promoted** as `tiny-r1`" in report and "preference margin" in report
    assert (round_dir / "report.png").stat().st_size > 1000
    # the next round starts from the promoted version and finds no new feedback
    code, out, _ = cli("loop", str(loop_yaml(tmp_path, None, guard_text(tmp_path))))
    assert code == 0 and "not enough new feedback" in out


def seed_store(home: Path, n: int = 40) -> None:
    """Corrections stored directly: short answers preferred to long ones."""
    rng = random.Random(3)
    with Store(f"sqlite:///{home / 'genloop.db'}") as s:
        for _ in range(n):
            c = s.create_conversation(model="tiny")
            q = s.add_message(c, "user", sentence(rng, 4))
            a = s.add_message(c, "assistant", sentence(rng, 12), parent_id=q)
            s.add_feedback(a, rating=-1, correction=sentence(rng, 2))


def test_a_regressing_candidate_is_not_promoted_and_the_report_says_why(cli, tmp_path, monkeypatch):
    home = tmp_path / "home"
    register_tiny(home)
    monkeypatch.setenv("GENLOOP_HOME", str(home))
    seed_store(home)
    config = loop_yaml(tmp_path, None, guard_text(tmp_path), learning_rate=0.5, steps=10)
    code, out, err = cli("loop", str(config), "--no-progress")
    assert code == 0, err
    assert "not promoted: tiny stays" in out
    report = (home / "loop" / "tiny" / "round-001" / "report.md").read_text()
    assert "**not promoted**" in report and "perplexity rose" in report
    assert not (home / "models" / "tiny-r1").exists()
    state = json.loads((home / "loop" / "tiny" / "state.json").read_text())
    assert state["current"] is None and state["rounds"][0]["promoted"] is False


def test_empty_feedback_trains_nothing(cli, tmp_path, monkeypatch):
    home = tmp_path / "home"
    register_tiny(home)
    monkeypatch.setenv("GENLOOP_HOME", str(home))
    Store(f"sqlite:///{home / 'genloop.db'}").close()
    code, out, _ = cli("loop", str(loop_yaml(tmp_path, None, guard_text(tmp_path))))
    assert code == 0 and "not enough new feedback to train" in out
    assert not (home / "loop" / "tiny" / "round-001").exists()


def test_bad_loop_config_is_one_line(cli, tmp_path):
    bad = tmp_path / "loop.yaml"
    bad.write_text("model: tiny\ntrain: {method: ppo}\n")
    code, _, err = cli("loop", str(bad))
    assert code == 2 and "method" in err and len(err.strip().splitlines()) == 1
