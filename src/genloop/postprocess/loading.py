"""Where a pipeline comes from on a command line: `default`, `off`, or a YAML file (a serve config
whose `postprocess:` section is used, or a file holding only that section)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from genloop.errors import ConfigError
from genloop.postprocess.pipeline import Pipeline, load_postprocess


def read_section(path: str) -> dict[str, Any]:
    """The `postprocess:` section of a YAML file, or the whole file when it is only that section."""
    from genloop.config import read_yaml

    data = read_yaml(path)
    section = data.get("postprocess", data if {"format", "filter"} & set(data) else {})
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: `postprocess` must be a mapping with `format` and/or `filter`")
    return section


def pipeline_from(spec: str | None, special_tokens: Sequence[str] = ()) -> Pipeline | None:
    """`off` (or None): no pipeline; `default`: the default one; anything else: a YAML file."""
    if spec is None or spec == "off":
        return None
    data = None if spec == "default" else read_section(spec)
    return load_postprocess(data, special_tokens=special_tokens)
