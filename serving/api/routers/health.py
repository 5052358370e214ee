"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from serving.api.deps import StateDep

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    store: bool
    models: dict[str, str | None]
    detail: list[str]


@router.get("/healthz", response_model=Health, summary="the process is alive")
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="the store is reachable and models are loaded",
    responses={503: {"model": Readiness, "description": "not ready"}},
)
def readyz(state: StateDep) -> JSONResponse:
    detail: list[str] = []
    store_ok = state.store.reachable()
    if not store_ok:
        detail.append(f"store {state.store.path} is not readable")
    ready = store_ok
    body = Readiness(
        status="ready" if ready else "not ready", store=store_ok, models={}, detail=detail
    )
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
