"""Load on a live `genloop serve`: concurrent streaming chat clients over real HTTP on 127.0.0.1.

    .venv/bin/python benchmarks/bench_serve.py                  # both parts below
    .venv/bin/python benchmarks/bench_serve.py --part load --duration 120 --clients 32
    .venv/bin/python benchmarks/bench_serve.py --part throughput --levels 1,8,32

load: a tiny random model, N clients streaming new conversations back to back for D seconds; every
stream must end with [DONE], every conversation and message must be in the store afterwards; prints
errors, requests, p50/p99 request latency and time to first token.
throughput: SmolLM2-135M-Instruct (int4, the CPU default) at 1, 8 and 32 clients; aggregate tok/s.
Writes benchmarks/results/serve.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests.serve.live import WORDS, live_server, tiny_model  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "serve.json"


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def _client(
    base: str, model: str, until: float, max_tokens: int, out: dict[str, Any], seed: int
) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=base, timeout=300) as http:
        while time.perf_counter() < until:
            body = {
                "model": model,
                "stream": True,
                "max_tokens": max_tokens,
                "temperature": 0.8,
                "messages": [{"role": "user", "content": " ".join(rng.choices(WORDS, k=8))}],
                "stream_options": {"include_usage": True},
            }
            start = time.perf_counter()
            first, done, conv, tokens = None, False, None, 0
            try:
                async with http.stream("POST", "/v1/chat/completions", json=body) as r:
                    if r.status_code != 200:
                        out["errors"].append(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
                        continue
                    async for line in r.aiter_lines():
                        if not line.startswith("data: "):
                            continue
                        if line == "data: [DONE]":
                            done = True
                            break
                        chunk = json.loads(line[6:])
                        conv = chunk.get("conversation_id", conv)
                        if chunk["choices"] and chunk["choices"][0]["delta"].get("content") and first is None:
                            first = time.perf_counter() - start
                        if chunk.get("usage"):
                            tokens = chunk["usage"]["completion_tokens"]
            except httpx.HTTPError as exc:
                out["errors"].append(f"{type(exc).__name__}: {exc}")
                continue
            if not done:
                out["errors"].append("stream ended without [DONE]")
                continue
            out["latency"].append(time.perf_counter() - start)
            if first is not None:
                out["ttft"].append(first)
            out["tokens"] += tokens
            out["conversations"].append(conv)


async def drive(base: str, model: str, clients: int, duration: float, max_tokens: int) -> dict[str, Any]:
    out: dict[str, Any] = {"errors": [], "latency": [], "ttft": [], "tokens": 0, "conversations": []}
    until = time.perf_counter() + duration
    start = time.perf_counter()
    await asyncio.gather(*(_client(base, model, until, max_tokens, out, i) for i in range(clients)))
    out["wall_s"] = time.perf_counter() - start
    return out


def summary(out: dict[str, Any]) -> dict[str, Any]:
    return {
        "requests": len(out["latency"]),
        "errors": len(out["errors"]),
        "first_errors": out["errors"][:5],
        "p50_latency_s": _pct(out["latency"], 50),
        "p99_latency_s": _pct(out["latency"], 99),
        "p50_ttft_s": _pct(out["ttft"], 50),
        "p99_ttft_s": _pct(out["ttft"], 99),
        "tok_s": out["tokens"] / out["wall_s"],
    }


def check_store(db: Path, conversations: list[str]) -> dict[str, int]:
    """Every conversation a client saw is stored with its user message and a complete answer."""
    from genloop.serve.store import Store

    store = Store(f"sqlite:///{db}")
    missing = incomplete = 0
    for cid in conversations:
        conv = store.get_conversation(cid)
        if conv is None:
            missing += 1
            continue
        roles = [m["role"] for m in conv["messages"]]
        if roles != ["user", "assistant"] or conv["messages"][-1]["status"] != "complete":
            incomplete += 1
    store.close()
    return {"checked": len(conversations), "missing": missing, "incomplete": incomplete}


def run_load(clients: int, duration: float, max_tokens: int = 32) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        model = tiny_model(home)
        with live_server(
            model, home, "--name", "tiny", "--max-batch", str(clients), "--dtype", "float32"
        ) as base:
            out = asyncio.run(drive(base, "tiny", clients, duration, max_tokens))
        result = summary(out) | {"clients": clients, "duration_s": duration}
        result["store"] = check_store(home / "genloop.db", out["conversations"])
    return result


def run_throughput(levels: list[int], duration: float) -> dict[str, Any]:
    from genloop.checkpoint.pull import pull

    model = pull(progress=False)
    results = {}
    with tempfile.TemporaryDirectory() as tmp, live_server(model, Path(tmp), "--name", "smollm2") as base:
        asyncio.run(drive(base, "smollm2", 1, 3, 8))  # warm-up
        for n in levels:
            results[str(n)] = summary(asyncio.run(drive(base, "smollm2", n, duration, 64)))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["load", "throughput", "both"], default="both", help="what to run")
    ap.add_argument(
        "--clients", type=int, default=32, help="concurrent clients in the load part (default 32)"
    )
    ap.add_argument("--duration", type=float, default=120, help="seconds of load (default 120)")
    ap.add_argument("--levels", default="1,8,32", help="client counts for the throughput part")
    ap.add_argument("--level-duration", type=float, default=30, help="seconds per throughput level")
    args = ap.parse_args()
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    if args.part in ("load", "both"):
        load = run_load(args.clients, args.duration)
        results["load_tiny"] = load
        print(f"load: {load['clients']} streaming clients x {load['duration_s']:.0f} s, tiny model")
        print(f"  requests {load['requests']}  errors {load['errors']}  store {load['store']}")
        print(
            f"  latency p50 {load['p50_latency_s']:.3f} s  p99 {load['p99_latency_s']:.3f} s   "
            f"ttft p50 {load['p50_ttft_s']:.3f} s  p99 {load['p99_ttft_s']:.3f} s  {load['tok_s']:.0f} tok/s"
        )
        for err in load["first_errors"]:
            print(f"  error: {err}")
    if args.part in ("throughput", "both"):
        levels = [int(x) for x in args.levels.split(",")]
        thr = run_throughput(levels, args.level_duration)
        results["throughput_smollm2"] = thr
        print("throughput: SmolLM2-135M-Instruct (int4), 64 tokens per answer")
        for n, r in thr.items():
            print(
                f"  {n:>3} clients: {r['tok_s']:7.1f} tok/s  latency p50 {r['p50_latency_s']:.2f} s  "
                f"p99 {r['p99_latency_s']:.2f} s  ttft p50 {r['p50_ttft_s']:.3f} s  errors {r['errors']}"
            )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
