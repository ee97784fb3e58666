"""genloop renders chat templates exactly like transformers' `apply_chat_template` (the oracle).

The same template strings go through both; the HF tokenizer is built in the test, nothing from a hub.
"""

from __future__ import annotations

from typing import Any

import jinja2
import pytest
from transformers import PreTrainedTokenizerFast

from genloop.config import TokenizerConfig
from genloop.errors import UserError
from genloop.preprocess.chat_template import (
    DEFAULT_CHAT_TEMPLATE,
    ChatTemplateError,
    compile_chat_template,
    render_chat_template,
)
from genloop.preprocess.tokenizer import Tokenizer

SYSTEM_DEFAULT = """{{ bos_token }}
{% if messages[0]['role'] != 'system' %}
    {{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
{% endif %}
{% for message in messages %}
    {{ '<|im_start|>' + message['role'] + '\\n' + message['content'] | trim + '<|im_end|>\\n' }}
{% endfor %}
{% if add_generation_prompt %}
    {{ '<|im_start|>assistant\\n' }}
{% endif %}"""

ALTERNATING = """{% for message in messages %}
    {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {% endif %}
    {% if message['role'] == 'user' %}
        {{ bos_token + '[INST] ' + message['content'] + ' [/INST]' }}
    {% else %}
        {{ ' ' + message['content'] + eos_token }}
    {% endif %}
{% endfor %}"""

NAMESPACE_LOOP = """{% set ns = namespace(system='', turns=0) %}
{% for m in messages %}
    {% if m['role'] == 'system' %}
        {% set ns.system = m['content'] %}
        {% continue %}
    {% endif %}
    {% set ns.turns = ns.turns + 1 %}
    [{{ loop.index }}/{{ loop.length }} {{ m['role'] }}]: {{ m['content'] }}
    {% if not loop.last %} || {% endif %}
    {% if m['content'] == 'STOP' %}{% break %}{% endif %}
{% endfor %}
{% if ns.system %}(system: {{ ns.system }}; {{ ns.turns }} turns){% endif %}
{% if add_generation_prompt %}<assistant>{% endif %}"""

TOOLS_AND_MISSING = """{% if tools %}TOOLS:{{ tools | tojson(indent=2) }}
{% endif %}{% for m in messages %}
{{ m['role'] }}={{ m['content'] if m['content'] is defined else '<no content>' }}|{{ m | tojson }}
{% endfor %}{{ bos_token }}/{{ unk_token }}/{{ eos_token }}/{{ strftime_now('%Y') }}"""

CONVERSATIONS: dict[str, list[dict[str, Any]]] = {
    "single": [{"role": "user", "content": "Hi there"}],
    "with_system": [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "  2+2?  "},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "Danke schön 😀 <b>&</b>"},
    ],
    "alternating": [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": "three"},
    ],
    "stop": [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "STOP"},
        {"role": "user", "content": "never shown"},
    ],
    "none_content": [
        {"role": "user", "content": "call a tool"},
        {"role": "assistant", "content": None, "tool_calls": [{"name": "get_weather"}]},
    ],
}

TEMPLATES = {
    "default": DEFAULT_CHAT_TEMPLATE,
    "system_default": SYSTEM_DEFAULT,
    "alternating": ALTERNATING,
    "namespace_loop": NAMESPACE_LOOP,
    "tools_and_missing": TOOLS_AND_MISSING,
}

CASES = [
    (t, c)
    for t in TEMPLATES
    for c in CONVERSATIONS
    if not (t == "alternating" and c != "alternating")
    and not (c == "none_content" and t not in ("default", "tools_and_missing"))
]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    corpus = ["hello world, the quick brown fox jumps over the lazy dog"] * 20
    return Tokenizer.train(corpus, TokenizerConfig(vocab_size=300, min_frequency=1), progress=False)


@pytest.fixture(scope="module")
def hf(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    backend = type(tokenizer.backend).from_str(tokenizer.backend.to_str())  # HF may modify its copy
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<|pad|>"
    )


SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<|pad|>", "unk_token": None}
TOOLS = [{"name": "get_weather", "description": 'Wetter <für> & "Orte" 🌧', "parameters": {}}]


@pytest.mark.parametrize("add_generation_prompt", [False, True])
@pytest.mark.parametrize(("template", "conversation"), CASES)
def test_rendering_matches_transformers(
    hf: PreTrainedTokenizerFast, template: str, conversation: str, add_generation_prompt: bool
) -> None:
    source, messages = TEMPLATES[template], CONVERSATIONS[conversation]
    extra: dict[str, Any] = {"tools": TOOLS} if template == "tools_and_missing" else {}
    expected = hf.apply_chat_template(
        messages, chat_template=source, tokenize=False, add_generation_prompt=add_generation_prompt, **extra
    )
    ours = render_chat_template(source, messages, add_generation_prompt, SPECIALS, **extra)
    assert ours == expected
    assert ours  # guards against both sides silently rendering nothing


def test_default_template_is_chatml() -> None:
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    assert render_chat_template(DEFAULT_CHAT_TEMPLATE, messages) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n"
    )
    assert render_chat_template(DEFAULT_CHAT_TEMPLATE, messages[1:], add_generation_prompt=True) == (
        "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
    )


def test_raise_exception_fails_in_both(hf: PreTrainedTokenizerFast) -> None:
    bad = [{"role": "assistant", "content": "I speak first"}, {"role": "user", "content": "hm"}]
    with pytest.raises(jinja2.TemplateError, match="must alternate"):
        hf.apply_chat_template(bad, chat_template=ALTERNATING, tokenize=False)
    with pytest.raises(ChatTemplateError) as info:
        render_chat_template(ALTERNATING, bad, special_tokens=SPECIALS)
    assert "Conversation roles must alternate user/assistant/user/assistant/..." in str(info.value)
    assert isinstance(info.value, UserError)


def test_tojson_does_not_escape_html_or_unicode() -> None:
    rendered = render_chat_template("{{ messages[0] | tojson }}", [{"role": "user", "content": "<a> & é"}])
    assert rendered == '{"role": "user", "content": "<a> & é"}'


@pytest.mark.parametrize(
    ("messages", "fragment"),
    [
        ("not a list", "must be a list"),
        ([{"role": "user", "content": "ok"}, "text"], "message 1 must be a mapping"),
        ([{"content": "no role"}], "message 0 needs a string 'role'"),
        ([{"role": "user", "content": "a"}, {"role": "user"}], "message 1 has no 'content'"),
        ([{"role": "user", "content": ["list"]}], "message 0: 'content' must be a string or None"),
    ],
)
def test_bad_messages_name_the_index(messages: Any, fragment: str) -> None:
    with pytest.raises(UserError, match=fragment):
        render_chat_template(DEFAULT_CHAT_TEMPLATE, messages)


def test_template_errors_are_one_line_user_errors() -> None:
    with pytest.raises(ChatTemplateError, match=r"does not compile: .*\(template line 2\)") as info:
        render_chat_template("ok\n{% for m in messages %}{{ m }", [])
    assert "\n" not in str(info.value)
    with pytest.raises(ChatTemplateError):  # the sandbox blocks access to Python internals
        render_chat_template("{{ messages.__class__.__mro__ }}", [{"role": "user", "content": "x"}])
    with pytest.raises(ChatTemplateError):
        render_chat_template("{% set ns = namespace() %}{% set ns._x = 1 %}", [])


def test_templates_are_compiled_once() -> None:
    assert compile_chat_template(SYSTEM_DEFAULT) is compile_chat_template(SYSTEM_DEFAULT)


def test_tokenizer_apply_chat_template(tokenizer: Tokenizer) -> None:
    messages = [{"role": "user", "content": "hello world"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhello world<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    assert isinstance(ids, list)
    assert ids[0] == tokenizer.token_to_id("<|im_start|>")
    assert tokenizer.decode(ids) == text
