"""The harness on a tiny model: log-likelihood scores against a hand computation from the model's
logits, perplexity against exp(mean CE), and `genloop eval` end to end with its bad-input errors."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from genloop.checkpoint import load_model
from genloop.data.shards import Shards
from genloop.evaluate import evaluate
from genloop.evaluate.loglik import encode_pair
from genloop.preprocess import Tokenizer
from tests.helpers import assert_one_line_error
from tests.serve.live import tiny_model
from tests.train.kit import prose_shards

QUESTIONS = [
    {"question": "the cat sat on the", "choices": ["mat", "river", "blue sun"], "answer": 0},
    {"question": "a big dog ran ", "choices": ["happy", "on a log", "moon"], "answer": "moon"},
    {"question": "the red house", "choices": ["sat", "small tree", "ran"], "answer": 1},
    {"question": "", "choices": ["the cat", "dog"], "answer": 1},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("tiny-eval"), max_seq_len=64)


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _hand_logprob(model: torch.nn.Module, tok: Tokenizer, context: str, continuation: str) -> float:
    """lm-eval's recipe written out: whole = encode(ctx + cont), score the tokens after encode(ctx)."""
    if context:
        n = len(context) - len(context.rstrip())
        ctx, cont = (context[:-n], context[-n:] + continuation) if n else (context, continuation)
        whole, n_ctx = tok.encode(ctx + cont), len(tok.encode(ctx))
    else:
        first = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        whole, n_ctx = [first, *tok.encode(continuation, add_special_tokens=False)], 1
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([whole[:-1]])).double(), dim=-1)[0]
    return float(sum(logp[t - 1, whole[t]] for t in range(n_ctx, len(whole))))


def test_multiple_choice_acc_and_acc_norm_match_a_hand_computation(model_dir: Path, tmp_path: Path) -> None:
    task = _jsonl(tmp_path / "mc.jsonl", QUESTIONS)
    result = evaluate(model_dir, [f"multiple_choice:{task}"], out=tmp_path / "out", batch_size=3)
    cached = json.loads((tmp_path / "out" / "tasks" / "multiple_choice_mc.json").read_text())
    model, tok = load_model(model_dir, dtype=torch.float32), Tokenizer.load(model_dir)
    accs, norms = [], []
    for row, example in zip(QUESTIONS, cached["examples"], strict=True):
        lls = [_hand_logprob(model, tok, row["question"], " " + c) for c in row["choices"]]
        assert example["logprobs"] == pytest.approx(lls, abs=1e-4)
        gold = row["answer"] if isinstance(row["answer"], int) else row["choices"].index(row["answer"])
        accs.append(float(np.argmax(lls) == gold))
        norms.append(float(np.argmax(np.array(lls) / [len(c) for c in row["choices"]]) == gold))
    metrics = result["tasks"]["multiple_choice:mc"]["metrics"]
    assert metrics["acc"] == pytest.approx(sum(accs) / len(accs))
    assert metrics["acc_norm"] == pytest.approx(sum(norms) / len(norms))


def test_encode_pair_moves_trailing_space_and_conditions_empty_context_on_bos(model_dir: Path) -> None:
    tok = Tokenizer.load(model_dir)
    pair = encode_pair(tok, "a big dog ran ", " moon")
    assert tok.decode(pair.continuation) == "  moon"  # the context's space joined the delimiter
    empty = encode_pair(tok, "", " the cat")
    assert empty.context == [tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id]
    assert tok.decode(empty.continuation) == " the cat"


def test_perplexity_equals_exp_of_the_mean_cross_entropy(model_dir: Path, tmp_path: Path) -> None:
    texts = ["the cat sat on the mat and the dog ran", "happy sun " * 40]  # the second needs 2+ windows
    docs = _jsonl(tmp_path / "docs.jsonl", [{"text": t} for t in texts])
    (tmp_path / "suite.yaml").write_text(f"name: ppl\nkind: perplexity\npath: {docs}\nseq_len: 32\n")
    result = evaluate(model_dir, [str(tmp_path / "suite.yaml")], out=tmp_path / "out")
    metrics = result["tasks"]["ppl"]["metrics"]
    model, tok = load_model(model_dir, dtype=torch.float32), Tokenizer.load(model_dir)
    nats, count = 0.0, 0
    for text in texts:
        first = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        seq = [first, *tok.encode(text, add_special_tokens=False)]
        for start in range(0, len(seq) - 1, 32):
            window = seq[start : start + 33]
            inp, tgt = torch.tensor([window[:-1]]), torch.tensor(window[1:])
            with torch.no_grad():
                nats += float(torch.nn.functional.cross_entropy(model(inp)[0].double(), tgt, reduction="sum"))
            count += len(window) - 1
    assert count == metrics["tokens"] and count > 64
    assert metrics["perplexity"] == pytest.approx(math.exp(nats / count), rel=1e-4)
    n_bytes = sum(len(t.encode()) for t in texts)
    assert metrics["bits_per_byte"] == pytest.approx(nats / math.log(2) / n_bytes, rel=1e-4)


