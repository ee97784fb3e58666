"""LoRA: exact at init, trains only adapters, merges exactly, and round-trips with PEFT both ways."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from genloop.checkpoint import load_model, save_model
from genloop.checkpoint.adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS, load_adapter, save_adapter
from genloop.config import Section, validate
from genloop.errors import CheckpointError, UserError
from genloop.model import build_model, preset
from genloop.model.lora import (
    LoRAConfig,
    LoRALinear,
    apply_lora,
    lora_modules,
    lora_state_dict,
    merge_lora,
    trainable_parameters,
)

LLAMA_ALL = ["q", "k", "v", "o", "gate", "up", "down"]
GPT2_ALL = ["q", "k", "v", "o", "up", "down"]


def _model(name: str = "tiny", seed: int = 0, **overrides: object) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(preset(name, **overrides)).eval()


def _ids(vocab: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 9), generator=torch.Generator().manual_seed(seed))


def _randomize(model: torch.nn.Module, seed: int = 2) -> None:
    """Non-zero A and B everywhere, so every adapter changes the logits and a misplaced one shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_A.weight.copy_(torch.randn(m.lora_A.weight.shape, generator=g) * 0.2)
            m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g) * 0.2)


def test_config_normalizes_names_and_rejects_bad_values() -> None:
    assert LoRAConfig().target_modules == ["q", "v"]
    cfg = LoRAConfig(target_modules=["down_proj", "q_proj", "q", "gate"])
    assert cfg.target_modules == ["q", "gate", "down"]
    assert LoRAConfig(target_modules="c_attn,c_proj").target_modules == ["q", "k", "v", "o", "down"]
    with pytest.raises(UserError, match=r"unknown module 'qkv'; choose from q, k, v, o, gate, up, down"):
        LoRAConfig(target_modules=["q", "qkv"])
    with pytest.raises(UserError, match=r"'r'.*greater than 0"):
        LoRAConfig(r=0)
    with pytest.raises(UserError, match=r"'r'.*greater than 0"):
        LoRAConfig(r=-4)
    with pytest.raises(UserError, match=r"'alpha'"):
        LoRAConfig(alpha=0)
    with pytest.raises(UserError, match=r"'bias' must be 'none'"):
        LoRAConfig(bias="all")
    with pytest.raises(UserError, match=r"unknown key 'rank'"):
        LoRAConfig(rank=4)

    class Train(Section):  # inside another config, the error names the file and the key
        lora: LoRAConfig | None = None

    with pytest.raises(UserError, match=r"^train\.yaml: 'lora': LoRA config: 'r'"):
        validate(Train, {"lora": {"r": 0}}, "train.yaml")
    assert validate(Train, {"lora": {"target_modules": "q_proj,o"}}).lora.target_modules == ["q", "o"]


def test_fresh_adapters_are_exact_and_only_they_train() -> None:
    model = _model()
    ids = _ids(model.config.vocab_size)
    with torch.no_grad():
        before = model(ids)
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    paths = apply_lora(model, LoRAConfig(r=4, target_modules=LLAMA_ALL))
    assert len(paths) == 7 * model.config.n_layers
    assert "decoder.blocks.1.mlp.gate" in paths
    with torch.no_grad():
        assert torch.equal(model(ids), before)  # B = 0: not close, identical
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if ".lora_" in n}
    assert len(trainable) == 2 * len(paths)
    n_lora = sum(t.numel() for t in lora_state_dict(model).values())
    n_base = sum(t.numel() for t in _model().parameters())
    assert trainable_parameters(model) == (n_lora, n_base + n_lora)

    initial = {k: v.clone() for k, v in lora_state_dict(model).items()}
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)  # all params: frozen must hold
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        batch = torch.randint(0, model.config.vocab_size, (4, 12), generator=g)
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.state_dict()
    for name, old in frozen.items():
        wrapped = name.rsplit(".", 1)
        new = after.get(name, after.get(f"{wrapped[0]}.base.{wrapped[1]}"))
        assert new is not None and torch.equal(new, old), name
    for name, t in lora_state_dict(model).items():
        assert not torch.equal(t, initial[name]), name  # every A and B moved (A from step 2 on)


