"""Writing chat exchanges to the store: the prompt's new messages and a pending answer before the
response starts (nothing acknowledged is lost in a crash), the answer's text and figures when it ends.

Where an exchange goes (genloop's extensions to the chat request):
- no `conversation_id`: a new conversation holding every message of the request;
- `conversation_id` (+ `parent_id`, default its newest message): the request's last message is the
  new turn, stored as a child of `parent_id`;
- `regenerate` with `parent_id` = a user message: only the new answer, a sibling of earlier ones.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from genloop.data.pii import scrub
from genloop.serve.errors import APIError

if TYPE_CHECKING:
    from genloop.serve.completions import Run
    from genloop.serve.schemas import ChatCompletionRequest
    from genloop.serve.state import ServerState
    from genloop.serve.store import Store


def store_error(exc: Exception) -> APIError:
    """A StoreError as the client's 4xx (the store says 404 for unknown ids, 422 for bad values)."""
    status = getattr(exc, "http_status", 400)
    return APIError(404 if status == 404 else 503 if status == 503 else 400, str(exc))


class Recording:
    def __init__(
        self, store: Store | None, conversation_id: str | None, parent_id: str | None, message_ids: list[str]
    ) -> None:
        self.store, self.conversation_id, self.parent_id = store, conversation_id, parent_id
        self.message_ids = message_ids
        self.started = time.perf_counter()

    @classmethod
    async def start(
        cls, state: ServerState, body: ChatCompletionRequest, prompt_tokens: int, n: int
    ) -> Recording:
        if state.store is None:
            return cls(None, None, None, [])
        try:
            return await asyncio.to_thread(cls._start, state, body, prompt_tokens, n)
        except APIError:
            raise
        except Exception as exc:
            from genloop.serve.store import StoreError

            if isinstance(exc, StoreError):
                raise store_error(exc) from exc
            raise

    @classmethod
    def _start(cls, state: ServerState, body: ChatCompletionRequest, prompt_tokens: int, n: int) -> Recording:
        store = state.store
        assert store is not None
        messages = body.chat()
        if body.conversation_id is None:
            conversation = store.create_conversation(model=state.model_name, user=body.user)
            parent = None
            for m in messages:
                parent = store.add_message(conversation, m["role"], m["content"], parent_id=parent)
        elif body.regenerate:
            conversation, parent = body.conversation_id, body.parent_id
            path = store.path_to(parent or "")
            if not path or path[-1].get("role") != "user" or path[-1].get("conversation_id") != conversation:
                raise APIError(
                    400,
                    "To regenerate, 'parent_id' must be a user message of that conversation.",
                    param="parent_id",
                )
        else:
            conversation = body.conversation_id
            parent = body.parent_id or store.last_message_id(conversation)
            last = messages[-1]
            parent = store.add_message(conversation, last["role"], last["content"], parent_id=parent)
        ids = [
            store.add_message(
                conversation,
                "assistant",
                "",
                parent_id=parent,
                model=state.model_name,
                model_version=state.model_version,
                params=body.settings(),
                prompt_tokens=prompt_tokens,
                status="pending",
            )
            for _ in range(n)
        ]
        return cls(store, conversation, parent, ids)

    def fields(self) -> dict[str, Any]:
        """Top-level fields added to responses and chunks, so a client can attach feedback."""
        if self.store is None:
            return {}
        return {
            "conversation_id": self.conversation_id,
            "parent_id": self.parent_id,
            "message_id": self.message_ids[0],
            "message_ids": self.message_ids,
        }

    def finish(self, run: Run) -> None:
        """Store each answer as it ended: complete, or cancelled with the text so far."""
        if self.store is None:
            return
        latency = (time.perf_counter() - self.started) * 1000
        sequences = run.sequences()
        for i, (message_id, choice) in enumerate(zip(self.message_ids, run.choices, strict=False)):
            status = "complete" if choice.finish_reason not in (None, "cancelled") else "cancelled"
            content = choice.text
            if choice.finish_reason == "content_filter" and i < len(sequences):
                # what the model wrote (PII redacted), not the refusal: it becomes a negative example
                content = scrub(sequences[i].decoded)[0]
            self.store.finish_message(
                message_id,
                content=content,
                prompt_tokens=run.prompt_tokens,
                completion_tokens=choice.tokens,
                latency_ms=latency,
                finish_reason=choice.finish_reason or "cancelled",
                status=status,
            )
