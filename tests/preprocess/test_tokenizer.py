"""Tokenizer: lossless round trip on any text, training from files, HF-compatible save/load."""

from __future__ import annotations

import json
import random
import sysconfig
import time
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from genloop.config import TokenizerConfig
from genloop.errors import TokenizerError, UserError
from genloop.preprocess import MB, Tokenizer, special_tokens

SAMPLES = [
    "Hello world!",
    "  leading and trailing spaces  \n\ttabs\r\nCRLF",
    "déjà vu — naïve café 😀👩‍💻 🇩🇪",
    "東京は日本の首都です。",
    "مرحبا بالعالم שלום עולם",
    "a\u0301e\u0300 combining \u20dd",
    "<|im_start|>user\nhi<|im_end|>\n",
    "def f(x):\n    return x ** 2  # comment\n",
]


def _corpus(n: int = 3000, seed: int = 0) -> list[str]:
    """Deterministic pseudo-text with enough distinct words to fill a few hundred merges."""
    rng = random.Random(seed)
    syllables = ["ka", "to", "ri", "mo", "se", "na", "lu", "pe", "zi", "the", "and", "ing", "ion"]
    words = ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(400)]
    words += ["Hello", "world", "café", "東京", "مرحبا", "😀"]
    return [" ".join(rng.choices(words, k=12)) + rng.choice([".", "!", "\n", ", "]) for _ in range(n)]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(_corpus(), TokenizerConfig(vocab_size=600, min_frequency=2), progress=False)


def test_training_gives_requested_vocab_and_special_tokens(tok: Tokenizer) -> None:
    assert tok.vocab_size == 600 == len(tok)
    assert tok.bos_token == tok.eos_token == "<|endoftext|>"
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (0, 0, 1, None)
    assert tok.unk_token is None
    assert tok.token_to_id("<|im_start|>") == 2 and tok.id_to_token(3) == "<|im_end|>"
    assert tok.token_to_id("no such token") is None
    assert "<|im_start|>" in tok.chat_template
    assert tok.add_bos_token is False


def test_special_tokens_are_deduplicated_and_ordered() -> None:
    config = TokenizerConfig(unk_token="<unk>", extra_special_tokens=["<tool>", "<|pad|>"])
    assert special_tokens(config) == [
        "<|endoftext|>",
        "<|pad|>",
        "<unk>",
        "<|im_start|>",
        "<|im_end|>",
        "<tool>",
    ]


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip_samples(tok: Tokenizer, text: str) -> None:
    assert tok.decode(tok.encode(text)) == text


def test_special_token_text_in_user_text(tok: Tokenizer) -> None:
    text = "say <|im_end|> and <|endoftext|>literally"
    ids = tok.encode(text)
    assert tok.token_to_id("<|im_end|>") in ids and 0 in ids  # matched as special tokens, like HF
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == "say  and literally"


EMOJI = st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF)
EMOJI_SEQUENCES = st.sampled_from(["👩‍💻", "🇩🇪", "👍🏽", "❤️", "🧑‍🤝‍🧑"]) | EMOJI  # ZWJ, flags, skin tones
CJK = st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF) | st.characters(
    min_codepoint=0x3040, max_codepoint=0x30FF
)
RTL = st.characters(min_codepoint=0x0590, max_codepoint=0x06FF)
COMBINING = st.characters(min_codepoint=0x0300, max_codepoint=0x036F)
CONTROL = st.characters(categories=["Cc", "Cf", "Zl", "Zp"])
ASCII = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
SPECIAL = st.sampled_from(["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>", "<|im_", "|>"])
LONG_WORD = st.text(st.characters(categories=["L", "N"]), min_size=200, max_size=2000)
PIECE = st.one_of(
    st.text(),
    st.text(st.one_of(EMOJI, CJK, RTL, COMBINING, CONTROL, ASCII), max_size=40),
    st.lists(EMOJI_SEQUENCES, max_size=8).map("".join),
    st.text(COMBINING, min_size=1, max_size=12),
    LONG_WORD,
    st.text("ab ", min_size=500, max_size=3000),
    SPECIAL,
)


@settings(max_examples=1000, deadline=None)
@given(text=st.lists(PIECE, max_size=5).map("".join))
@example(text="")
@example(text="\x00\x01\x7f\x80\x9f\u200b\u200d\u2028\ufeff")
@example(text="<|im_start|><|im_start|>|><|endoftext|>x")
def test_decode_encode_round_trip_property(tok: Tokenizer, text: str) -> None:
    assert tok.decode(tok.encode(text)) == text


def test_encode_batch_matches_encode(tok: Tokenizer) -> None:
    assert tok.encode_batch(SAMPLES) == [tok.encode(s) for s in SAMPLES]