def test_cross_attention_and_family_specific_targets() -> None:
    seq2seq = _model("tiny-seq2seq")
    paths = apply_lora(seq2seq, LoRAConfig(target_modules=["q", "v"]))
    assert "decoder.blocks.0.cross_attn.q" in paths and "encoder.blocks.1.attn.v" in paths
    assert len(paths) == 2 * (2 * 2 + 2)  # encoder self, decoder self + cross, two layers each
    with pytest.raises(UserError, match="already has LoRA"):
        apply_lora(seq2seq, LoRAConfig())
    with pytest.raises(
        UserError, match="'gate' is not a module of this model; its projections are q, k, v, o, up"
    ):
        apply_lora(_model("tiny-gpt2"), LoRAConfig(target_modules=["gate"]))


def test_merge_gives_same_logits_and_saves_as_plain_model(tmp_path) -> None:
    model = _model()
    apply_lora(model, LoRAConfig(r=4, alpha=8, target_modules=LLAMA_ALL))
    _randomize(model)
    ids = _ids(model.config.vocab_size)
    with torch.no_grad():
        unmerged = model(ids)
        merge_lora(model)
        merged = model(ids)
    assert not lora_modules(model)
    assert not any(".lora_" in k or ".base." in k for k in model.state_dict())
    assert torch.allclose(merged, unmerged, atol=1e-5)
    save_model(model, tmp_path / "merged")
    with torch.no_grad():
        reloaded = load_model(tmp_path / "merged")(ids)
    assert torch.equal(reloaded, merged)
    with pytest.raises(UserError, match="no LoRA adapters to merge"):
        merge_lora(model)


def test_wrapped_module_reads_like_a_linear() -> None:
    lin = torch.nn.Linear(6, 5)
    wrapped = LoRALinear(lin, r=2, alpha=4)
    assert wrapped.weight is lin.weight and wrapped.bias is lin.bias
    assert (wrapped.in_features, wrapped.out_features, wrapped.scaling) == (6, 5, 2.0)
    assert not lin.weight.requires_grad


CASES = {
    "llama-all": ("tiny", LLAMA_ALL, {}),
    "llama-qv-mha": ("tiny", ["q", "v"], {"n_kv_heads": None, "tie_embeddings": False}),
    "gpt2-all": ("tiny-gpt2", GPT2_ALL, {}),
    "gpt2-qv-o": ("tiny-gpt2", ["q", "v", "o"], {}),  # partial c_attn, attn.c_proj but not mlp.c_proj
}


