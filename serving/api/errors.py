"""Errors as HTTP answers, in one place: domain errors to 4xx/503, anything else to 500.

A 500 carries the request id and no traceback; the traceback goes to the server log under the
same id, so an operator can find it. A 422 has FastAPI's documented shape whatever raised it:
``detail`` is a list of ``{"loc", "msg", "type"}`` naming the field at fault.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from features.errors import (
    ConfigError,
    DataImportError,
    InputError,
    NotEnoughDataError,
    NotFoundError,
    PipecastError,
    StoreBusyError,
    StoreError,
)
from serving.auth import AuthError, ForbiddenError
from training.errors import PromotionRefused

log = logging.getLogger("pipecast.api")

# Most specific first: the first class an error is an instance of decides.
STATUS: tuple[tuple[type[PipecastError], int], ...] = (
    (AuthError, 401),
    (ForbiddenError, 403),
    (NotFoundError, 404),
    (StoreBusyError, 503),
    (StoreError, 503),
    (ConfigError, 422),
    (InputError, 422),
    (DataImportError, 422),
    (NotEnoughDataError, 422),
)


class ServiceUnavailable(PipecastError):
    """Something the answer needs is not there yet (no champion model, no data): HTTP 503."""


class Conflict(PipecastError):
    """The request clashes with what is running or registered (a second retrain): HTTP 409."""


class ErrorBody(BaseModel):
    """The body of every error answer but 422 (401, 403, 404, 409, 503, 500)."""

    detail: str = Field(description="what is wrong, in one message")
    request_id: str = Field(description="the X-Request-ID; the server log has it too")


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ImportProblem(BaseModel):
    file: str | None
    row: int | None
    column: str | None
    message: str


class ValidationErrorBody(BaseModel):
    """A 422: FastAPI's validation shape, with the request id and an import's problems when the
    app (not the request parser) refused the request."""

    detail: list[FieldError]
    request_id: str | None = None
    problems: list[ImportProblem] | None = Field(
        default=None, description="an import's problems by file, row and column"
    )


def error(description: str, *, model: type[BaseModel] = ErrorBody) -> dict[str, Any]:
    """One documented error answer (``responses=`` of a route or router)."""
    return {"model": model, "description": description}


UNAUTHORIZED = {
    **error("no API key, or an unknown or revoked one"),
    "headers": {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}},
}
# The answers every authenticated router documents; routes add their own (404, 409...).
AUTHENTICATED: dict[int | str, dict[str, Any]] = {
    401: UNAUTHORIZED,
    403: error("the key's role or scope does not allow this"),
}
READS_STORE: dict[int | str, dict[str, Any]] = {
    404: error("unknown team, rep or deal (or one outside the caller's scope)"),
    503: error("the store holds no deals yet, or is busy with an import"),
}


def status_of(err: PipecastError) -> int:
    if isinstance(err, ServiceUnavailable):
        return 503
    if isinstance(err, PromotionRefused | Conflict):
        return 409
    for cls, status in STATUS:
        if isinstance(err, cls):
            return status
    return 422


def validation_detail(request: Request, err: PipecastError) -> list[dict[str, object]]:
    """A domain 422 as FastAPI's validation detail: the named field where it came from (query
    string or body), else the request's query or body as a whole."""
    has_body = request.method in {"POST", "PUT", "PATCH"}
    field = err.field if isinstance(err, InputError) else None
    if field is None:
        loc: list[str] = ["body" if has_body else "query"]
    else:
        loc = ["query" if field in request.query_params or not has_body else "body", field]
    return [{"loc": loc, "msg": str(err), "type": "value_error"}]


def request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", "-"))


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""

    @app.exception_handler(PipecastError)
    async def _domain(request: Request, err: PipecastError) -> JSONResponse:
        status = status_of(err)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        detail = validation_detail(request, err) if status == 422 else str(err)
        body: dict[str, object] = {"detail": detail, "request_id": request_id(request)}
        problems = getattr(err, "problems", None)
        if problems:
            body["problems"] = [
                {"file": p.file, "row": p.row, "column": p.column, "message": p.message}
                for p in problems
            ]
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(Exception)
    async def _internal(request: Request, err: Exception) -> JSONResponse:
        rid = request_id(request)
        log.exception("internal error in %s %s [request %s]", request.method, request.url.path, rid)
        # This handler runs outside the request-id middleware: set the header here too.
        return JSONResponse(
            {"detail": "internal error; the server log has the details", "request_id": rid},
            status_code=500,
            headers={"X-Request-ID": rid},
        )