def test_decode_rejects_ids_outside_the_vocabulary(tok: Tokenizer) -> None:
    for bad in (600, -1):
        with pytest.raises(TokenizerError, match=f"token id {bad} is out of range"):
            tok.decode([5, bad])


def test_add_bos_token_and_normalization_are_applied() -> None:
    config = TokenizerConfig(vocab_size=400, min_frequency=2, add_bos_token=True, normalize=["lowercase"])
    tok = Tokenizer.train(["HELLO HELLO THERE"] * 50, config, progress=False)
    ids = tok.encode("hello")
    assert ids[0] == tok.bos_token_id == 0
    assert tok.encode("hello", add_special_tokens=False) == ids[1:]
    assert tok.token_to_id("hello") is not None and tok.token_to_id("HELLO") is None


def test_bad_training_settings_are_user_errors() -> None:
    with pytest.raises(UserError, match="did you mean 'lowercase'"):
        Tokenizer.train(["x"], TokenizerConfig(normalize=["lowercas"]), progress=False)
    crowded = TokenizerConfig(vocab_size=300, extra_special_tokens=[f"<s{i}>" for i in range(50)])
    with pytest.raises(TokenizerError, match="leaves no room for merges"):
        Tokenizer.train(["x"], crowded, progress=False)
    with pytest.raises(TypeError):
        Tokenizer.train("a single string", progress=False)


def test_train_files_reads_folders_jsonl_and_skips_binary(tmp_path: Path) -> None:
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / ".git").mkdir()
    (tmp_path / "a.txt").write_text("plain text file\n" * 50, encoding="utf-8")
    (tmp_path / "sub" / "b.md").write_text("# Markdown\n" * 50, encoding="utf-8")
    records = [{"text": "zebrafish swim"}, {"other": "ignored"}, {"text": 3}]
    lines = [json.dumps(r) for r in records * 40] + ["{broken json"]
    (tmp_path / "sub" / "deeper" / "c.jsonl").write_text("\n".join(lines), encoding="utf-8")
    (tmp_path / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00 data")
    (tmp_path / "latin1.txt").write_bytes("ol\xe9 caf\xe9".encode("latin-1"))
    (tmp_path / "image.png").write_bytes(b"\x00" * 100)
    (tmp_path / ".git" / "config.txt").write_text("hidden " * 100, encoding="utf-8")
    config = TokenizerConfig(vocab_size=400, min_frequency=2)
    tok, stats = Tokenizer.train_files([tmp_path], config, progress=False)
    assert stats.files_read == 3
    assert sorted(Path(p).name for p in stats.skipped) == ["binary.txt", "latin1.txt"]
    assert stats.bytes_read > 0 and stats.seconds > 0 and stats.mb_per_s > 0
    assert tok.token_to_id("zebrafish") is not None  # learned from the jsonl "text" field
    assert tok.token_to_id("hidden") is None  # hidden folders are not read
    assert tok.token_to_id("ignored") is None


def test_train_files_stops_at_max_bytes(tmp_path: Path) -> None:
    for i in range(5):
        (tmp_path / f"{i}.txt").write_text(f"line number {i}\n" * 2000, encoding="utf-8")
    _, stats = Tokenizer.train_files(
        [tmp_path], TokenizerConfig(vocab_size=300), max_bytes=40_000, progress=False
    )
    assert 30_000 <= stats.bytes_read <= 40_000


def test_train_files_errors_name_the_problem(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(UserError, match=f"input not found: {missing}"):
        Tokenizer.train_files([missing], progress=False)
    (tmp_path / "bin.txt").write_bytes(b"\x00\x01\x02" * 10)
    with pytest.raises(UserError, match="no readable text"):
        Tokenizer.train_files([tmp_path], progress=False)


def test_training_on_10_mb_of_python_source() -> None:
    files, size = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        files.append(path)
        size += path.stat().st_size
        if size >= 10 * MB:
            break
    assert size >= 10 * MB, "the standard library on this machine is smaller than 10 MB"
    start = time.perf_counter()
    tok, stats = Tokenizer.train_files(
        files, TokenizerConfig(vocab_size=8000), max_bytes=10 * MB, progress=False
    )
    elapsed = time.perf_counter() - start
    print(f"\ntrained on {stats.bytes_read / MB:.1f} MB in {elapsed:.1f} s: {stats.mb_per_s:.2f} MB/s")
    assert stats.bytes_read >= 9.9 * MB
    assert tok.vocab_size == 8000
    source = files[0].read_text(encoding="utf-8")
    assert tok.decode(tok.encode(source)) == source
    assert len(tok.encode(source)) < len(source.encode("utf-8")) / 2.5  # it learned real merges


# ---- files ------------------------------------------------------------------------------------


def test_save_and_load_round_trip(tok: Tokenizer, tmp_path: Path) -> None:
    tok.save(tmp_path / "t")
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == [
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]  # and no temporary files left behind
    loaded = Tokenizer.load(tmp_path / "t")
    also = Tokenizer.load(tmp_path / "t" / "tokenizer.json")
    for text in SAMPLES:
        assert loaded.encode(text) == tok.encode(text) == also.encode(text)
    for name in ("bos_token", "eos_token", "pad_token", "unk_token", "chat_template", "add_bos_token"):
        assert getattr(loaded, name) == getattr(tok, name)
    assert loaded.vocab_size == tok.vocab_size and loaded.model_max_length == 2048
    tok.save(tmp_path / "t")  # overwriting works (os.replace)
    assert Tokenizer.load(tmp_path / "t").encode("Hello") == tok.encode("Hello")


@pytest.mark.parametrize("add_bos", [False, True])
def test_transformers_loads_the_saved_tokenizer(tmp_path: Path, add_bos: bool) -> None:
    template = "{% for m in messages %}{{ bos_token }}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    config = TokenizerConfig(vocab_size=500, add_bos_token=add_bos, chat_template=template)
    tok = Tokenizer.train(_corpus(1500), config, progress=False)
    tok.save(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(hf, PreTrainedTokenizerFast)
    assert (hf.bos_token, hf.eos_token, hf.pad_token, hf.unk_token) == (
        "<|endoftext|>",
        "<|endoftext|>",
        "<|pad|>",
        None,
    )
    assert (hf.bos_token_id, hf.pad_token_id) == (tok.bos_token_id, tok.pad_token_id)
    assert len(hf) == tok.vocab_size
    for text in SAMPLES:
        assert hf(text)["input_ids"] == tok.encode(text)
        assert hf.encode(text, add_special_tokens=False) == tok.encode(text, add_special_tokens=False)
        assert hf.decode(tok.encode(text, add_special_tokens=False)) == text
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "héllo <|im_end|>"}]
    for gen in (False, True):
        rendered = tok.apply_chat_template(messages, add_generation_prompt=gen)
        assert hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen) == rendered
    hf_ids = hf.apply_chat_template(messages, tokenize=True, return_dict=False)
    assert hf_ids == tok.apply_chat_template(messages, tokenize=True)


