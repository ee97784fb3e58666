"""Model directories on disk: the native/Hugging Face layout, registry names."""

from genloop.atomic import atomic_dir
from genloop.checkpoint.directory import load_model, read_config, read_weights, save_model, save_state
from genloop.checkpoint.hf import config_from_hf, config_to_hf, family
from genloop.checkpoint.registry import list_models, resolve

__all__ = [
    "atomic_dir",
    "config_from_hf",
    "config_to_hf",
    "family",
    "list_models",
    "load_model",
    "read_config",
    "read_weights",
    "resolve",
    "save_model",
    "save_state",
]
