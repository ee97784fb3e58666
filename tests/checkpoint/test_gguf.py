"""GGUF export/import on a tiny model: round trips, transformers' GGUF loader as the oracle, and
every kind of bad file answered with one line, exit code 2 and an empty registry."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader

from genloop.checkpoint import load_model, save_model
from genloop.checkpoint.directory import _unique_state
from genloop.checkpoint.gguf_file import EXPORT_TYPES, add_config, add_tensors, gguf_writer, read_gguf
from genloop.checkpoint.gguf_tokenizer import tokenizer_to_gguf
from genloop.checkpoint.registry import list_models
from genloop.config import TokenizerConfig
from genloop.model import build_model, preset
from genloop.preprocess import Tokenizer
from tests.helpers import assert_one_line_error

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "naïve", "東京", "def", "return", "(x)", "=", "+", "1", "\n"]
    texts = [" ".join(rng.choices(words, k=30)) for _ in range(300)]
    return Tokenizer.train(texts, TokenizerConfig(vocab_size=400), progress=False)


@pytest.fixture(scope="module")
def model_dir(tok: Tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    cfg = preset(
        "tiny",
        vocab_size=tok.vocab_size,
        n_layers=2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = build_model(cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(1 + 0.2 * torch.randn_like(p))
    out = tmp_path_factory.mktemp("gguf") / "tiny"
    save_model(model, out, tokenizer=tok)
    return out


def _ids(tok: Tokenizer) -> torch.Tensor:
    return torch.tensor([tok.encode("alpha beta naïve 東京 def return (x) + 1")])


@pytest.mark.parametrize(("dtype", "tol"), [("f32", 0.0), ("f16", 1e-2), ("q8_0", 5e-2)])
def test_export_import_round_trip(
    cli, model_dir: Path, tok: Tokenizer, tmp_path: Path, dtype: str, tol: float
) -> None:
    out = tmp_path / f"tiny-{dtype}.gguf"
    code, stdout, _ = cli("export", model_dir, "--format", "gguf", "--dtype", dtype, "--out", out)
    assert code == 0 and "exported" in stdout
    types = {t.name: t.tensor_type for t in GGUFReader(out).tensors}
    assert types["blk.0.attn_norm.weight"] == GGMLQuantizationType.F32  # vectors stay f32
    assert types["blk.0.attn_q.weight"] == EXPORT_TYPES[dtype]
    code, _, _ = cli("import", out, "--name", f"back-{dtype}")
    assert code == 0
    original, back = load_model(model_dir), load_model(_registered(f"back-{dtype}"))
    assert {k: v for k, v in back.config if getattr(original.config, k) != v} == {}
    with torch.no_grad():
        diff = (back(_ids(tok)) - original(_ids(tok))).abs().max().item()
    assert diff <= tol
    assert Tokenizer.load(_registered(f"back-{dtype}")).encode("naïve 東京 <|im_start|>") == tok.encode(
        "naïve 東京 <|im_start|>"
    )


def _registered(name: str) -> Path:
    from genloop.checkpoint import resolve

    return resolve(name)


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
def test_transformers_gguf_loader_accepts_the_export(
    model_dir: Path, tok: Tokenizer, tmp_path: Path, dtype: str
) -> None:
    from genloop.checkpoint.exporter import export_model

    out = export_model(model_dir, "gguf", tmp_path / "m.gguf", dtype)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name, dtype=torch.float32)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=out.name)
    g = read_gguf(out)
    ours = build_model(g.config).eval()
    ours.load_state_dict(g.state, strict=False)
    ids = _ids(tok)
    with torch.no_grad():
        assert (hf(input_ids=ids).logits - ours(ids)).abs().max().item() <= 1e-4
    for text in ("alpha  beta\n\n東京", "def f(x): return x+1", "<|im_start|>user\nhi<|im_end|>"):
        assert hf_tok(text)["input_ids"] == tok.encode(text)
    messages = [{"role": "user", "content": "hi"}]
    assert hf_tok.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    ) == tok.apply_chat_template(messages, add_generation_prompt=True)


# ---------------------------------------------------------------- bad input


def _write(
    path: Path,
    model_dir: Path,
    tok: Tokenizer,
    *,
    arch: str = "llama",
    tokenizer: bool = True,
    retype: str | None = None,
) -> Path:
    model = load_model(model_dir)
    state = _unique_state(model)
    with gguf_writer(path, arch) as w:
        add_config(w, model.config, GGMLQuantizationType.F32, "bad", arch=arch)
        if tokenizer:
            tokenizer_to_gguf(tok, w)
        if retype:
            w.add_tensor("blk.0.attn_q.weight", np.zeros((64, 64), dtype=np.int32))
            state = {k: v for k, v in state.items() if k != "decoder.blocks.0.attn.q.weight"}
        add_tensors(w, state, model.config, GGMLQuantizationType.F32)
    return path


def _import_fails(cli, path: Path, *needles: str) -> None:
    code, out, err = cli("import", path, "--name", "broken")
    assert code == 2, (out, err)
    assert_one_line_error(err, *needles)
    assert list_models() == []


def test_truncated_file(cli, model_dir, tok, tmp_path) -> None:
    good = _write(tmp_path / "good.gguf", model_dir, tok)
    bad = tmp_path / "truncated.gguf"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    _import_fails(cli, bad, "truncated or corrupt", "truncated.gguf")


def test_wrong_magic(cli, tmp_path) -> None:
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    _import_fails(cli, bad, "is not a GGUF file", "b'PK\\x03\\x04'")


def test_unsupported_architecture(cli, model_dir, tok, tmp_path) -> None:
    _import_fails(
        cli,
        _write(tmp_path / "m.gguf", model_dir, tok, arch="mamba"),
        "architecture 'mamba' is not supported",
        "supported: llama, qwen2",
    )


def test_unsupported_tensor_type(cli, model_dir, tok, tmp_path) -> None:
    _import_fails(
        cli,
        _write(tmp_path / "m.gguf", model_dir, tok, retype="I32"),
        "'blk.0.attn_q.weight' has type I32",
        "supported: ",
        "Q4_K",
    )


def test_missing_tokenizer_metadata(cli, model_dir, tok, tmp_path) -> None:
    _import_fails(
        cli, _write(tmp_path / "m.gguf", model_dir, tok, tokenizer=False), "has no tokenizer metadata"
    )


def test_missing_file(cli, tmp_path) -> None:
    _import_fails(cli, tmp_path / "nope.gguf", "nothing to import", "nope.gguf")


def test_export_of_a_non_llama_model_is_refused(cli, tmp_path) -> None:
    cli("model", "init", "tiny-gpt2", tmp_path / "g")
    code, _, err = cli("export", tmp_path / "g", "--out", tmp_path / "g.gguf")
    assert code == 2
    assert_one_line_error(err, "tokenizer.json")


# ---------------------------------------------------------------- every tensor type in

# f16 scale fields (byte offsets) per 256-value super-block of the K-quants, set to small values so
# random payload bytes decode to sane weights
_K_SCALES = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def _encode(w: np.ndarray, qtype: GGMLQuantizationType, rng: np.random.Generator) -> np.ndarray:
    import gguf

    if qtype.name in _K_SCALES:
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, size=(w.shape[0], w.shape[1] // block, size), dtype=np.uint8)
        for offset in _K_SCALES[qtype.name]:
            raw[..., offset : offset + 2] = np.frombuffer(np.float16(0.004).tobytes(), dtype=np.uint8)
        return raw.reshape(w.shape[0], -1)
    return gguf.quants.quantize(w.astype(np.float32), qtype)


@pytest.mark.parametrize(
    "qname", ["F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
)
def test_import_every_tensor_type_matches_transformers(cli, tok, tmp_path, qname: str) -> None:
    """A GGUF whose matrices are stored as `qname` imports with the logits transformers gets from it."""
    qtype = GGMLQuantizationType[qname]
    torch.manual_seed(0)
    cfg = preset("tiny", vocab_size=tok.vocab_size, d_model=256, n_heads=4, n_kv_heads=2, d_ff=512)
    model = build_model(cfg)
    rng = np.random.default_rng(0)
    path = tmp_path / f"m-{qname}.gguf"
    with gguf_writer(path) as w:
        add_config(w, cfg, GGMLQuantizationType.F32, "typed")
        tokenizer_to_gguf(tok, w)
        from genloop.checkpoint.gguf_file import _tensors

        for name, arr in _tensors(_unique_state(model), cfg):
            if arr.ndim == 1:
                w.add_tensor(name, arr.astype(np.float32))
            else:
                w.add_tensor(name, _encode(arr, qtype, rng), raw_dtype=qtype)
    assert cli("import", path, "--name", f"typed-{qname.lower()}")[0] == 0
    ours = load_model(_registered(f"typed-{qname.lower()}"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32)
    ids = _ids(tok)
    with torch.no_grad():
        a, b = ours(ids), hf(input_ids=ids).logits
    assert torch.isfinite(a).all()
    assert (a - b).abs().max().item() <= 1e-4 * max(1.0, b.abs().max().item())