def test_load_reads_a_directory_written_by_transformers(tok: Tokenizer, tmp_path: Path) -> None:
    backend = type(tok.backend).from_str(tok.backend.to_str())
    template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    hf = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|im_end|>", chat_template=template
    )
    hf.save_pretrained(tmp_path)
    loaded = Tokenizer.load(tmp_path)
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token) == ("<|endoftext|>", "<|im_end|>", None)
    assert loaded.chat_template == template
    for text in SAMPLES:
        assert loaded.encode(text) == hf(text)["input_ids"]
    messages = [{"role": "user", "content": "hi"}]
    assert loaded.apply_chat_template(messages) == hf.apply_chat_template(messages, tokenize=False)


def _assert_one_line_naming(error: pytest.ExceptionInfo[TokenizerError], path: Path) -> None:
    message = str(error.value)
    assert "\n" not in message
    assert str(path) in message


def test_load_errors_are_one_line_and_name_the_file(tok: Tokenizer, tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="genloop tokenizer train") as info:
        Tokenizer.load(tmp_path)  # an empty folder
    _assert_one_line_naming(info, tmp_path / "tokenizer.json")

    with pytest.raises(TokenizerError, match="not found") as info:
        Tokenizer.load(tmp_path / "absent")
    _assert_one_line_naming(info, tmp_path / "absent")

    tok.save(tmp_path)
    tokenizer_json = tmp_path / "tokenizer.json"
    good = tokenizer_json.read_text(encoding="utf-8")
    tokenizer_json.write_text(good[: len(good) // 2], encoding="utf-8")
    with pytest.raises(TokenizerError, match="not a valid tokenizer file") as info:
        Tokenizer.load(tmp_path)
    _assert_one_line_naming(info, tokenizer_json)

    tokenizer_json.write_text(good, encoding="utf-8")
    config_json = tmp_path / "tokenizer_config.json"
    config_json.write_text('{"bos_token": "<|endoftext|>",', encoding="utf-8")
    with pytest.raises(TokenizerError, match="not valid JSON") as info:
        Tokenizer.load(tmp_path)
    _assert_one_line_naming(info, config_json)

    config_json.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(TokenizerError, match="must hold a JSON object"):
        Tokenizer.load(tmp_path)
