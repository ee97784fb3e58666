"""HumanEval through the shared sandbox: the canonical solutions all pass and empty ones all fail,
hostile completions are contained and scored as failures, pass@k is the unbiased estimator, and
`humaneval_task` runs end to end on a tiny model."""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from genloop.errors import UserError
from genloop.evaluate.humaneval import (
    STOP,
    check,
    check_batch,
    from_chat,
    humaneval_task,
    load_problems,
    pass_at_k,
    program,
    truncate,
)
from genloop.evaluate.runner import _Run
from genloop.sandbox import network_isolated, run_program
from tests.serve.live import tiny_model


@pytest.fixture(scope="module")
def problems() -> list[dict]:
    return load_problems()


def test_problems_load_in_task_id_order(problems: list[dict]) -> None:
    assert len(problems) == 164
    assert [p["task_id"] for p in problems] == [f"HumanEval/{i}" for i in range(164)]
    assert [p["task_id"] for p in load_problems(3)] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    with pytest.raises(UserError, match="at least 1"):
        load_problems(0)


def test_program_appends_the_completion_and_calls_check(problems: list[dict]) -> None:
    solution, tests = program(problems[0], "    return True\n")
    assert solution == problems[0]["prompt"] + "    return True\n"
    assert tests == [problems[0]["test"] + "\n\ncheck(has_close_elements)\n"]


@pytest.mark.slow  # ~20 s on two busy cores: 164 interpreters, two at a time
def test_canonical_solutions_all_pass(problems: list[dict]) -> None:
    started = time.perf_counter()
    canonical = check_batch([(p, p["canonical_solution"]) for p in problems], workers=2)
    assert [o.error for o in canonical if not o.all_passed] == []
    assert sum(o.all_passed for o in canonical) == 164
    assert time.perf_counter() - started < 120


def test_empty_completions_all_fail_each_with_a_reason(problems: list[dict]) -> None:
    empty = check_batch([(p, "") for p in problems], workers=2)
    assert sum(o.all_passed for o in empty) == 0
    assert all(o.status == "ok" and o.error for o in empty)  # each failed on its own, none hung


def test_stop_sequences_and_chat_extraction(problems: list[dict]) -> None:
    body = "    return sorted(x)\n"
    assert truncate(body + "\n\ndef main():\n    pass\n") == body + "\n"
    assert truncate(body + "\n# test\nprint(1)") == body
    assert truncate(body + "\nif __name__ == '__main__':\n    main()") == body
    assert truncate(body) == body and set(STOP) >= {"\ndef ", "\nclass ", "\n#"}
    problem = problems[0]  # has_close_elements, the prompt imports List
    whole = (
        "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
        "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1 :])\n"
    )
    answer = f"Sure! Here it is:\n```python\n{whole}\nif __name__ == '__main__':\n    print(1)\n```\nDone."
    assert from_chat(problem, answer) == "\n" + whole
    assert check(problem, from_chat(problem, answer))  # the prompt's `from typing import List` still holds
    body_only = "```python\n    return False\n```"
    assert from_chat(problem, body_only) == "    return False\n"
    assert not check(problem, from_chat(problem, body_only))
    assert from_chat(problem, "no code at all") == "no code at all"


HOSTILE = {
    "loop": "while True:\n    pass",
    "fork_bomb": "import os\nwhile True:\n    os.fork()",
    "10GB": "x = bytearray(10 * 1024**3)",
    "growing": "blocks = []\nwhile True:\n    blocks.append(bytearray(64 * 1024**2))",
    "socket": "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)",
    "_socket": "import _socket\n_socket.socket().connect(('127.0.0.1', {port}))",
    "huge_file": "with open('big', 'wb') as f:\n    while True:\n        f.write(b'x' * (1 << 20))",
    "flood": "while True:\n    print('spam' * 1000)",
    "forged_report": "import json, os\nprint(json.dumps({{'passed': 1, 'nonce': ''}}))\nos._exit(0)",
    "exit": "import sys\nsys.exit(0)",
    "kill_parent": "import os\nos.kill(os.getppid(), 9)",
}


