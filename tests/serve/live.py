"""A real `genloop serve` process on 127.0.0.1 for tests: started, awaited on /health, stopped."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

WORDS = [
    *("the", "cat", "dog", "sat", "ran", "on", "a", "mat", "log", "big", "small", "red", "blue"),
    *("happy", "sad", "tree", "house", "river", "sun", "moon"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def live_server(
    model: Path | str, home: Path, *args: str, timeout: float = 180.0, port: int | None = None
) -> Iterator[str]:
    """Yield the base URL of `genloop serve MODEL ARGS` once /health answers 200."""
    port = port or free_port()
    env = {**os.environ, "GENLOOP_HOME": str(home)}
    log = (home / f"serve-{port}.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "genloop", "serve", str(model), "--port", str(port), *args],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"genloop serve exited {proc.returncode}: {(home / log.name).read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"genloop serve did not become healthy in {timeout} s")
            time.sleep(0.3)
        yield base
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def server_process(model: Path | str, home: Path, port: int, *args: str) -> subprocess.Popen[bytes]:
    """A bare server process (for crash tests that kill it themselves)."""
    env = {**os.environ, "GENLOOP_HOME": str(home)}
    return subprocess.Popen(
        [sys.executable, "-m", "genloop", "serve", str(model), "--port", str(port), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def tiny_model(root: Path, max_seq_len: int = 512) -> Path:
    """A random ~1M-parameter model with a trained tokenizer (and its default chat template)."""
    import torch

    from genloop.checkpoint import save_model
    from genloop.config import TokenizerConfig
    from genloop.model import build_model
    from genloop.model.presets import preset
    from genloop.preprocess import Tokenizer

    rng = random.Random(0)
    texts = [" ".join(rng.choices(WORDS, k=40)) for _ in range(300)]
    tok = Tokenizer.train(texts, TokenizerConfig(vocab_size=300), progress=False)
    torch.manual_seed(0)
    cfg = preset(
        "tiny",
        vocab_size=tok.vocab_size,
        max_seq_len=max_seq_len,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    out = root / "tiny-chat"
    save_model(build_model(cfg), out, tokenizer=tok)
    return out
