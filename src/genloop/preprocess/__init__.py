"""The preprocessing unit: text normalization, the byte-level BPE tokenizer, and chat templates.

Kept together because all three decide what token ids a model sees; they must agree between
training, evaluation and serving.
"""

from genloop.preprocess.chat_template import (
    DEFAULT_CHAT_TEMPLATE,
    ChatTemplateError,
    compile_chat_template,
    render_chat_template,
    validate_messages,
)
from genloop.preprocess.corpus import MB, TEXT_SUFFIXES, TrainStats
from genloop.preprocess.normalize import STEPS, Pipeline, Step, make_spell_corrector, register_step
from genloop.preprocess.tokenizer import Tokenizer, special_tokens

__all__ = [
    "DEFAULT_CHAT_TEMPLATE",
    "MB",
    "STEPS",
    "TEXT_SUFFIXES",
    "ChatTemplateError",
    "Pipeline",
    "Step",
    "Tokenizer",
    "TrainStats",
    "compile_chat_template",
    "make_spell_corrector",
    "register_step",
    "render_chat_template",
    "special_tokens",
    "validate_messages",
]
