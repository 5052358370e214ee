"""Errors as HTTP answers, in one place: domain errors to 4xx/503, anything else to 500.

A 500 carries the request id and no traceback; the traceback goes to the server log under the
same id, so an operator can find it.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

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


def status_of(err: PipecastError) -> int:
    if isinstance(err, ServiceUnavailable):
        return 503
    if isinstance(err, PromotionRefused | Conflict):
        return 409
    for cls, status in STATUS:
        if isinstance(err, cls):
            return status
    return 422


def request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", "-"))


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""

    @app.exception_handler(PipecastError)
    async def _domain(request: Request, err: PipecastError) -> JSONResponse:
        status = status_of(err)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        body: dict[str, object] = {"detail": str(err), "request_id": request_id(request)}
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
