"""Render chat templates exactly as Hugging Face transformers' `apply_chat_template` does.

A model's chat template is data that travels with it (tokenizer_config.json), written for
transformers' renderer. If genloop rendered it differently, a model fine-tuned here would see
prompts at inference time (in transformers, vLLM, llama.cpp) that differ from its training data. So
the environment mirrors transformers': a sandbox (templates from the internet are untrusted code),
trim_blocks/lstrip_blocks, loop controls, a `tojson` that does not HTML-escape, `raise_exception`,
`strftime_now`; messages whose values are None lose those keys, and `tools`/`documents` default to
None.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from genloop.errors import TokenizerError, UserError

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""ChatML, the format most open chat models use; its markers are TokenizerConfig.chat_tokens."""


class ChatTemplateError(TokenizerError):
    """A chat template that does not compile, or refuses the conversation (`raise_exception`)."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _raise_exception(message: str) -> None:
    """Templates call this to reject a conversation (e.g. roles out of order); the caller can fix it."""
    raise ChatTemplateError(f"chat template rejected the conversation: {_one_line(message)}")


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """Plain `json.dumps`: Jinja's own `tojson` escapes <, >, & and ' for HTML, which would change
    the tool schemas and arguments a model is shown."""
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    """Templates that print today's date in the system prompt use this."""
    return datetime.now().strftime(fmt)


class _SafeNamespace(jinja2.utils.Namespace):
    """`namespace()` that refuses underscore names, so a template cannot shadow Python internals."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _SafeNamespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _SafeNamespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} may not start with '_'")


class _DictFactory:
    """`dict(...)` and `dict.fromkeys(...)` for templates, without exposing the `dict` type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, keys: Any, value: Any = None) -> dict[Any, Any]:
        return dict.fromkeys(keys, value)


@lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["namespace"] = _SafeNamespace
    env.globals["dict"] = _DictFactory()
    return env


@lru_cache(maxsize=64)
def compile_chat_template(template: str) -> jinja2.Template:
    """Compile once per distinct template string: compiling costs far more than rendering."""
    try:
        return _environment().from_string(template)
    except jinja2.TemplateSyntaxError as exc:
        raise ChatTemplateError(
            f"chat template does not compile: {_one_line(exc.message)} (template line {exc.lineno})"
        ) from None


def validate_messages(messages: object) -> list[dict[str, Any]]:
    """Check the conversation's shape and return plain dict copies with None-valued keys dropped.

    Dropping None keys is what transformers does: API clients send `content=None` for tool calls,
    and templates test for a missing key rather than for None.
    """
    if isinstance(messages, str | bytes | Mapping) or not isinstance(messages, Sequence):
        raise UserError(
            "messages must be a list of {'role': ..., 'content': ...} mappings, "
            f"got {type(messages).__name__}"
        )
    out = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise UserError(
                f"message {index} must be a mapping with 'role' and 'content', got {type(message).__name__}"
            )
        if not isinstance(message.get("role"), str):
            raise UserError(
                f"message {index} needs a string 'role' (such as 'user'), got {message.get('role')!r}"
            )
        if "content" not in message:
            raise UserError(f"message {index} has no 'content' key (use None for a message without text)")
        content = message["content"]
        if content is not None and not isinstance(content, str):
            raise UserError(
                f"message {index}: 'content' must be a string or None, got {type(content).__name__}"
            )
        out.append({key: value for key, value in message.items() if value is not None})
    return out


def render_chat_template(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = False,
    special_tokens: Mapping[str, str | None] | None = None,
    **kwargs: Any,
) -> str:
    """Render one conversation to text.

    `special_tokens` (bos_token, eos_token, ...) become template variables when not None; absent
    tokens stay undefined, as in transformers, so `{{ bos_token }}` renders as "". Extra `kwargs`
    (tools, documents, date strings, ...) are passed through and override the special tokens.
    """
    compiled = compile_chat_template(template)
    variables: dict[str, Any] = {"tools": None, "documents": None}
    variables.update({name: value for name, value in (special_tokens or {}).items() if value is not None})
    variables.update(kwargs)
    variables["messages"] = validate_messages(messages)
    variables["add_generation_prompt"] = bool(add_generation_prompt)
    try:
        return compiled.render(**variables)
    except ChatTemplateError:
        raise
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(
            f"chat template failed: {_one_line(exc.message or type(exc).__name__)}"
        ) from None
    except TypeError as exc:  # e.g. the template adds a string to a number from the messages
        raise ChatTemplateError(f"chat template failed: {_one_line(exc)}") from None
