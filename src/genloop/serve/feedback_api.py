"""Routes over the store: feedback on answers and the conversations the chat page lists."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Query, Request

from genloop.serve.errors import APIError
from genloop.serve.openai_api import parse
from genloop.serve.recording import store_error
from genloop.serve.schemas import FeedbackRequest
from genloop.serve.state import ServerState
from genloop.serve.store import Store, StoreError

router = APIRouter()


def _store(request: Request) -> Store:
    store = ServerState.of(request).store
    if store is None:
        raise APIError(404, "This server keeps no store (started with --no-store).", code="store_disabled")
    return store


async def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except StoreError as exc:
        raise store_error(exc) from exc


@router.post("/v1/feedback")
async def feedback(request: Request) -> Any:
    store = _store(request)
    body = await parse(request, FeedbackRequest)
    if body.rating is None and not (body.correction or body.preferred_over or body.comment):
        raise APIError(400, "Feedback needs a rating (1 or -1), a correction, a comment or preferred_over.")
    fid = await _call(
        store.add_feedback,
        body.message_id,
        rating=body.rating,
        reason=body.reason,
        comment=body.comment,
        correction=body.correction,
        preferred_over=body.preferred_over,
    )
    return {"id": fid, "object": "feedback", "message_id": body.message_id}


@router.get("/v1/conversations")
async def conversations(
    request: Request, limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0)
) -> Any:
    rows = await _call(_store(request).list_conversations, limit=limit, offset=offset)
    return {"object": "list", "data": rows}


@router.get("/v1/conversations/{conversation_id}")
async def conversation(request: Request, conversation_id: str) -> Any:
    found = await _call(_store(request).get_conversation, conversation_id)
    if found is None:
        raise APIError(404, f"No conversation '{conversation_id}'.", param="conversation_id")
    return found


@router.delete("/v1/conversations/{conversation_id}")
async def delete_conversation(request: Request, conversation_id: str) -> Any:
    if not await _call(_store(request).delete_conversation, conversation_id):
        raise APIError(404, f"No conversation '{conversation_id}'.", param="conversation_id")
    return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}
