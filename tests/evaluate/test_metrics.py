"""Metrics against the libraries they stand for, and task-file parsing with its one-line errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from genloop.errors import UserError
from genloop.evaluate import bleu, chrf, exact_match, parse_tasks, rouge, score_generations, token_f1
from genloop.evaluate.tasks import load_choices, load_documents, load_generations

WORDS = [
    *("the", "a", "cat", "dog", "sat", "ran", "on", "under", "mat", "log", "big", "small", "red"),
    *("blue", "river", "house", "sun", "moon", "quickly"),
]


def _corpus(seed: int, n: int, max_refs: int) -> tuple[list[str], list[list[str]]]:
    """Hypotheses that share some words with their references, and 1..max_refs references each."""
    rng = random.Random(seed)
    hyps, refs = [], []
    for _ in range(n):
        ref = rng.choices(WORDS, k=rng.randint(4, 14))
        hyp = [w if rng.random() < 0.6 else rng.choice(WORDS) for w in ref][: rng.randint(3, len(ref))]
        hyps.append(" ".join(hyp) + rng.choice(["", ".", "!"]))
        refs.append(
            [" ".join(ref)]
            + [" ".join(rng.sample(ref, len(ref))) for _ in range(rng.randint(0, max_refs - 1))]
        )
    return hyps, refs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bleu_and_chrf_equal_sacrebleu_corpus_scores(seed: int) -> None:
    hyps, refs = _corpus(seed, 40, max_refs=1)
    streams = [[r[0] for r in refs]]
    assert bleu(hyps, refs) == sacrebleu.corpus_bleu(hyps, streams).score
    assert chrf(hyps, refs) == sacrebleu.corpus_chrf(hyps, streams).score
    assert 0 < bleu(hyps, refs) < 100


def test_bleu_with_a_varying_number_of_references_matches_sacrebleu() -> None:
    hyps, refs = _corpus(7, 30, max_refs=3)
    assert len({len(r) for r in refs}) > 1  # the case where streams need None padding
    width = max(len(r) for r in refs)
    streams = [[r[i] if i < len(r) else None for r in refs] for i in range(width)]
    assert bleu(hyps, refs) == pytest.approx(sacrebleu.corpus_bleu(hyps, streams).score, abs=1e-12)
    assert chrf(hyps, refs) == pytest.approx(sacrebleu.corpus_chrf(hyps, streams).score, abs=1e-12)
    assert bleu(hyps, refs) > bleu(hyps, [[r[0]] for r in refs])  # more references can only help
    assert bleu(["the cat sat on the mat"], [["the cat sat on the mat"]]) == pytest.approx(100.0)


def test_exact_match_and_f1_follow_squad_normalization() -> None:
    assert exact_match("The Cat.", ["cat"]) == 1.0
    assert exact_match("  an apple!", ["Apple"]) == 1.0
    assert exact_match("cats", ["cat"]) == 0.0
    assert exact_match("Paris", ["London", "paris"]) == 1.0
    assert token_f1("the big red dog", ["a red dog"]) == pytest.approx(2 * (2 / 3) * 1.0 / (2 / 3 + 1.0))
    assert token_f1("blue", ["red"]) == 0.0
    assert token_f1("", [""]) == 1.0 and token_f1("", ["x"]) == 0.0
    assert token_f1("red dog", ["green cat", "red dog"]) == 1.0  # best reference


def test_rouge_is_rouge_score_fmeasure_best_reference_and_mean() -> None:
    hyps, refs = _corpus(3, 12, max_refs=2)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    expected = {
        k: sum(max(scorer.score(r, h)[k].fmeasure for r in rs) for h, rs in zip(hyps, refs, strict=True))
        / len(hyps)
        for k in ("rouge1", "rouge2", "rougeL")
    }
    got = rouge(hyps, refs)
    assert got == pytest.approx(expected)
    assert rouge(["the cat sat"], [["the cat sat"]]) == pytest.approx({"rouge1": 1, "rouge2": 1, "rougeL": 1})
    scores = score_generations(["exact_match", "rouge", "bleu"], hyps, refs)
    assert set(scores) == {"exact_match", "rouge1", "rouge2", "rougeL", "bleu"}


# ----------------------------------------------------------------------------------- task files


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_task_files_parse_with_answer_index_or_text_and_limit(tmp_path: Path) -> None:
    mc = _jsonl(
        tmp_path / "mc.jsonl",
        [
            {"question": "Q1", "choices": ["a", "b"], "answer": 1},
            {"question": "Q2", "choices": ["x", "y", "z"], "answer": "z"},
            {"question": "Q3", "choices": ["x", "y"], "answer": 0},
        ],
    )
    items = load_choices(mc, limit=2)
    assert [(i.question, i.gold) for i in items] == [("Q1", 1), ("Q2", 2)]
    gen = _jsonl(
        tmp_path / "g.jsonl", [{"prompt": "p", "reference": "r"}, {"prompt": "q", "references": ["s", "t"]}]
    )
    assert [g.references for g in load_generations(gen)] == [["r"], ["s", "t"]]
    docs = _jsonl(tmp_path / "d.jsonl", [{"text": "one"}, {"text": "two"}])
    assert [d.text for d in load_documents(docs)] == ["one", "two"]
    (tmp_path / "t.txt").write_text("a whole file")
    assert [d.text for d in load_documents(tmp_path / "t.txt")] == ["a whole file"]


def test_yaml_tasks_resolve_paths_beside_the_file_and_take_options(tmp_path: Path) -> None:
    _jsonl(tmp_path / "g.jsonl", [{"prompt": "p", "reference": "r"}])
    (tmp_path / "suite.yaml").write_text(
        "tasks:\n  - {name: qa, kind: generation, path: g.jsonl, metrics: [f1], max_tokens: 5,\n"
        '     stop: ["\\n"]}\n'
    )
    (spec,) = parse_tasks([str(tmp_path / "suite.yaml")])
    assert (spec.name, spec.path, spec.metrics, spec.max_tokens, spec.stop) == (
        "qa",
        (tmp_path / "g.jsonl").resolve(),
        ("f1",),
        5,
        ("\n",),
    )
    (plain,) = parse_tasks([f"generation:{tmp_path / 'g.jsonl'}"])
    assert plain.name == "generation:g" and "bleu" in plain.metrics


@pytest.mark.parametrize(
    ("rows", "needles"),
    [
        (
            [{"question": "Q", "choices": ["a", "b"], "answer": 0}, {"question": "Q", "choices": ["a", "b"]}],
            ["line 2", "'answer'"],
        ),
        ([{"choices": ["a", "b"], "answer": 0}], ["line 1", "'question'"]),
        ([{"question": "Q", "choices": ["a", "b"], "answer": "c"}], ["line 1", "'answer'"]),
        ([{"question": "Q", "choices": "ab", "answer": 0}], ["line 1", "'choices'"]),
    ],
)
def test_a_bad_multiple_choice_row_names_its_line_and_field(
    tmp_path: Path, rows: list, needles: list
) -> None:
    path = _jsonl(tmp_path / "mc.jsonl", rows)
    with pytest.raises(UserError) as err:
        load_choices(path)
    for needle in needles:
        assert needle in str(err.value)


def test_bad_task_names_and_definitions_are_user_errors(tmp_path: Path) -> None:
    gen = _jsonl(tmp_path / "g.jsonl", [{"prompt": "p"}])
    with pytest.raises(UserError, match="line 1: missing field 'reference'"):
        load_generations(gen)
    with pytest.raises(UserError, match="unknown task kind 'summarize'"):
        parse_tasks([f"summarize:{gen}"])
    with pytest.raises(UserError, match="unknown task 'nonsense'"):
        parse_tasks(["nonsense"])
    with pytest.raises(UserError, match="does not exist"):
        parse_tasks([f"generation:{tmp_path / 'missing.jsonl'}"])
    (tmp_path / "bad.yaml").write_text("kind: generation\npath: g.jsonl\nmetrics: [meteor]\n")
    with pytest.raises(UserError, match="unknown metric meteor"):
        parse_tasks([str(tmp_path / "bad.yaml")])
    with pytest.raises(UserError, match="two tasks are named"):
        parse_tasks([f"generation:{gen}", f"generation:{gen}"])