@pytest.fixture
def listener() -> Iterator[tuple[int, list[int]]]:
    """A TCP server on 127.0.0.1 in this process: (port, one entry per connection it accepted)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    hits: list[int] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            hits.append(1)
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1]), hits
    stop.set()
    thread.join()
    server.close()


@pytest.mark.skipif(
    os.geteuid() != 0 and not network_isolated(),
    reason="without a namespace or a root parent the child could signal this process (kill_parent)",
)
def test_hostile_completions_fail_quickly_and_harm_nothing(
    problems: list[dict], listener: tuple[int, list[int]]
) -> None:
    port, hits = listener
    problem = problems[0]
    names = list(HOSTILE)
    pairs = [(problem, "    pass\n" + HOSTILE[name].format(port=port) + "\n") for name in names]
    started = time.perf_counter()
    outcomes = check_batch(pairs, timeout=2.0, memory_mb=256, workers=2)
    elapsed = time.perf_counter() - started
    assert {n: o.all_passed for n, o in zip(names, outcomes, strict=True)} == dict.fromkeys(names, False)
    assert elapsed < len(names) * 3.0 / 2 + 5  # each within its 2 s limit plus start-up, two at a time
    why = dict(zip(names, outcomes, strict=True))
    assert why["loop"].status == "timeout"
    assert why["10GB"].error == "MemoryError"
    assert "network access is disabled" in str(why["socket"].error)
    assert "network access is disabled" in str(why["_socket"].error)
    assert "File too large" in str(why["huge_file"].error)
    assert hits == []
    assert check(problem, problem["canonical_solution"])  # the machine still runs sandboxes fine


@pytest.mark.skipif(os.geteuid() != 0, reason="the fallback protects this process only from a root parent")
def test_hostile_completions_are_contained_without_namespaces_too(
    problems: list[dict], listener: tuple[int, list[int]]
) -> None:
    port, hits = listener
    started = time.perf_counter()
    for name in ("loop", "fork_bomb", "10GB", "socket", "_socket", "huge_file", "kill_parent"):
        solution, tests = program(problems[0], "    pass\n" + HOSTILE[name].format(port=port) + "\n")
        outcome = run_program(solution, tests, timeout=2.0, memory_mb=256, isolate=False)
        assert not outcome.all_passed, name
    assert hits == []
    assert time.perf_counter() - started < 15


def test_the_network_namespace_stops_what_the_socket_guard_misses(listener: tuple[int, list[int]]) -> None:
    """`object.__subclasses__()` reaches the real socket class past the in-process guard: only the
    network namespace stops it. Without one (isolate=False, the fallback) it gets through."""
    port, hits = listener
    bypass = (
        "cls = [c for c in object.__subclasses__() if c.__name__ == 'socket'][0]\n"
        f"cls().connect(('127.0.0.1', {port}))"
    )
    if not network_isolated():
        pytest.skip("this machine allows no network namespace; the in-process guard is all there is")
    contained = run_program(bypass, ["assert True"], timeout=5.0)
    assert contained.passed == 0 and "Network is unreachable" in str(contained.error)
    assert hits == []
    fallback = run_program(bypass, ["assert True"], timeout=5.0, isolate=False)
    assert fallback.passed == 1 and len(hits) == 1  # the documented limit of the fallback
    guarded = run_program("import _socket\n_socket.socket()", ["assert True"], timeout=5.0, isolate=False)
    assert guarded.passed == 0 and "network access is disabled" in str(guarded.error)


def _processes_running(marker: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_a_child_that_leaves_the_process_group_dies_with_the_namespace() -> None:
    if not network_isolated():
        pytest.skip("needs PID namespaces; without them a setsid() child outlives the run")
    marker = f"{time.time_ns() % 10**6 + 60}.123"  # a sleep length no other process uses
    code = (
        f"import os\nif os.fork() == 0:\n    os.setsid()\n    os.execv('/bin/sleep', ['sleep', '{marker}'])\n"
    )
    for _ in range(10):  # `nobody` may still be at its process limit while a fork bomb is reaped
        outcome = run_program(code + "import time\ntime.sleep(0.3)", ["assert True"], timeout=5.0)
        if "BlockingIOError" not in str(outcome.error):
            break
        time.sleep(1)
    assert outcome.passed == 1, outcome
    deadline = time.monotonic() + 5
    while _processes_running(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    leftover = _processes_running(marker)
    for pid in leftover:  # started by this test: clean up before failing
        os.kill(pid, 9)
    assert leftover == []


def test_code_may_swap_stdout_and_leave_threads_running() -> None:
    code = "import io, sys, threading, time\nsys.stdout = io.StringIO()\nprint('hidden')\n"
    code += "threading.Thread(target=time.sleep, args=(60,)).start()\n"
    started = time.perf_counter()
    assert run_program(code, ["assert sys.stdout.getvalue() == 'hidden\\n'"], timeout=5.0).passed == 1
    assert time.perf_counter() - started < 4


def test_pass_at_k_is_the_unbiased_estimator() -> None:
    def formula(n: int, c: int, k: int) -> float:
        return 1.0 - math.comb(n - c, k) / math.comb(n, k)

    counts = [0, 1, 3, 10, 20]
    for k in (1, 5, 10):
        want = sum(formula(20, c, k) for c in counts) / len(counts)
        assert pass_at_k(20, counts, k) == pytest.approx(want, abs=1e-12)
    assert pass_at_k(1, [1, 0, 1, 1], 1) == 0.75  # greedy: the share solved


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("tiny-humaneval"), max_seq_len=2048)


def _run(model: Path, **settings: object) -> _Run:
    base = {"limit": 3, "seed": 0, "max_tokens": 8, "chat": False, "temperature": 0.0, "dtype": "float32"}
    return _Run(model, {**base, **settings}, batch_size=4, device="cpu")


def _drive(run: _Run, spec: object) -> tuple[dict, list, int, list[int]]:
    progress: list[int] = []
    try:
        metrics, examples, n = humaneval_task(run, spec, progress.append, progress.append)
    finally:
        run.close()
    return metrics, examples, n, progress


def test_humaneval_task_end_to_end_on_a_tiny_model(tiny: Path) -> None:
    spec = SimpleNamespace(max_tokens=None)
    metrics, examples, n, progress = _drive(_run(tiny), spec)
    assert n == 3 and progress == [3, 1, 1, 1]
    assert set(metrics) == {"pass@1"} and 0.0 <= metrics["pass@1"] <= 1.0
    assert [e["task_id"] for e in examples] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    for example in examples:
        assert len(example["completions"]) == len(example["passed"]) == 1
        assert example["passed"] == [False] and example["errors"][0]  # a random model fails, with a reason
    chat_metrics, chat_examples, _, _ = _drive(_run(tiny, chat=True, limit=2), spec)
    assert chat_metrics["pass@1"] == 0.0 and "responses" in chat_examples[0]


def test_humaneval_task_samples_with_seeds_and_checks_its_options(tiny: Path) -> None:
    spec = SimpleNamespace(max_tokens=4, samples=3, k=[1, 2], timeout=3)
    metrics, examples, _, _ = _drive(_run(tiny, limit=2, temperature=0.8), spec)
    assert set(metrics) == {"pass@1", "pass@2"}
    assert all(len(e["completions"]) == 3 for e in examples)
    assert len(set(examples[0]["completions"])) > 1  # each sample has its own seed
    again = _drive(_run(tiny, limit=2, temperature=0.8), spec)
    assert again[1] == examples and again[0] == metrics  # and a rerun draws the same ones
    with pytest.raises(UserError, match="temperature 0"):
        humaneval_task(_run(tiny), SimpleNamespace(max_tokens=4, samples=2), print, print)
    with pytest.raises(UserError, match=r"k=5 needs 1 <= k <= samples \(3\)"):
        humaneval_task(_run(tiny, temperature=0.8), SimpleNamespace(samples=3, k=[5]), print, print)