def test_shard_perplexity_scores_the_validation_stream_window_by_window(
    model_dir: Path, tmp_path: Path
) -> None:
    shards = prose_shards(tmp_path, tokenizer=str(model_dir))
    result = evaluate(model_dir, [f"perplexity:{shards}"], out=tmp_path / "out", limit=3)
    metrics = result["tasks"][f"perplexity:{shards.name}"]["metrics"]
    stream = np.concatenate([np.asarray(a, dtype=np.int64) for a in Shards.open(shards).arrays("validation")])
    model, tok = load_model(model_dir, dtype=torch.float32), Tokenizer.load(model_dir)
    seq_len = model.config.max_seq_len
    inputs = torch.from_numpy(stream[: 3 * seq_len]).view(3, seq_len)
    targets = torch.from_numpy(stream[1 : 3 * seq_len + 1])
    with torch.no_grad():
        mean_ce = torch.nn.functional.cross_entropy(model(inputs).flatten(0, 1).double(), targets)
    assert metrics["tokens"] == 3 * seq_len
    assert metrics["perplexity"] == pytest.approx(math.exp(float(mean_ce)), rel=1e-4)
    text = tok.decode(stream[1 : 3 * seq_len + 1].tolist(), skip_special_tokens=True)
    assert metrics["bytes"] == len(text.encode())


def test_genloop_eval_writes_results_report_and_chart_and_resumes(
    model_dir: Path, tmp_path: Path, cli
) -> None:
    mc = _jsonl(tmp_path / "mc.jsonl", QUESTIONS)
    gen = _jsonl(
        tmp_path / "gen.jsonl",
        [
            {"prompt": "the cat", "reference": "sat on the mat"},
            {"prompt": "a dog", "references": ["ran", "sat"]},
        ],
    )
    (tmp_path / "prose.txt").write_text("the sun and the moon over the river " * 5)
    tasks = [f"multiple_choice:{mc}", f"generation:{gen}", f"perplexity:{tmp_path / 'prose.txt'}"]
    out = tmp_path / "run"
    code, stdout, stderr = cli(
        "eval", model_dir, "--tasks", *tasks, "--out", out, "--max-tokens", "6", "--seed", "3"
    )
    assert code == 0, stderr
    for name in ("results.json", "report.md", "scores.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "scores.png").read_bytes()[:4] == b"\x89PNG"
    results = json.loads((out / "results.json").read_text())
    assert set(results["tasks"]) == {"multiple_choice:mc", "generation:gen", "perplexity:prose"}
    gen_metrics = results["tasks"]["generation:gen"]["metrics"]
    assert {"bleu", "chrf", "rouge1", "rouge2", "rougeL", "exact_match", "f1"} <= set(gen_metrics)
    assert "| multiple_choice:mc | multiple_choice | 4 | acc |" in (out / "report.md").read_text()
    assert "(cached)" not in stdout

    code, again, _ = cli(
        "eval", model_dir, "--tasks", *tasks, "--out", out, "--max-tokens", "6", "--seed", "3"
    )
    assert code == 0 and again.count("(cached)") == 3
    again_results = json.loads((out / "results.json").read_text())
    assert again_results["tasks"]["generation:gen"]["metrics"] == gen_metrics

    fresh = tmp_path / "fresh"  # same seed, new folder: the same predictions (determinism, no cache)
    assert (
        cli("eval", model_dir, "--tasks", tasks[1], "--out", fresh, "--max-tokens", "6", "--seed", "3")[0]
        == 0
    )
    first = json.loads((out / "tasks" / "generation_gen.json").read_text())["examples"]
    second = json.loads((fresh / "tasks" / "generation_gen.json").read_text())["examples"]
    assert [e["prediction"] for e in first] == [e["prediction"] for e in second]


def test_bad_input_is_one_line_and_exit_code_2(model_dir: Path, tmp_path: Path, cli) -> None:
    bad = _jsonl(tmp_path / "bad.jsonl", [QUESTIONS[0], {"question": "q", "answer": 0}])
    code, _, err = cli("eval", model_dir, "--tasks", f"multiple_choice:{bad}", "--out", tmp_path / "o")
    assert code == 2
    assert_one_line_error(err, "line 2", "missing field 'choices'")
    code, _, err = cli("eval", model_dir, "--tasks", f"translation:{bad}")
    assert code == 2
    assert_one_line_error(err, "unknown task kind 'translation'")
    code, _, err = cli("eval", tmp_path / "no-such-model", "--tasks", f"multiple_choice:{bad}")
    assert code == 2
    assert_one_line_error(err, "no-such-model", "not found")


def test_a_suite_that_generates_scores_on_the_engine_thread(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scoring on the caller's thread would give it a second OpenMP team beside the engine's, and then
    libgomp stops spin-waiting and both run slower (genloop.evaluate.runner._Run.score). Without a
    generation task there is no engine, and scoring stays on the caller's thread."""
    from genloop.evaluate import runner

    seen: list[str] = []
    real = runner.loglik.continuation_logprobs

    def recording(*args: Any, **kwargs: Any) -> Any:
        seen.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(runner.loglik, "continuation_logprobs", recording)
    mc = _jsonl(tmp_path / "mc.jsonl", QUESTIONS)
    gen = _jsonl(tmp_path / "gen.jsonl", [{"prompt": "the cat", "reference": "sat on the mat"}])
    tasks = [f"multiple_choice:{mc}", f"generation:{gen}"]
    both = evaluate(model_dir, tasks, out=tmp_path / "a", max_tokens=4)
    alone = evaluate(model_dir, [f"multiple_choice:{mc}"], out=tmp_path / "b")
    assert seen == ["genloop-engine", threading.current_thread().name]
    assert both["tasks"]["multiple_choice:mc"]["metrics"] == alone["tasks"]["multiple_choice:mc"]["metrics"]
