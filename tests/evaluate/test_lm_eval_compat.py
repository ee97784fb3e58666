"""EleutherAI's lm-eval against genloop: the server's echoed prompt log-probs (what `local-completions`
scores with) against the model's own, lm-eval's `local-completions` run on `genloop serve` giving
genloop eval's scores, and lm-eval's `hf` model on transformers' copy of SmolLM2 agreeing with
genloop eval on a 50-question task (examples/lm_eval)."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch

from genloop.checkpoint import load_model
from genloop.evaluate import evaluate
from genloop.evaluate.loglik import encode_pair
from genloop.preprocess import Tokenizer
from tests.serve.live import live_server, tiny_model

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "lm_eval"
QUESTIONS = [
    {"question": "the cat sat on the", "choices": ["mat", "river", "blue sun"], "answer": 0},
    {"question": "a big dog ran", "choices": ["happy", "on a log", "moon"], "answer": 2},
    {"question": "the red house", "choices": ["sat", "small tree", "ran"], "answer": 1},
    {"question": "the sun and the", "choices": ["moon", "river"], "answer": 0},
    {"question": "a small", "choices": ["dog ran on a log", "cat", "tree"], "answer": 1},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("tiny-lmeval"), max_seq_len=64)


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("home")
    with live_server(model_dir, home, "--dtype", "float32", "--max-batch", "4") as base:
        yield base


def _lm_eval(args: list[str], out: Path, task_yaml: Path, task: str) -> tuple[dict, list[dict]]:
    """Run the lm_eval CLI offline; its aggregate metrics and per-document samples."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "lm_eval", *args, "--include_path", str(task_yaml.parent), "--tasks", task]
    cmd += ["--output_path", str(out), "--log_samples"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(Path(sorted(glob.glob(f"{out}/**/results_*.json", recursive=True))[-1]).read_text())
    samples_file = sorted(glob.glob(f"{out}/**/samples_{task}_*.jsonl", recursive=True))[-1]
    samples = [json.loads(line) for line in Path(samples_file).read_text().splitlines()]
    return results["results"][task], sorted(samples, key=lambda s: s["doc_id"])


def _task_files(tmp: Path, rows: list[dict], task: str) -> tuple[Path, Path]:
    data = tmp / f"{task}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = (EXAMPLE / "facts50.yaml").read_text()
    text = text.replace("genloop_facts50", task).replace("examples/lm_eval/facts50.jsonl", str(data))
    (tmp / f"{task}.yaml").write_text(text)
    return data, tmp / f"{task}.yaml"


def _agree(ours: dict, samples: list[dict], lm: dict, tol: float) -> None:
    """Same accuracy, and every choice's log-likelihood within `tol` nats."""
    for doc, mine in zip(samples, ours["examples"], strict=True):
        theirs = [float(resp[0]) for resp in doc["filtered_resps"]]
        assert theirs == pytest.approx(mine["logprobs"], abs=tol), doc["doc_id"]
    assert lm["acc,none"] == pytest.approx(ours["metrics"]["acc"])
    assert lm["acc_norm,none"] == pytest.approx(ours["metrics"]["acc_norm"])


def test_echo_logprobs_are_the_models_own(server: str, model_dir: Path) -> None:
    """`echo` + `logprobs` on a batch of token-id prompts: null first, then log p(token | before)."""
    tok = Tokenizer.load(model_dir)
    prompts = [tok.encode("the cat sat on the mat"), tok.encode("a big dog"), tok.encode("red")]
    body = {"model": "tiny-chat", "prompt": prompts, "max_tokens": 1, "logprobs": 1, "echo": True}
    reply = httpx.post(f"{server}/v1/completions", json={**body, "temperature": 0}, timeout=60).json()
    model = load_model(model_dir, dtype=torch.float32).eval()
    for ids, choice in zip(prompts, sorted(reply["choices"], key=lambda c: c["index"]), strict=True):
        lp = choice["logprobs"]
        assert len(lp["token_logprobs"]) == len(ids) + 1  # the prompt, then exactly one generated token
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).double()[0], dim=-1)
        expected = [float(logp[t - 1, ids[t]]) for t in range(1, len(ids))]
        assert lp["token_logprobs"][1 : len(ids)] == pytest.approx(expected, abs=1e-4)
        for t in range(1, len(ids)):  # top-1 is the argmax at that position
            assert max(lp["top_logprobs"][t].values()) == pytest.approx(float(logp[t - 1].max()), abs=1e-4)
        assert choice["text"].startswith(tok.decode(ids))
    info = httpx.get(f"{server}/tokenizer_info", timeout=10).json()
    assert info["eos_token"] == tok.eos_token and info["chat_template"]


