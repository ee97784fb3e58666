"""`genloop import DIR`: Hugging Face directories written by transformers, single and sharded."""

from __future__ import annotations

import json

import pytest
import torch

from genloop.checkpoint import load_model, resolve
from genloop.checkpoint.registry import list_models
from tests.helpers import assert_one_line_error
from tests.model.test_hf_parity import HF_CONFIGS, _batch, _max_diff_on_real_tokens

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
def test_import_matches_transformers(cli, tmp_path, kind: str, sharded: bool) -> None:
    torch.manual_seed(4)
    hf = transformers.AutoModelForCausalLM.from_config(HF_CONFIGS[kind]()).eval()
    hf.save_pretrained(tmp_path / "hf", max_shard_size="40KB" if sharded else "5GB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file() == sharded
    code, _, err = cli("import", tmp_path / "hf", "--name", f"{kind}-x")
    assert code == 0, err
    model = load_model(resolve(f"{kind}-x"))
    ids, mask = _batch(300, seed=5)
    with torch.no_grad():
        diff = _max_diff_on_real_tokens(
            model(ids, attention_mask=mask), hf(input_ids=ids, attention_mask=mask).logits, mask
        )
    assert diff <= 1e-4
    meta = json.loads((resolve(f"{kind}-x") / "genloop.json").read_text())
    assert meta["source"]["kind"] == "huggingface"


def test_import_keeps_the_tokenizer_and_bfloat16(cli, tmp_path) -> None:
    from genloop.config import TokenizerConfig
    from genloop.preprocess import Tokenizer

    tok = Tokenizer.train(
        ["hello world"] * 50 + ["naïve 東京 text"] * 50, TokenizerConfig(vocab_size=300), progress=False
    )
    cfg = HF_CONFIGS["llama"]()
    hf = transformers.AutoModelForCausalLM.from_config(cfg)
    hf.save_pretrained(tmp_path / "hf")
    tok.save(tmp_path / "hf")
    assert cli("import", tmp_path / "hf", "--name", "withtok", "--dtype", "bfloat16")[0] == 0
    assert load_model(resolve("withtok")).dtype == torch.bfloat16
    assert Tokenizer.load(resolve("withtok")).encode("naïve 東京") == tok.encode("naïve 東京")


def test_directory_without_weights_or_config(cli, tmp_path) -> None:
    hf = transformers.AutoModelForCausalLM.from_config(HF_CONFIGS["llama"]())
    hf.save_pretrained(tmp_path / "noweights")
    (tmp_path / "noweights" / "model.safetensors").unlink()
    code, _, err = cli("import", tmp_path / "noweights")
    assert code == 2
    assert_one_line_error(err, "has no model.safetensors")
    (tmp_path / "noconfig").mkdir()
    code, _, err = cli("import", tmp_path / "noconfig")
    assert code == 2
    assert_one_line_error(err, "has no config.json", "not a Hugging Face model directory")
    assert list_models() == []
