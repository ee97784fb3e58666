"""Oracle parity with transformers: same weights, same logits, same parameter counts, both directions."""

from __future__ import annotations

import pytest
import torch

from genloop.checkpoint import load_model, save_model
from genloop.model import build_model, preset

transformers = pytest.importorskip("transformers")

TOL = 1e-4


def _batch(vocab: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three sequences of lengths 11, 7 and 4, right-padded with id 0."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (3, 11), generator=g)
    mask = torch.ones(3, 11, dtype=torch.long)
    for row, length in enumerate((11, 7, 4)):
        ids[row, length:] = 0
        mask[row, length:] = 0
    return ids, mask


def _max_diff_on_real_tokens(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    keep = mask.bool()
    return (a[keep] - b[keep]).abs().max().item()


CASES = {
    "llama-gqa-tied": ("tiny", {}),
    "llama-mha-untied": ("tiny", {"n_kv_heads": None, "tie_embeddings": False, "rope_theta": 500000.0}),
    "llama-mqa-bias": ("tiny", {"n_kv_heads": 1, "qkv_bias": True, "out_bias": True, "mlp_bias": True}),
    "qwen2-style": ("tiny", {"qkv_bias": True}),
    "gpt2": ("tiny-gpt2", {}),
    "gpt2-untied": ("tiny-gpt2", {"tie_embeddings": False}),
}
HF_CLASS = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "gpt2": "GPT2LMHeadModel"}


@pytest.mark.parametrize("case", list(CASES))
def test_genloop_dir_loads_in_transformers_with_same_logits(case: str, tmp_path) -> None:
    name, overrides = CASES[case]
    torch.manual_seed(1)
    model = build_model(preset(name, **overrides)).eval()
    # random norms too, so a swapped or ignored norm weight cannot hide
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(1 + 0.1 * torch.randn_like(p))
    save_model(model, tmp_path / "m")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32).eval()
    assert type(hf).__name__ == HF_CLASS[case.split("-")[0].replace("-style", "")]
    ids, mask = _batch(model.config.vocab_size)
    with torch.no_grad():
        ours = model(ids, attention_mask=mask)
        theirs = hf(input_ids=ids, attention_mask=mask).logits
    assert _max_diff_on_real_tokens(ours, theirs, mask) <= TOL
    assert sum(p.numel() for p in model.parameters()) == hf.num_parameters()


_SMALL = {"vocab_size": 300, "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2}
HF_CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(
        **_SMALL,
        num_attention_heads=6,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        rope_theta=20000.0,
        rms_norm_eps=1e-6,
    ),
    "llama-tied": lambda: transformers.LlamaConfig(
        **_SMALL, num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True
    ),
    "mistral": lambda: transformers.MistralConfig(
        **_SMALL, num_attention_heads=4, num_key_value_heads=2, sliding_window=None
    ),
    "qwen2": lambda: transformers.Qwen2Config(
        **_SMALL, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True
    ),
    "gpt2": lambda: transformers.GPT2Config(
        vocab_size=300, n_embd=48, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0
    ),
}


@pytest.mark.parametrize("kind", list(HF_CONFIGS))
def test_transformers_save_pretrained_loads_into_genloop(kind: str, tmp_path) -> None:
    torch.manual_seed(2)
    hf = transformers.AutoModelForCausalLM.from_config(HF_CONFIGS[kind]()).eval()
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if "norm" in n or "ln_" in n or n.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    hf.save_pretrained(tmp_path / "hf")
    model = load_model(tmp_path / "hf")
    ids, mask = _batch(300, seed=3)
    with torch.no_grad():
        ours = model(ids, attention_mask=mask)
        theirs = hf(input_ids=ids, attention_mask=mask).logits
    assert _max_diff_on_real_tokens(ours, theirs, mask) <= TOL
    assert sum(p.numel() for p in model.parameters()) == hf.num_parameters()


@pytest.mark.parametrize("name", ["gpt2-124m", "smollm2-135m"])
def test_parameter_counts_match_transformers_for_full_size_presets(name: str, tmp_path) -> None:
    from genloop.checkpoint import config_to_hf
    from genloop.model import model_stats

    cfg = preset(name)
    hf_cfg = transformers.AutoConfig.for_model(**config_to_hf(cfg, torch.float32))
    with torch.device("meta"):
        hf = transformers.AutoModelForCausalLM.from_config(hf_cfg)
    assert model_stats(cfg).params == hf.num_parameters()
