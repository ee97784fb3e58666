"""Run untrusted Python (a model's code and the tests that judge it) in a contained child process.

One implementation shared by RL rewards (`unit_tests`) and evaluation (HumanEval). Each run is a fresh
`python -I -S` process in its own scratch directory with an empty environment and:

- limits: wall-clock `timeout` (the whole process group is killed), CPU seconds, address space
  (`memory_mb`), 1 MiB per written file (output goes to a capped file, not a pipe), no core dumps,
  at most 16 processes for the user it runs as;
- no root: a root parent runs the child as `nobody`, so it cannot touch this process or its files;
- no network: where the kernel allows it, the child starts in fresh network and PID namespaces
  (`unshare`, util-linux): no interface but a downed loopback, and everything it forked dies with it
  even if it left the process group. Where not permitted (a non-root user without user namespaces),
  it falls back to the in-process guard alone: `socket` and `_socket` constructors replaced by a
  function that raises, which stops accidents but not code set on getting around it.

A guard against accidents and cheap tricks, not a jail: run code you would not run yourself in a
container. The report line carries a nonce read from stdin, so text the code prints cannot pose as it
(code that digs the nonce out of the interpreter's frames could; that is deliberate cheating).
"""

from __future__ import annotations

import functools
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Runs inside the child: limits first, then as `nobody` when started as root, no sockets, then the
# solution and each test in one namespace; it reports how many tests passed and the first error.
_RUNNER = textwrap.dedent(
    """
    import _socket, json, os, resource, socket, sys
    def _no_network(*args, **kwargs):
        raise OSError("network access is disabled in the sandbox")
    def _describe(exc):
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return text[:300]
    def main():
        payload = json.loads(sys.stdin.read())
        cpu, memory, nonce = payload.pop("cpu"), payload.pop("memory"), payload.pop("nonce")
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NPROC, (16, 16))
        if os.geteuid() == 0:  # never run generated code as root: become nobody
            for name in payload.pop("preload"):  # `nobody` may be unable to read the stdlib later
                try:
                    __import__(name)
                except ImportError:
                    pass
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
        names = ("socket", "socketpair", "fromfd", "create_connection", "create_server", "getaddrinfo",
                 "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "SocketType")
        for module in (socket, _socket):
            for name in names:
                if hasattr(module, name):
                    setattr(module, name, _no_network)
        scope = {"__name__": "__main__"}
        passed, error = 0, None
        try:
            exec(compile(payload["solution"], "solution.py", "exec"), scope)
            for i, test in enumerate(payload["tests"]):
                try:
                    exec(compile(test, f"test_{i}.py", "exec"), scope)
                    passed += 1
                except BaseException as exc:
                    error = error or _describe(exc)
        except BaseException as exc:
            error = _describe(exc)
        report = {"nonce": nonce, "passed": passed, "error": error}
        os.write(1, ("\\n" + json.dumps(report) + "\\n").encode())  # fd 1 even if sys.stdout was swapped
        os._exit(0)  # no interpreter shutdown: a thread or atexit hook the code left cannot hang it
    main()
    """
)


PRELOAD = (
    "array", "bisect", "cmath", "collections", "collections.abc", "contextlib", "copy", "dataclasses",
    "datetime", "decimal", "enum", "fractions", "functools", "hashlib", "heapq", "itertools", "math",
    "numbers", "operator", "random", "re", "statistics", "string", "struct", "textwrap", "threading",
    "typing", "unicodedata",
)  # fmt: skip
"""Standard modules imported before a root parent's child becomes `nobody`: an interpreter installed
under a private home (/root/.pyenv) has a standard library `nobody` cannot read, so code importing
`typing` or `math` would fail for a reason that is not its own. Others stay importable where readable."""


