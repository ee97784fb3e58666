"""The engine applies a postprocessing pipeline to every completion: streamed deltas and the finished
text agree with the pipeline run on the raw answer, and a blocked answer ends with the refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from genloop.generate import Engine, SamplingParams
from genloop.postprocess import load_postprocess
from tests.serve.live import tiny_model

GREEDY = SamplingParams(max_tokens=40, temperature=0)
MASK = {"filter": {"regex": [{"name": "rep", "pattern": "tatat", "action": "mask"}]}}
BLOCK = {"filter": {"regex": [{"name": "rep", "pattern": "tatat", "action": "block"}]}}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("tiny-post"))


def _raw(model: Path) -> str:
    engine = Engine(model, dtype="float32")
    try:
        return engine.generate("the cat", GREEDY)[0].outputs[0].text
    finally:
        engine.close()


def test_streamed_and_whole_answers_equal_the_pipeline_on_the_raw_text(model: Path) -> None:
    raw = _raw(model)
    pipeline = load_postprocess(MASK)
    expected = pipeline.process(raw, truncated=True)
    assert expected.text != raw  # the rule fires on this model's answer
    engine = Engine(model, dtype="float32", postprocess=pipeline)
    try:
        pieces: list[str] = []
        request = engine.submit("the cat", GREEDY, on_delta=lambda d: pieces.append(d.text))
        request.done.wait()
        out = request.output().outputs[0]
    finally:
        engine.close()
    assert "".join(pieces) == out.text == expected.text
    assert out.finish_reason == "length"


def test_a_blocked_answer_ends_with_the_refusal_and_content_filter(model: Path) -> None:
    pipeline = load_postprocess(BLOCK)
    engine = Engine(model, dtype="float32", postprocess=pipeline)
    try:
        out = engine.generate("the cat", GREEDY)[0].outputs[0]
    finally:
        engine.close()
    assert out.finish_reason == "content_filter"
    assert out.text.endswith(pipeline.refusal) and "tatat" not in out.text
