"""Input limits: per-key token buckets (exact under 32 concurrent clients), 429 + Retry-After, request
size (413), conversation length (400), the serve YAML config, and the limit events in the store and
at /metrics."""

from __future__ import annotations

import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from genloop.errors import ConfigError
from genloop.serve.config import LimitsConfig, load_serve_config
from genloop.serve.limits import Limiter, key_id
from tests.helpers import assert_one_line_error, run_genloop
from tests.serve.live import live_server

KEYS = {"burst": "sk-burst-1", "other": "sk-other-2", "misc": "sk-misc-3"}
RPM, TPM = 20, 4000
LIMITS = {
    "requests_per_minute": RPM,
    "tokens_per_minute": TPM,
    "max_request_bytes": 8192,
    "max_messages": 4,
    "max_prompt_tokens": 500,
}


def chat(**changes: Any) -> dict[str, Any]:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "the cat"}], "max_tokens": 1}
    return {**body, **changes}


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A real server from a YAML config (flags for the rest); yields its URL and its SQLite file."""
    home = tmp_path_factory.mktemp("serve-limits")
    config = home / "serve.yaml"
    db = home / "store.db"
    config.write_text(
        yaml.safe_dump(
            {"name": "tiny", "api_keys": list(KEYS.values()), "db": str(db), "limits": LIMITS, "port": 1}
        )
    )
    args = ("--config", str(config), "--dtype", "float32", "--max-seq-len", "4096")
    with live_server(tiny_model_dir, home, *args) as url:  # live_server's --port overrides the file's
        yield url, db


def burst(url: str, key: str, requests: int, clients: int = 32) -> tuple[list[httpx.Response], float]:
    """`requests` chat requests from `clients` threads released together; the responses and the time."""
    local = threading.local()
    start = threading.Barrier(clients, timeout=30)

    def one(i: int) -> httpx.Response:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, headers=auth(key), timeout=60)
            start.wait()
        return local.client.post("/v1/chat/completions", json=chat())

    t0 = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        out = list(pool.map(one, range(requests)))
    return out, time.monotonic() - t0


def test_requests_per_minute_holds_under_32_concurrent_clients(server: tuple[str, Path]) -> None:
    url, db = server
    responses, seconds = burst(url, "burst", 64)
    ok = [r for r in responses if r.status_code == 200]
    limited = [r for r in responses if r.status_code == 429]
    refill = int(seconds * RPM / 60)  # the bucket refills one request every 3 s
    print(
        f"\nrpm={RPM}: {len(ok)} of 64 requests from 32 clients got 200 in {seconds:.2f} s",
        file=sys.__stderr__,
    )
    assert len(ok) + len(limited) == 64, {r.status_code for r in responses}
    assert RPM <= len(ok) <= RPM + refill, (len(ok), seconds)
    for r in limited:
        assert 1 <= int(r.headers["retry-after"]) <= 60 // RPM
        error = r.json()["error"]
        assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
        assert "20 requests per minute" in error["message"]
    # a second key has its own budget, untouched by the first key's burst
    again, seconds = burst(url, "other", 32)
    assert RPM <= sum(r.status_code == 200 for r in again) <= RPM + int(seconds * RPM / 60)
    # each 429 is one row in the store, under the key's hash (never the key), with its request id
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT api_key_id, request_id, direction, action FROM filter_events "
            "WHERE rule = 'limit:requests_per_minute'"
        ).fetchall()
        dump = "\n".join(str(row) for row in conn.execute("SELECT * FROM filter_events"))
    assert {r.headers["x-request-id"] for r in limited} <= {row[1] for row in rows}
    by_key = {k: sum(row[0] == key_id(v) for row in rows) for k, v in KEYS.items()}
    assert by_key["burst"] == len(limited) and by_key["other"] == 32 - sum(
        r.status_code == 200 for r in again
    )
    assert {(row[2], row[3]) for row in rows} == {("input", "reject")}
    assert not any(key in dump for key in KEYS.values())
    metrics = httpx.get(f"{url}/metrics").text
    assert f'genloop_rate_limited_total{{limit="requests_per_minute"}} {float(len(rows))}' in metrics
    assert (
        'genloop_filter_events_total{action="reject",direction="input",rule="limit:requests_per_minute"} '
        f"{float(len(rows))}" in metrics
    )


def test_tokens_per_minute_charges_prompt_plus_max_tokens(server: tuple[str, Path]) -> None:
    url, _ = server
    with httpx.Client(base_url=url, headers=auth("misc"), timeout=60) as http:
        # stop at the tiny model's first newline: the answer is short, the charge is still max_tokens
        first = http.post("/v1/chat/completions", json=chat(max_tokens=2500, temperature=0, stop=["\n"]))
        assert first.status_code == 200, first.text
        second = http.post("/v1/chat/completions", json=chat(max_tokens=2500, temperature=0, stop=["\n"]))
        assert second.status_code == 429
        assert second.json()["error"]["code"] == "rate_limit_exceeded"
        assert "tokens per minute" in second.json()["error"]["message"]
        # about (2500 + prompt - 1500 left) / (4000 / 60 per second) = 15-16 s until it fits
        assert 10 <= int(second.headers["retry-after"]) <= 20
        never = http.post(
            "/v1/completions", json={"model": "tiny", "prompt": "the", "max_tokens": 3900, "n": 2}
        )
        assert never.status_code == 400 and never.json()["error"]["code"] == "request_too_large"
        small = http.post("/v1/chat/completions", json=chat())  # a small request still fits
        assert small.status_code == 200, small.text
    metrics = httpx.get(f"{url}/metrics").text
    assert 'genloop_rate_limited_total{limit="tokens_per_minute"} 2.0' in metrics


def test_conversation_and_size_limits(server: tuple[str, Path]) -> None:
    url, db = server
    with httpx.Client(base_url=url, headers=auth("misc"), timeout=60) as http:
        turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": "the cat"} for i in range(5)]
        r = http.post("/v1/chat/completions", json=chat(messages=turns))
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "messages"
        assert r.json()["error"]["code"] == "context_length_exceeded" and "at most 4" in r.text
        long = [{"role": "user", "content": "the cat sat on a mat " * 120}]
        r = http.post("/v1/chat/completions", json=chat(messages=long))
        assert r.status_code == 400 and "at most 500" in r.json()["error"]["message"]
        assert r.json()["error"]["code"] == "context_length_exceeded"
        big = b'{"model": "tiny", "x": "' + b"a" * 9000 + b'"}'
        r = http.post("/v1/chat/completions", content=big, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        chunked = http.post(  # no Content-Length: counted as it arrives
            "/v1/chat/completions",
            content=iter([big[:4000], big[4000:]]),
            headers={"Content-Type": "application/json"},
        )
        assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "request_too_large"
        assert http.post("/v1/chat/completions", json=chat()).status_code == 200  # and it goes on
    with sqlite3.connect(db) as conn:
        rules = dict(conn.execute("SELECT rule, count(*) FROM filter_events GROUP BY rule").fetchall())
    assert rules["limit:max_messages"] == 1 and rules["limit:max_prompt_tokens"] == 1
    assert rules["limit:max_request_bytes"] == 2


def test_limiter_is_exact_under_threads_and_refills() -> None:
    """64 threads entering at once take exactly the bucket; a clock moved by hand shows the refill."""
    now = [0.0]
    lim = Limiter(LimitsConfig(requests_per_minute=20, max_concurrent=50), clock=lambda: now[0])
    start = threading.Barrier(64)
    results: list[Any] = []

    def one() -> None:
        start.wait()
        results.append(lim.enter("a"))

    threads = [threading.Thread(target=one) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    refused = [r for r in results if r is not None]
    assert len(refused) == 44 and {r.limit for r in refused} == {"requests_per_minute"}
    assert {r.retry_after_s for r in refused} == {3}
    now[0] = 2.9
    assert lim.enter("a") is not None
    now[0] = 3.0
    assert lim.enter("a") is None  # one request every 3 s
    assert lim.enter("b") is None  # another client starts full


def test_limiter_concurrency_slots_come_back() -> None:
    lim = Limiter(LimitsConfig(max_concurrent=2))
    assert lim.enter("a") is None and lim.enter("a") is None
    refusal = lim.enter("a")
    assert refusal is not None and refusal.limit == "max_concurrent" and refusal.retry_after_s == 1
    assert lim.enter("b") is None
    lim.leave("a")
    assert lim.enter("a") is None


def test_limiter_forgets_idle_clients() -> None:
    now = [0.0]
    lim = Limiter(LimitsConfig(requests_per_minute=1), clock=lambda: now[0])
    assert lim.enter("a") is None
    lim.leave("a")
    now[0] = 200.0
    assert lim.enter("b") is None
    assert set(lim._clients) == {"b"}
    assert lim.enter("a") is None  # a forgotten client comes back with a full bucket, as it would have


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text("port: 9000\napi_keys: [a, b]\nlimits:\n  requests_per_minute: 5\n  max_messages: 3\n")
    cfg = load_serve_config(path, {"port": 9100, "limits": {"max_request_bytes": 2048}})
    assert (cfg.port, cfg.api_keys) == (9100, ["a", "b"])
    assert (cfg.limits.requests_per_minute, cfg.limits.max_messages) == (5, 3)
    assert cfg.limits.max_request_bytes == 2048
    assert load_serve_config(None).limits == LimitsConfig()  # defaults: unlimited rates, 1 MiB bodies
    assert LimitsConfig().max_request_bytes == 1024 * 1024
    with pytest.raises(ConfigError, match="did you mean 'requests_per_minute'"):
        path.write_text("limits:\n  request_per_minute: 5\n")
        load_serve_config(path)
    with pytest.raises(ConfigError, match="--port 70000"):
        load_serve_config(None, {"port": 70000})


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("limits:\n  request_per_minute: 5\n", ("limits.request_per_minute", "requests_per_minute")),
        ("limits:\n  max_concurrent: -1\n", ("limits.max_concurrent",)),
        ("port: [8000\n", ("cannot parse YAML",)),
        ("postprocess: 5\n", ("postprocess",)),
    ],
)
def test_bad_config_is_one_line_exit_2(tmp_path: Path, text: str, needles: tuple[str, ...]) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text(text)
    done = run_genloop("serve", "some-model", "--config", path)
    assert done.returncode == 2
    assert_one_line_error(done.stderr, str(path), *needles)
