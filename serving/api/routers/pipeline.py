"""Pipeline health: metrics, hygiene flags and the weekly review pack, scoped to the caller."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel

from features.pipeline.hygiene import HygieneFlag, StageOutliers, hygiene_flags, stage_outliers
from features.pipeline.metrics import PipelineMetrics, compute_metrics
from features.pipeline.review import ReviewPack, review_pack
from serving.api.deps import (
    AsOfQuery,
    CallerDep,
    OwnerQuery,
    SnapshotDep,
    StateDep,
    TeamQuery,
    check_scope_exists,
    resolve_as_of,
)

router = APIRouter(prefix="/v1/pipeline", tags=["pipeline"])


class HygieneReport(BaseModel):
    as_of: datetime
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
    check_scope_exists(snap, team=team, owner=owner)
    owner, team = caller.scope(owner=owner, team=team)
    when = resolve_as_of(as_of, snap)
    key = ("metrics", snap.version, when, team, owner)
    return state.results.get_or_compute(
        key, lambda: compute_metrics(snap.tables, state.stages, when, team=team, owner=owner)
    )


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
    check_scope_exists(snap, team=team, owner=owner)
    owner, team = caller.scope(owner=owner, team=team)
    when = resolve_as_of(as_of, snap)

    def compute() -> HygieneReport:
        flags = hygiene_flags(snap.tables, state.stages, when, owner=owner, team=team)
        return HygieneReport(
            as_of=when.to_pydatetime(),
            flags=flags,
            stage_outliers=stage_outliers(flags, state.stages),
        )

    return state.results.get_or_compute(("hygiene", snap.version, when, team, owner), compute)


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
    check_scope_exists(snap, team=team, owner=owner)
    owner, team = caller.scope(owner=owner, team=team)
    when = resolve_as_of(as_of, snap)
    key = ("review", snap.version, when, team, owner, min_amount, sort)
    return state.results.get_or_compute(
        key,
        lambda: review_pack(
            snap.tables,
            state.stages,
            when,
            min_amount=min_amount,
            team=team,
            owner=owner,
            sort_by=sort,
        ),
    )
