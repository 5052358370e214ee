"""Request dependencies as ``Annotated`` aliases: who is asking, the data, the as-of date."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from serving.api.models import Served
from serving.api.settings import ApiSettings
from serving.api.state import AppState, Snapshot
from serving.auth import Caller, KeyStore, Role

_bearer = HTTPBearer(auto_error=False, description="an API key from `pipecast keys create`")


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.pipecast
    return state


def get_settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


def get_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """The caller behind the bearer key (or the web session's key)."""
    keys: KeyStore = request.app.state.keys
    if credentials is None and "session" in request.scope:
        key_hash = request.session.get("key_hash")
        if key_hash:
            return keys.caller_by_hash(str(key_hash))
    return keys.authenticate(credentials.credentials if credentials is not None else None)


def get_snapshot(state: Annotated[AppState, Depends(get_state)]) -> Snapshot:
    return state.store.current()


def get_served(state: Annotated[AppState, Depends(get_state)]) -> Served:
    """The models of this request, taken once: a swap mid-request does not reach it."""
    return state.models.current()


StateDep = Annotated[AppState, Depends(get_state)]
ServedDep = Annotated[Served, Depends(get_served)]
SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
CallerDep = Annotated[Caller, Depends(get_caller)]
SnapshotDep = Annotated[Snapshot, Depends(get_snapshot)]


def get_revops(caller: CallerDep) -> Caller:
    caller.require(Role.REVOPS)
    return caller


RevOpsDep = Annotated[Caller, Depends(get_revops)]

AsOfQuery = Annotated[
    date | datetime | None,
    Query(
        description="as-of date (YYYY-MM-DD means the end of that day) or timestamp; "
        "default: the time of the latest export in the store"
    ),
]
TeamQuery = Annotated[str | None, Query(description="limit to one sales team")]
OwnerQuery = Annotated[str | None, Query(description="limit to one rep")]