@pytest.mark.parametrize("case", list(CASES))
def test_peft_loads_what_genloop_saves_and_back(case: str, tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    name, targets, overrides = CASES[case]
    model = _model(name, **overrides)
    save_model(model, tmp_path / "base")
    config = LoRAConfig(r=4, alpha=12, target_modules=targets)
    apply_lora(model, config)
    _randomize(model)
    ids = _ids(model.config.vocab_size)
    with torch.no_grad():
        ours = model(ids)
    save_adapter(model, config, tmp_path / "adapter", base_model=str(tmp_path / "base"))
    written = json.loads((tmp_path / "adapter" / ADAPTER_CONFIG).read_text())
    assert written["peft_type"] == "LORA" and written["fan_in_fan_out"] == name.endswith("gpt2")
    if name == "tiny":
        assert written["target_modules"] == sorted(f"{t}_proj" for t in targets)
        assert written["rank_pattern"] == written["alpha_pattern"] == {}
    elif "k" not in targets:  # q and v side by side in c_attn: rank 8, same alpha / r as the others
        assert written["target_modules"] == ["attn.c_proj", "c_attn"]
        assert written["rank_pattern"] == {"c_attn": 8} and written["alpha_pattern"] == {"c_attn": 24}

    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    with torch.no_grad():
        base_logits = hf(input_ids=ids).logits
        peft_model = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
        theirs = peft_model(input_ids=ids).logits
    assert (ours - base_logits).abs().max() > 1e-2  # the adapter matters, so agreement means something
    assert (ours - theirs).abs().max() <= 1e-4

    fresh = load_model(tmp_path / "base")
    loaded = load_adapter(fresh, tmp_path / "adapter")
    assert loaded == config
    sd_ours, sd_loaded = lora_state_dict(model), lora_state_dict(fresh)
    assert sd_loaded.keys() == sd_ours.keys()
    assert all(torch.equal(sd_loaded[k], sd_ours[k]) for k in sd_ours)
    with torch.no_grad():
        assert torch.equal(fresh(ids), ours)


@pytest.mark.parametrize("name", ["tiny", "tiny-gpt2"])
def test_genloop_loads_what_peft_saves(name: str, tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    model = _model(name)
    save_model(model, tmp_path / "base")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    targets = ["q_proj", "v_proj", "down_proj"] if name == "tiny" else ["c_attn", "mlp.c_proj"]
    lora = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=targets,
        rank_pattern={targets[-1]: 2},
        init_lora_weights=False,  # random B: a non-trivial adapter
        fan_in_fan_out=name == "tiny-gpt2",
        task_type="CAUSAL_LM",
    )
    peft_model = peft.get_peft_model(hf, lora).eval()
    peft_model.save_pretrained(tmp_path / "adapter")
    ids = _ids(model.config.vocab_size)
    loaded = load_adapter(model, tmp_path / "adapter")
    assert loaded.r == 4 and loaded.alpha == 8
    assert loaded.target_modules == (["q", "v", "down"] if name == "tiny" else ["q", "k", "v", "down"])
    with torch.no_grad():
        assert (model(ids) - peft_model(input_ids=ids).logits).abs().max() <= 1e-4
    # and genloop writes it back in a form PEFT reads to the same logits
    save_adapter(model, loaded, tmp_path / "again")
    hf2 = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    with torch.no_grad():
        again = peft.PeftModel.from_pretrained(hf2, tmp_path / "again").eval()(input_ids=ids).logits
        assert (model(ids) - again).abs().max() <= 1e-4
    a, b = load_file(tmp_path / "adapter" / ADAPTER_WEIGHTS), load_file(tmp_path / "again" / ADAPTER_WEIGHTS)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_genloop_family_adapters_use_genloop_names(tmp_path) -> None:
    model = _model("tiny-seq2seq")
    config = LoRAConfig(r=2, target_modules=["q", "down"])
    apply_lora(model, config)
    _randomize(model)
    save_adapter(model, config, tmp_path / "a")
    names = load_file(tmp_path / "a" / ADAPTER_WEIGHTS).keys()
    assert "base_model.model.decoder.blocks.0.cross_attn.q.lora_A.weight" in names
    fresh = _model("tiny-seq2seq")
    assert load_adapter(fresh, tmp_path / "a") == config
    src, tgt = _ids(512), _ids(512, seed=5)
    with torch.no_grad():
        assert torch.equal(fresh(src, tgt), model(src, tgt))


def test_bad_adapter_folders_are_named(tmp_path) -> None:
    model = _model()
    config = LoRAConfig(r=4, target_modules=["q", "v"])
    apply_lora(model, config)
    save_adapter(model, config, tmp_path / "a")

    with pytest.raises(CheckpointError, match=r"has no adapter_config\.json"):
        load_adapter(_model(), tmp_path)
    f = tmp_path / "a" / ADAPTER_WEIGHTS
    tensors = load_file(f)
    gone = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    save_file({k: v for k, v in tensors.items() if k != gone}, f)
    target = _model()
    with pytest.raises(CheckpointError, match=f"tensor '{re.escape(gone)}' is missing"):
        load_adapter(target, tmp_path / "a")
    assert not lora_modules(target)  # checked before touching the model: nothing half-loaded
    extra = "base_model.model.model.layers.0.mlp.up_proj.lora_A.weight"
    save_file({**tensors, extra: torch.zeros(4, 64)}, f)
    with pytest.raises(CheckpointError, match=f"unexpected tensor '{re.escape(extra)}'"):
        load_adapter(_model(), tmp_path / "a")
    wrong = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    save_file({**tensors, wrong: torch.zeros(4, 32)}, f)
    with pytest.raises(
        CheckpointError, match=rf"'{re.escape(wrong)}' has shape \[4, 32\], .* imply \[4, 64\]"
    ):
        load_adapter(_model(), tmp_path / "a")
    with pytest.raises(UserError, match="no LoRA adapters to save"):
        save_adapter(_model(), config, tmp_path / "b")
