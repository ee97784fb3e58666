"""The engine's speed depends on its thread owning the process's only OpenMP team (engine.py): a
parallel op run by the importing thread starts a second team, libgomp then stops spin-waiting, and
every kernel of the engine waits on a futex (SmolLM2 int4 decode: 40 tok/s instead of 62 here)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

COUNT = """
import os, sys
def threads():
    return len(os.listdir('/proc/self/task'))
import torch
before = threads()
import genloop.cli, genloop.generate, genloop.model.quantize, genloop.model.fuse, genloop.serve.app
print(before, threads())
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc")
def test_importing_genloop_starts_no_openmp_workers() -> None:
    out = subprocess.run([sys.executable, "-c", COUNT], capture_output=True, text=True, check=True).stdout
    before, after = map(int, out.split())
    assert after == before, f"importing genloop started {after - before} thread(s) (an OpenMP team?)"
