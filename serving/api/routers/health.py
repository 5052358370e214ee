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
    models_loaded: bool
    models: dict[str, str | None]
    detail: list[str]


@router.get("/healthz", response_model=Health, summary="the process is alive")
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="the store is reachable and the champion models are loaded",
    responses={503: {"model": Readiness, "description": "not ready"}},
)
def readyz(state: StateDep) -> JSONResponse:
    """Ready: the store is readable and the champion models are loaded. Without a champion the
    deal lists still answer (stage-rate fallback) but the server is not ready for model work."""
    detail: list[str] = []
    store_ok = state.store.reachable()
    if not store_ok:
        detail.append(f"store {state.store.path} is not readable")
    served = state.models.current()
    models_ok = served.models is not None
    if not models_ok:
        detail.append(served.fallback_reason or "no champion model loaded")
    if state.models.last_error:
        detail.append(state.models.last_error)
    ready = store_ok and models_ok
    body = Readiness(
        status="ready" if ready else "not ready",
        store=store_ok,
        models_loaded=models_ok,
        models=dict(served.versions),
        detail=detail,
    )
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
