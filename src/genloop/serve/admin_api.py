"""Operator routes: which model version is served, and switching to another without downtime.

`genloop loop` calls `POST /v1/admin/model` after it promotes a model. Only models registered under
GENLOOP_HOME/models can be named, so the route cannot be made to load an arbitrary path; with API
keys configured it needs a key like every other route.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from genloop.serve.errors import APIError
from genloop.serve.state import ServerState

router = APIRouter()


class SwapRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    version: str | None = None


def _describe(state: ServerState) -> dict[str, Any]:
    return {"model": state.model_name, "path": str(state.model_path), "version": state.model_version}


@router.get("/v1/admin/model")
async def current_model(request: Request) -> Any:
    return _describe(ServerState.of(request))


@router.post("/v1/admin/model")
async def swap_model(request: Request, body: SwapRequest) -> Any:
    from genloop.checkpoint.registry import list_models, metadata
    from genloop.home import models_dir

    state = ServerState.ready(request)
    if body.model not in list_models():
        raise APIError(
            404,
            f"No registered model '{body.model}' in {models_dir()}; register it first "
            "(`genloop loop` does when it promotes).",
            param="model",
            code="model_not_found",
        )
    path = models_dir() / body.model
    meta = metadata(path)
    version = body.version or str(meta.get("version") or body.model)
    try:
        await asyncio.to_thread(state.swap, path, version)
    except Exception as exc:  # the old engine keeps serving
        raise APIError(
            422, f"Could not load '{body.model}': {exc}", param="model", code="model_load_failed"
        ) from exc
    return _describe(state)