def test_echo_scores_match_genloop_eval_pairs(server: str, model_dir: Path) -> None:
    """The sum over a continuation's echoed log-probs is genloop eval's score of that choice."""
    tok = Tokenizer.load(model_dir)
    pair = encode_pair(tok, "the cat sat on the", " mat")
    body = {"model": "tiny-chat", "prompt": [pair.context + pair.continuation], "echo": True}
    reply = httpx.post(
        f"{server}/v1/completions", json={**body, "max_tokens": 1, "logprobs": 0}, timeout=60
    ).json()
    lp = reply["choices"][0]["logprobs"]
    assert lp["top_logprobs"] is None  # logprobs=0: the chosen tokens only
    score = sum(lp["token_logprobs"][len(pair.context) : -1])
    model = load_model(model_dir, dtype=torch.float32).eval()
    whole = pair.context + pair.continuation
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([whole[:-1]])).double()[0], dim=-1)
    expected = sum(float(logp[t - 1, whole[t]]) for t in range(len(pair.context), len(whole)))
    assert score == pytest.approx(expected, abs=1e-4)


@pytest.mark.slow
def test_lm_eval_local_completions_scores_equal_genloop_eval(
    server: str, model_dir: Path, tmp_path: Path
) -> None:
    """lm-eval's `local-completions` (remote tokenizer, batched token-id requests) on `genloop serve`
    gives genloop eval's accuracy and the same log-likelihood for every choice."""
    data, yaml_file = _task_files(tmp_path, QUESTIONS, "genloop_tiny_mc")
    args = ["--model", "local-completions", "--batch_size", "4"]
    args += ["--model_args", f"base_url={server}/v1/completions,model=tiny-chat,tokenizer_backend=remote"]
    lm, samples = _lm_eval(args, tmp_path / "lm", yaml_file, "genloop_tiny_mc")
    evaluate(model_dir, [f"multiple_choice:{data}"], out=tmp_path / "ours")
    ours = json.loads((tmp_path / "ours" / "tasks" / "multiple_choice_genloop_tiny_mc.json").read_text())
    _agree(ours, samples, lm, tol=1e-3)


@pytest.mark.slow
def test_facts50_matches_lm_eval_hf_on_transformers_weights(
    smollm2: Path, smollm2_gguf: Path, tmp_path: Path
) -> None:
    """The acceptance's 50-question parity: lm-eval's `hf` model loads the same GGUF file through
    transformers; genloop eval scores its own import of it. Same accuracy, near-equal log-likelihoods."""
    args = ["--model", "hf", "--batch_size", "16", "--device", "cpu"]
    weights = f"pretrained={smollm2_gguf.parent},gguf_file={smollm2_gguf.name},dtype=float32"
    lm, samples = _lm_eval(
        [*args, "--model_args", weights], tmp_path / "lm", EXAMPLE / "facts50.yaml", "genloop_facts50"
    )
    evaluate(smollm2, [f"multiple_choice:{EXAMPLE / 'facts50.jsonl'}"], out=tmp_path / "ours")
    ours = json.loads((tmp_path / "ours" / "tasks" / "multiple_choice_facts50.json").read_text())
    assert len(samples) == ours["n"] == 50
    _agree(ours, samples, lm, tol=2e-3)
    print(
        f"\nfacts50: lm-eval hf acc={lm['acc,none']:.2f}, genloop acc={ours['metrics']['acc']:.2f}",
        file=sys.__stderr__,
    )
