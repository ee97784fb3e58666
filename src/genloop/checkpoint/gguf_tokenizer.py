"""Tokenizers in GGUF metadata, both ways: llama.cpp keeps the vocabulary, merges, token types and
special ids as `tokenizer.ggml.*` keys instead of a tokenizer.json.

Import rebuilds a Hugging Face `tokenizers` byte-level BPE that splits text exactly as transformers'
GGUF loader (our oracle) does; export writes the keys llama.cpp reads.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

import gguf
import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors

from genloop.errors import CheckpointError
from genloop.preprocess import Tokenizer

# llama.cpp token types
NORMAL, CONTROL, USER_DEFINED = 1, 3, 4

# Pre-tokenizer splits by `tokenizer.ggml.pre`, for vocabularies not trained on GPT-2's regex.
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")  # fmt: skip
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")  # fmt: skip
SPLITS = {"llama3": _LLAMA3, "llama-v3": _LLAMA3, "llama-bpe": _LLAMA3, "smaug-bpe": _LLAMA3,
          "qwen2": _QWEN2, "deepseek-r1-qwen": _QWEN2}  # fmt: skip
GPT2_REGEX_PRES = {None, "default", "gpt2", "smollm", "starcoder", "refact", "olmo", "codeshell"}


@functools.cache
def _byte_alphabet() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte, the alphabet byte-level BPE vocabularies use."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _respell(token: str) -> str:
    """A token written outside the byte alphabet (llama.cpp keeps some raw) in byte-level spelling."""
    alphabet = set(_byte_alphabet().values())
    if set(token) <= alphabet:
        return token
    return "".join(_byte_alphabet()[b] for b in token.encode("utf-8"))


def tokenizer_from_gguf(meta: Mapping[str, Any], source: str) -> Tokenizer:
    """A genloop Tokenizer from a GGUF file's `tokenizer.*` metadata."""
    kind = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if kind is None or tokens is None:
        raise CheckpointError(
            f"{source} has no tokenizer metadata (tokenizer.ggml.model/tokens missing); "
            "re-export the GGUF with its tokenizer"
        )
    if kind != "gpt2":
        raise CheckpointError(
            f"{source}: tokenizer model '{kind}' is not supported yet; supported: gpt2 (byte-level BPE)"
        )
    pre = meta.get("tokenizer.ggml.pre")
    if pre not in GPT2_REGEX_PRES and pre not in SPLITS:
        raise CheckpointError(
            f"{source}: pre-tokenizer '{pre}' is not supported; supported: "
            f"{', '.join(sorted(p for p in GPT2_REGEX_PRES | set(SPLITS) if p))}"
        )
    merges_raw = meta.get("tokenizer.ggml.merges")
    if not merges_raw:
        raise CheckpointError(
            f"{source}: tokenizer.ggml.merges is missing; a byte-level BPE needs its merges"
        )
    vocab = {_respell(tok): i for i, tok in enumerate(tokens)}
    merges = [tuple(m.split(" ", 1)) for m in merges_raw]
    backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges))
    if pre in SPLITS:
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(SPLITS[pre]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])  # fmt: skip
    else:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    types = list(meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens))
    alphabet = set(_byte_alphabet().values())
    # control tokens written with characters outside the byte alphabet are llama.cpp mislabels: skip
    backend.add_special_tokens(
        [
            AddedToken(t, normalized=False, special=True)
            for t, ty in zip(tokens, types, strict=False)
            if ty == CONTROL and set(t) <= alphabet
        ]
    )
    backend.add_tokens(
        [
            AddedToken(t, normalized=False, special=False)
            for t, ty in zip(tokens, types, strict=False)
            if ty == USER_DEFINED and t in vocab
        ]
    )

    def token(key: str) -> str | None:
        i = meta.get(f"tokenizer.ggml.{key}")
        return tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else None

    bos = token("bos_token_id")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    if add_bos and bos is not None:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0",
            pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
            special_tokens=[(bos, vocab[_respell(bos)])],
        )
    template = meta.get("tokenizer.chat_template")
    return Tokenizer(
        backend,
        bos_token=bos,
        eos_token=token("eos_token_id"),
        pad_token=token("padding_token_id"),
        unk_token=token("unknown_token_id"),
        chat_template=template if isinstance(template, str) else None,
        add_bos_token=add_bos,
        model_max_length=int(meta.get("context_length") or 2048),
    )


def _pre_name(pre: Mapping[str, Any]) -> str:
    """llama.cpp's name for a pre-tokenizer: a known split regex by name, else GPT-2's regex."""
    for step in pre.get("pretokenizers", [pre]):
        pattern = (step.get("pattern") or {}).get("Regex") if step.get("type") == "Split" else None
        for name, regex in SPLITS.items():
            if pattern == regex:
                return name
        if pattern is not None:
            raise CheckpointError("this tokenizer's pre-tokenizer split has no llama.cpp equivalent")
    return "gpt2"


def tokenizer_to_gguf(tok: Tokenizer, writer: gguf.GGUFWriter) -> None:
    """Write `tok` as `tokenizer.ggml.*` keys (byte-level BPE only: what genloop trains and imports)."""
    spec = json.loads(tok.backend.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise CheckpointError(f"only BPE tokenizers can be written to GGUF, this one is {model.get('type')}")
    size = tok.vocab_size
    tokens = [tok.id_to_token(i) or f"[PAD{i}]" for i in range(size)]
    types = [NORMAL] * size
    for added in spec.get("added_tokens", []):
        if added["id"] < size:
            types[added["id"]] = CONTROL if added.get("special") else USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_name(spec.get("pre_tokenizer") or {}))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for name, add in (
        ("bos", writer.add_bos_token_id),
        ("eos", writer.add_eos_token_id),
        ("pad", writer.add_pad_token_id),
        ("unk", writer.add_unk_token_id),
    ):
        token_id = getattr(tok, f"{name}_token_id")
        if token_id is not None:
            add(token_id)
    writer.add_add_bos_token(tok.add_bos_token)
    writer.add_chat_template(tok.chat_template)
