"""Errors in OpenAI's body shape, so that every client built for OpenAI's API shows them as it would.

`{"error": {"message", "type", "param", "code"}}`: 400 invalid_request_error for what the client sent,
401 for keys, 404 for unknown models and routes, 413 for oversized bodies, 429/503 with Retry-After
when the server is busy or loading. Anything the client sent must end in a 4xx; a 500 means our bug.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("genloop.serve")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


class APIError(Exception):
    """An error answered to the client as-is."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.retry_after = retry_after


def error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    kind = _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(exc: APIError) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return JSONResponse(error_body(exc.status, exc.message, exc.param, exc.code), exc.status, headers)


def validation_error(exc: ValidationError | RequestValidationError) -> APIError:
    """The first problem pydantic found, as one sentence naming the field."""
    first = exc.errors()[0]
    loc: list[str] = []
    for part in first.get("loc", ()):
        if part == "body":
            continue
        if (
            isinstance(part, str)
            and not part.isdigit()
            and (not part.isidentifier() or part in _TYPE_TAGS or part[0].isupper())
        ):
            break  # pydantic names the union member it tried (str, list[int], TextPart): not a field
        loc.append(str(part))
    param = ".".join(loc) or None
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    where = f"'{param}'" if param else "the request body"
    if first.get("type") == "missing":
        return APIError(
            400, f"Missing required parameter: {where}.", param=param, code="missing_required_parameter"
        )
    return APIError(400, f"Invalid value for {where}: {msg}.", param=param, code="invalid_value")


def install(app: FastAPI) -> None:
    """Route every failure through OpenAI's error shape."""

    @app.exception_handler(APIError)
    async def _api(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404:
            message = "Not found: no such route; the API lives under /v1 (see GET /v1/models)."
        elif exc.status_code == 405:
            message = f"Method not allowed here: {exc.detail}."
        return error_response(APIError(exc.status_code, message))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse(
            error_body(500, f"internal server error ({type(exc).__name__}); see the server log"), 500
        )
