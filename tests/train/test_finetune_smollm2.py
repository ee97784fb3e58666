"""Transfer learning on the real model: LoRA SFT of SmolLM2-135M-Instruct on real conversations
(the chitchat recipe) lowers validation loss on held-out conversations, and the adapter it saves
loads in `peft` on transformers' copy of the same weights with the same logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from genloop.checkpoint import load_model
from genloop.checkpoint.adapter import load_adapter
from genloop.config import RunConfig, validate
from genloop.data.examples import build_examples
from genloop.preprocess.tokenizer import Tokenizer
from genloop.train.objectives import causal_lm
from genloop.train.run import run_training
from genloop.train.sft_data import SFTDataset


@torch.no_grad()
def sft_loss(model: torch.nn.Module, data: SFTDataset, batches: int) -> float:
    model.eval()
    total = count = 0.0
    for i in range(min(batches, len(data))):
        loss, n = causal_lm(model, data.batch(i))
        total, count = total + float(loss) * n, count + n
    return total / count


@pytest.mark.slow
def test_lora_sft_lowers_held_out_loss_and_loads_in_peft(
    smollm2: Path, tmp_path: Path, recipe_cache: Path
) -> None:
    chat = tmp_path / "chat.jsonl"
    build_examples("sft", chat, ["chitchat:limit=260"], [])
    lines = chat.read_text().splitlines()
    (tmp_path / "train.jsonl").write_text("\n".join(lines[:220]) + "\n")
    (tmp_path / "val.jsonl").write_text("\n".join(lines[220:]) + "\n")
    tokenizer = Tokenizer.load(smollm2)
    val = SFTDataset(tmp_path / "val.jsonl", tokenizer, 256, 4, seed=0, rank=0, world_size=1)
    base = load_model(smollm2)
    before = sft_loss(base, val, 6)

    config = validate(RunConfig, {
        "data": {"train_file": str(tmp_path / "train.jsonl"), "validation_file": str(tmp_path / "val.jsonl"),
                 "seq_len": 256},
        "train": {"objective": "sft", "init_from": str(smollm2), "max_steps": 24, "batch_size": 4,
                  "learning_rate": 1e-3, "warmup_steps": 3, "eval_every": 24, "eval_batches": 6,
                  "save_every": 24, "dtype": "float32",
                  "lora": {"r": 8, "alpha": 16, "target_modules": ["q", "k", "v", "o"]}},
    })  # fmt: skip
    result = run_training(config, tmp_path / "run", progress=False)
    adapter = tmp_path / "run" / "model"
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "LORA"

    tuned = load_model(smollm2)
    load_adapter(tuned, adapter)
    after = sft_loss(tuned, val, 6)
    print(f"held-out SFT loss {before:.4f} -> {after:.4f}; trainer's validation loss {result.val_loss:.4f}")
    assert after < before - 0.05
    assert abs(after - result.val_loss) < 1e-3

    import transformers
    from peft import PeftModel

    hf = transformers.AutoModelForCausalLM.from_pretrained(smollm2, torch_dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(hf, adapter).eval()
    ids = torch.tensor(
        [tokenizer.encode("Hello! How was your weekend? I went hiking.", add_special_tokens=False)]
    )
    with torch.no_grad():
        ours = tuned.eval()(ids)
        theirs = peft_model(input_ids=ids).logits
    assert torch.allclose(ours, theirs, atol=1e-4), float((ours - theirs).abs().max())
