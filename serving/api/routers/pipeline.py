"""Pipeline health: metrics, hygiene flags and the weekly review pack, scoped to the caller."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel

from features.pipeline.hygiene import HygieneFlag, StageOutliers
from features.pipeline.metrics import PipelineMetrics
from features.pipeline.review import ReviewPack
from features.serialize import UtcDatetime
from serving.api import views
from serving.api.deps import AsOfQuery, CallerDep, OwnerQuery, SnapshotDep, StateDep, TeamQuery
from serving.api.errors import AUTHENTICATED, READS_STORE

router = APIRouter(
    prefix="/v1/pipeline", tags=["pipeline"], responses={**AUTHENTICATED, **READS_STORE}
)


class HygieneReport(BaseModel):
    as_of: UtcDatetime
    flags: list[HygieneFlag]
    stage_outliers: list[StageOutliers]


@router.get(
    "/metrics",
    response_model=PipelineMetrics,
    summary="pipeline metrics as of a date (coverage, weighted, conversion, cycle, win rate...)",
)
def metrics(
    caller: CallerDep,
    snap: SnapshotDep,
    state: StateDep,
    as_of: AsOfQuery = None,
    team: TeamQuery = None,
    owner: OwnerQuery = None,
) -> PipelineMetrics:
    scope = views.request_scope(caller, snap, team=team, owner=owner, as_of=as_of)
    return views.metrics(state, snap, scope.as_of, team=scope.team, owner=scope.owner)


@router.get(
    "/hygiene",
    response_model=HygieneReport,
    summary="hygiene flags of open deals (zombie deals, missing next steps, ...)",
)
def hygiene(
    caller: CallerDep,
    snap: SnapshotDep,
    state: StateDep,
    as_of: AsOfQuery = None,
    team: TeamQuery = None,
    owner: OwnerQuery = None,
) -> HygieneReport:
    scope = views.request_scope(caller, snap, team=team, owner=owner, as_of=as_of)
    flags, outliers = views.hygiene(state, snap, scope.as_of, team=scope.team, owner=scope.owner)
    return HygieneReport(as_of=scope.as_of.to_pydatetime(), flags=flags, stage_outliers=outliers)


@router.get(
    "/review",
    response_model=ReviewPack,
    summary="the weekly pipeline review pack: big open deals, last week's changes, risks",
)
def review(
    caller: CallerDep,
    snap: SnapshotDep,
    state: StateDep,
    as_of: AsOfQuery = None,
    team: TeamQuery = None,
    owner: OwnerQuery = None,
    min_amount: Annotated[float | None, Query(ge=0, description="smallest deal to review")] = None,
    sort: Annotated[Literal["amount", "expected_close"], Query()] = "amount",
) -> ReviewPack:
    scope = views.request_scope(caller, snap, team=team, owner=owner, as_of=as_of)
    return views.review(
        state,
        snap,
        scope.as_of,
        team=scope.team,
        owner=scope.owner,
        min_amount=min_amount,
        sort=sort,
    )
