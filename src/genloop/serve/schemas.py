"""Request bodies of the OpenAI-compatible API, validated strictly (a string where a number belongs is a
400, as with OpenAI) and leniently about unknown fields (ignored, as OpenAI's own server does).

Ranges follow OpenAI's documentation; top_k, min_p and repetition_penalty follow vLLM's extensions.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from genloop.generate import SamplingParams

MAX_STOP = 4
MAX_N = 16


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _has_content(self) -> ChatMessage:
        if self.content is None:
            raise ValueError(f"a {self.role} message needs 'content' (a string or a list of text parts)")
        return self

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])


class StreamOptions(_Body):
    include_usage: bool = False


class JsonSchemaSpec(_Body):
    name: str = "response"
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type 'json_schema' needs a 'json_schema' object with a 'schema'")
        return self

    def as_engine(self) -> dict[str, Any] | None:
        if self.type == "text":
            return None
        if self.type == "json_object":
            return {"type": "json_object"}
        assert self.json_schema is not None
        return {"type": "json_schema", "json_schema": {"schema": self.json_schema.schema_}}


Temperature = Annotated[float, Field(ge=0, le=2)]
Penalty = Annotated[float, Field(ge=-2, le=2)]


class _Sampling(_Body):
    """Fields shared by chat and text completions."""

    model: str
    temperature: Temperature | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=-1, le=1_000_000)] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    stop: str | list[str] | None = None
    seed: Annotated[int, Field(ge=-(2**63), lt=2**63)] | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    repetition_penalty: Annotated[float, Field(gt=0, le=10)] | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences are allowed, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty strings")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _bias_keys(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key in value or {}:
            if not key.lstrip("-").isdigit():
                raise ValueError(f"logit_bias keys are token ids written as strings, got '{key}'")
        return value

    def sampling(self, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_k=max(self.top_k or 0, 0),
            top_p=1.0 if self.top_p is None else self.top_p,
            min_p=self.min_p or 0.0,
            repetition_penalty=self.repetition_penalty or 1.0,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            logit_bias={int(k): v for k, v in self.logit_bias.items()} if self.logit_bias else None,
            stop=stops,
            n=self.n,
            seed=self.seed,
            logprobs=logprobs,
        )

    def settings(self) -> dict[str, Any]:
        """The sampling settings worth keeping next to a stored answer."""
        keep = ("temperature", "top_p", "top_k", "min_p", "max_tokens", "stop", "seed", "n")
        keep += ("presence_penalty", "frequency_penalty", "repetition_penalty")
        return {k: getattr(self, k) for k in keep if getattr(self, k) is not None}


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    response_format: ResponseFormat | None = None
    # genloop extensions: where the exchange goes in the conversation store
    conversation_id: str | None = None
    parent_id: str | None = None
    regenerate: bool = False

    @model_validator(mode="after")
    def _logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs set to true")
        if self.regenerate and not (self.conversation_id and self.parent_id):
            raise ValueError("regenerate needs conversation_id and parent_id (the user message to answer)")
        return self

    def engine_params(self) -> SamplingParams:
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        return self.sampling(self.max_completion_tokens or self.max_tokens, logprobs)

    def chat(self) -> list[dict[str, str]]:
        """Messages for the chat template (OpenAI's 'developer' role is a system message)."""
        return [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in self.messages
        ]


class CompletionRequest(_Sampling):
    prompt: (
        str
        | Annotated[list[str], Field(min_length=1)]
        | Annotated[list[int], Field(min_length=1)]
        | Annotated[list[Annotated[list[int], Field(min_length=1)]], Field(min_length=1)]
    )
    max_tokens: Annotated[int, Field(ge=1, le=10_000_000)] | None = 16  # OpenAI's default here
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if value == "" or (isinstance(value, list) and any(v == "" for v in value)):
            raise ValueError("the prompt is empty: give at least one character of text")
        return value

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: text, or token ids (a flat list is one prompt, a list of lists many)."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if all(isinstance(p, int) for p in self.prompt):
            return [list(self.prompt)]  # type: ignore[arg-type]
        return list(self.prompt)  # type: ignore[arg-type]

    def engine_params(self) -> SamplingParams:
        return self.sampling(self.max_tokens, self.logprobs)


class EmbeddingRequest(_Body):
    model: str
    input: str | Annotated[list[str], Field(min_length=1)] | Annotated[list[int], Field(min_length=1)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1)] | None = None
    user: str | None = None


class TokenizeRequest(_Body):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True

    @model_validator(mode="after")
    def _one(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' (text) or 'messages' (a chat)")
        return self


class DetokenizeRequest(_Body):
    model: str | None = None
    tokens: list[Annotated[int, Field(ge=0)]]


class FeedbackRequest(_Body):
    message_id: str
    rating: Literal[1, -1] | None = None
    reason: Annotated[str, Field(max_length=200)] | None = None
    comment: Annotated[str, Field(max_length=10_000)] | None = None
    correction: Annotated[str, Field(min_length=1, max_length=100_000)] | None = None
    preferred_over: str | None = None
