"""Request dependencies as ``Annotated`` aliases: who is asking, the data, the as-of date."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated

import pandas as pd
from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from features.data.calendar import parse_when
from serving.api.errors import ServiceUnavailable
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
    token = credentials.credentials if credentials is not None else None
    if token is None:
        token = request.session.get("key") if "session" in request.scope else None
    return keys.authenticate(token)


def get_snapshot(state: Annotated[AppState, Depends(get_state)]) -> Snapshot:
    return state.store.current()


StateDep = Annotated[AppState, Depends(get_state)]
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


def resolve_as_of(as_of: date | datetime | None, snap: Snapshot) -> pd.Timestamp:
    """The as-of timestamp of a request: as given, or the store's latest export time."""
    if as_of is None:
        end = snap.data_end
        if end is None:
            raise ServiceUnavailable("the store holds no deals yet: import data first")
        return end
    return parse_when(as_of, "as_of")


def check_scope_exists(snap: Snapshot, *, team: str | None, owner: str | None) -> None:
    """404 for a team or owner the store has never seen (a typo should not look like 'zero')."""
    from features.errors import NotFoundError

    deals = snap.tables.deals
    if team is not None and not (deals["team"] == team).any():
        raise NotFoundError(f"unknown team {team!r}")
    if owner is not None and not (deals["owner"] == owner).any():
        raise NotFoundError(f"unknown owner {owner!r}")
