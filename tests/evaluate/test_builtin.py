"""Built-in evaluation tasks on the recipes' fixed held-out splits: the splits partition each recipe,
agree across recipes that share an item, leave training reads, and the tasks run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genloop.data.recipes import get_recipe
from genloop.evaluate import evaluate
from genloop.evaluate.builtin import BUILTINS, MIN_TURNS
from genloop.evaluate.tasks import parse_tasks
from tests.helpers import assert_one_line_error
from tests.serve.live import tiny_model


@pytest.fixture(autouse=True)
def _shared_recipes(recipe_cache: Path) -> None:
    """Every test here reads the real recipe data from the shared download cache."""


def _prompts(recipe: str, split: str, **options) -> set[str]:
    return {e.record["prompt"] for e in get_recipe(recipe).examples(split=split, **options)}


def test_summaries_split_into_train_and_heldout_without_overlap() -> None:
    train, held, every = (_prompts("debian-summaries", s) for s in ("train", "heldout", "all"))
    assert not train & held and train | held == every
    assert 0.005 < len(held) / len(every) < 0.02, len(held)  # the recipe's 1 %


def test_heldout_packages_are_held_out_of_pretraining_text_too() -> None:
    """A package whose synopsis is a summarization answer never appears in debian-descriptions' text."""
    held = {e.origin for e in get_recipe("debian-summaries").examples(split="heldout")}
    text = {d.origin for d in get_recipe("debian-descriptions").documents()}
    held_text = {d.origin for d in get_recipe("debian-descriptions").documents(split="heldout")}
    assert held and not held & text and held <= held_text


def _pairs(recipe, split: str, direction: str = "en-de") -> set[tuple[str, str]]:
    """(English, German) of each pair the recipe's examples give."""
    records = [e.record for e in recipe.examples(split=split, direction=direction)]
    pairs = {(r["prompt"].split("\n\n", 1)[1], r["completion"]) for r in records}
    return pairs if direction == "en-de" else {(en, de) for de, en in pairs}


def _blocks(recipe, split: str) -> set[str]:
    """The "english\ngerman" blocks of the recipe's bilingual documents."""
    return {block for d in recipe.documents(split=split) for block in d.text.split("\n\n")}


def test_translation_pairs_are_held_out_in_both_directions_and_in_bilingual_text() -> None:
    recipe = get_recipe("trans-de-en")
    held = _pairs(recipe, "heldout")
    assert held and held == _pairs(recipe, "heldout", "de-en")
    train, every = _blocks(recipe, "train"), _blocks(recipe, "all")
    assert not any(f"{en}\n{de}" in train for en, de in held)
    assert all(f"{en}\n{de}" in every for en, de in held)


def test_builtin_task_files_are_fixed_and_well_formed() -> None:
    for name, builtin in BUILTINS.items():
        path = builtin.materialize()
        assert builtin.materialize() == path  # the same recipe data: the same file
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert len(rows) == builtin.size, name
        assert all(r["reference"] for r in rows)
    chats = [json.loads(line) for line in BUILTINS["conversation"].materialize().read_text().splitlines()]
    for row in chats:
        first, last = row["messages"][0], row["messages"][-1]
        assert first["role"] == last["role"] == "user" and row["reference"] in first["content"]
        assert len(row["messages"]) > MIN_TURNS and row["reference"] not in last["content"]


def test_builtin_names_and_yaml_kinds(tmp_path: Path) -> None:
    specs = parse_tasks(["summarization", "translation"])
    assert [s.name for s in specs] == ["summarization", "translation"]
    assert specs[1].metrics == ("bleu", "chrf") and specs[1].stop == ("\n",)
    suite = tmp_path / "suite.yaml"
    suite.write_text("tasks:\n  - kind: conversation\n    name: recall\n    max_tokens: 8\n")
    (spec,) = parse_tasks([str(suite)])
    assert (spec.name, spec.kind, spec.max_tokens) == ("recall", "generation", 8)
    assert "contains" in spec.metrics


def test_conversation_task_runs_on_a_chat_model(tmp_path: Path) -> None:
    model = tiny_model(tmp_path, max_seq_len=1024)
    result = evaluate(model, ["conversation"], limit=2, max_tokens=4, out=tmp_path / "out")
    task = result["tasks"]["conversation"]
    assert task["n"] == 2 and 0 <= task["metrics"]["contains"] <= 1


def test_unknown_task_lists_the_builtins(cli, tmp_path: Path) -> None:
    code, _, err = cli("eval", tiny_model(tmp_path), "--tasks", "summarise")
    assert code == 2
    assert_one_line_error(err, "unknown task 'summarise'", "summarization")
