"""Build the FastAPI app: settings, state, error handlers, request ids and routers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.middleware.sessions import SessionMiddleware

from features.data.stages import load_stage_config
from serving.api import errors
from serving.api.models import ModelHolder, Registry
from serving.api.routers import data, deals, forecast, health, models, pipeline
from serving.api.settings import ApiSettings
from serving.api.state import AppState, ResultCache, StoreCache
from serving.auth import KeyStore, session_secret
from serving.web import pages
from training.tracking import TrackingTarget

API_VERSION = "1"
DESCRIPTION = (
    "Probabilistic pipeline forecasting and deal scoring: deal scores, pipeline health, import "
    "and model management (the quarter forecast, `/v1/forecast`, joins with the forecasting "
    "package). Send an API key as `Authorization: Bearer <key>` (`pipecast keys create`): a "
    "rep sees their own deals, a manager their team's, RevOps everything and may import, "
    "retrain and promote."
)


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    """A new app; settings come from the environment unless given (tests pass their own)."""
    settings = settings if settings is not None else ApiSettings()
    registry = Registry(TrackingTarget(settings.mlflow_tracking_uri, settings.mlflow_artifacts))
    holder = ModelHolder(
        resolve=registry.champion_versions,
        load=registry.load,
        refresh_seconds=settings.model_refresh_seconds,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Loaded before the first request is taken, refreshed in the background after.
        await run_in_threadpool(holder.start)
        try:
            yield
        finally:
            holder.stop()

    app = FastAPI(
        title="pipecast",
        version=API_VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.keys = KeyStore(settings.keys_file)
    app.state.pipecast = AppState(
        store=StoreCache(settings.db),
        stages=load_stage_config(settings.stages),
        results=ResultCache(),
        models=holder,
        registry=registry,
    )
    errors.install(app)

    @app.middleware("http")
    async def _request_id(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex[:16]
        request.state.request_id = rid
        response = await call_next(request)
        response.headers["X-Request-ID"] = rid
        return response

    for router in (health.router, pipeline.router, deals.router, models.router, data.router):
        app.include_router(router)
    app.include_router(forecast.router)
    # Web pages: a login puts the key's hash in a signed cookie (8 hours; SameSite=Lax keeps
    # other sites from posting with it).
    app.add_middleware(
        SessionMiddleware,
        secret_key=session_secret(settings.keys_file),
        session_cookie="pipecast_session",
        max_age=8 * 3600,
        same_site="lax",
    )
    app.mount("/static", StaticFiles(directory=pages.HERE / "static"), name="static")
    app.include_router(pages.router)
    pages.install(app)
    return app
