"""The LLM itself: embeddings, attention, encoder and decoder stacks, output heads, presets."""

from genloop.model.attention import Attention, DynamicCache, KVCache
from genloop.model.presets import PRESETS, preset
from genloop.model.stats import ModelStats, model_stats
from genloop.model.transformer import DecoderLM, EncoderDecoderLM, EncoderModel, Model, build_model

__all__ = [
    "PRESETS",
    "Attention",
    "DecoderLM",
    "DynamicCache",
    "EncoderDecoderLM",
    "EncoderModel",
    "KVCache",
    "Model",
    "ModelStats",
    "build_model",
    "model_stats",
    "preset",
]
