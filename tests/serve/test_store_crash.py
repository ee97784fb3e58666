"""A SIGKILL mid-stream loses nothing the store had acknowledged, and leaves the file intact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from genloop.serve.store import Store

WRITER = """
import sys
from genloop.serve.store import Store
store = Store(sys.argv[1])
answer = sys.argv[2]
while True:
    fid = store.add_feedback(answer, rating=1, comment="x" * 200)
    print(fid, flush=True)  # acknowledged: add_feedback has returned
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_loses_no_acknowledged_feedback(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'crash.db'}"
    with Store(url) as store:
        conv = store.create_conversation(model="m")
        answer = store.add_message(
            conv, "assistant", "hi", parent_id=store.add_message(conv, "user", "hello")
        )

    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, url, answer], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    acknowledged: list[str] = []
    try:
        assert child.stdout is not None
        while len(acknowledged) < 50:
            line = child.stdout.readline()
            assert line, f"writer died early (exit {child.poll()})"
            acknowledged.append(line.strip())
    finally:
        child.send_signal(signal.SIGKILL)  # mid-write, most likely: it never stops adding rows
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    with Store(url) as store:
        assert store.execute("PRAGMA integrity_check") == [("ok",)]
        stored = {f["id"] for f in store.get_conversation(conv)["messages"][1]["feedback"]}  # type: ignore[index]
        assert set(acknowledged) <= stored
        assert store.counts()["feedback"] == len(stored) >= 50
