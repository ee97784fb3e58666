"""Helpers shared by tests: run the real CLI, check the one-line error contract."""

from __future__ import annotations

import subprocess
import sys


def run_genloop(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real `genloop` console entry in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "genloop", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_one_line_error(stderr: str, *needles: str) -> None:
    """Bad input: exactly one readable line on stderr, naming the problem, no traceback."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, repr(stderr)
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