@dataclass(frozen=True)
class Outcome:
    """What one contained run came to: `passed` of `total` tests, and why not all when they did not.

    status is "ok" (the child reported), "timeout" (killed at the wall-clock limit) or "crashed" (it
    died without a report: a limit's signal, os._exit, a killed interpreter). error is the first
    exception as "Type: message" for "ok", else the status with the exit code.
    """

    passed: int
    total: int
    status: str
    error: str | None = None

    @property
    def all_passed(self) -> bool:
        return self.status == "ok" and self.total > 0 and self.passed == self.total


@functools.cache
def namespace_prefix() -> tuple[str, ...]:
    """The `unshare` command that puts a child in new network and PID namespaces here, or () when the
    kernel or the user's rights do not allow it (probed once per process with a real child)."""
    unshare = shutil.which("unshare", path="/usr/bin:/bin:/usr/sbin:/sbin")
    if unshare is None:
        return ()
    flags = ["--net", "--pid", "--fork", "--kill-child"]
    if os.geteuid() != 0:
        flags.insert(0, "--user")  # an unprivileged user may still own a user namespace
    prefix = (unshare, *flags)
    try:
        probe = subprocess.run(
            [*prefix, sys.executable, "-I", "-S", "-c", "pass"],
            capture_output=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return prefix if probe.returncode == 0 else ()


def network_isolated() -> bool:
    """Whether sandboxed children get their own (empty) network namespace on this machine."""
    return bool(namespace_prefix())


def run_program(
    solution: str,
    tests: Sequence[str],
    timeout: float = 5.0,
    memory_mb: int = 512,
    *,
    isolate: bool = True,
) -> Outcome:
    """Run `solution`, then each of `tests` in the same namespace, in a contained child process.

    isolate=False skips the namespaces even where they work (the in-process guards remain): for tests
    of the fallback, and for comparing. Output goes to a file capped at 1 MiB (a child that prints
    forever is stopped by the file-size limit) rather than a pipe this process would have to hold.
    """
    nonce = secrets.token_hex(16)
    payload = {"solution": solution, "tests": list(tests), "nonce": nonce}
    payload |= {"cpu": math.ceil(timeout) + 1, "memory": memory_mb << 20, "preload": PRELOAD}
    prefix = namespace_prefix() if isolate else ()
    timed_out = False
    with tempfile.TemporaryDirectory(prefix="genloop-sandbox-") as scratch:
        work, report = Path(scratch) / "work", Path(scratch) / "stdout"
        work.mkdir()
        os.chmod(scratch, 0o711)  # `nobody` may enter to reach its working directory, not list it
        os.chmod(work, 0o777)
        with report.open("wb") as out:
            proc = subprocess.Popen(
                [*prefix, sys.executable, "-I", "-S", "-c", _RUNNER],
                stdin=subprocess.PIPE, stdout=out, stderr=subprocess.DEVNULL, cwd=work,
                env={"PATH": "/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work)},
                start_new_session=True,
            )  # fmt: skip
            try:
                proc.communicate(json.dumps(payload).encode(), timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)  # the whole session: children it forked too
                    proc.wait()
        lines = report.read_bytes()[-4096:].decode("utf-8", "replace").strip().splitlines()
    total = len(tests)
    try:
        found = json.loads(lines[-1]) if lines else {}
    except ValueError:
        found = {}
    if not isinstance(found, dict) or found.get("nonce") != nonce:
        # died before reporting, or something else wrote the last line
        if timed_out:
            return Outcome(0, total, "timeout", f"timeout after {timeout:g} s")
        return Outcome(0, total, "crashed", f"crashed (exit code {proc.returncode})")
    passed = max(0, min(total, int(found.get("passed", 0))))
    error = found.get("error")
    return Outcome(passed, total, "ok", str(error) if error is not None else None)


def run_tests(solution: str, tests: Sequence[str], timeout: float = 5.0, memory_mb: int = 512) -> int:
    """How many of `tests` pass after running `solution` in a contained child (see `run_program`)."""
    return run_program(solution, tests, timeout, memory_mb).passed
