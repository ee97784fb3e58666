"""Postprocessing of generated text: formatting, filtering and PII redaction, whole and streamed.

`load_postprocess(config)` builds a `Pipeline`; `pipeline.process(text)` handles a whole answer,
`pipeline.stream()` one streamed answer (feed pieces, then finish). See pipeline.py for the stages.
"""

from genloop.postprocess.config import PostprocessConfig
from genloop.postprocess.pipeline import Event, Pipeline, Result, StreamState, load_postprocess

__all__ = ["Event", "Pipeline", "PostprocessConfig", "Result", "StreamState", "load_postprocess"]
