"""Deal scores: the ranked list, one deal in full, and what-if scoring of changed deals."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

import pandas as pd
from fastapi import APIRouter, Path, Query
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field

from features.data.schema import ActivityType, ForecastCategory, StakeholderRole
from features.errors import NotFoundError
from features.pipeline.hygiene import HygieneFlag
from features.serialize import UtcDatetime
from features.signals import SIGNALS
from serving.api import views, whatif
from serving.api.deps import (
    AsOfQuery,
    CallerDep,
    OwnerQuery,
    ServedDep,
    SnapshotDep,
    StateDep,
    TeamQuery,
)
from serving.api.errors import (
    AUTHENTICATED,
    READS_STORE,
    ServiceUnavailable,
    ValidationErrorBody,
    error,
)

router = APIRouter(prefix="/v1", tags=["deals"], responses={**AUTHENTICATED, **READS_STORE})

Method = Literal["model", "historical_stage_rates"]


class DealScore(BaseModel):
    rank: int = Field(description="1 = the deal to work first in this scope")
    deal_id: str
    owner: str
    team: str | None
    segment: str | None
    product: str | None
    stage: str | None
    amount: float | None
    expected_close_date: date | None
    forecast_category: str | None
    p_win: float = Field(ge=0, le=1, description="P(won within the horizon)")
    p_close_this_quarter_given_win: float = Field(ge=0, le=1)
    p_won_this_quarter: float = Field(ge=0, le=1, description="P(closes won this quarter)")
    expected_value: float | None = Field(description="amount x P(won this quarter)")
    reasons_for: list[str]
    reasons_against: list[str]
    next_actions: list[str]
    method: Method


class DealScores(BaseModel):
    as_of: UtcDatetime
    method: Method = Field(
        description="`model`: the champion models; `historical_stage_rates`: no champion yet"
    )
    fallback_reason: str | None
    model_versions: dict[str, str | None]
    note: str | None
    total: int = Field(description="open deals in this scope (the list may be cut by `limit`)")
    deals: list[DealScore]


class StageEntry(BaseModel):
    at: UtcDatetime
    stage: str | None
    derived: bool = Field(description="seen in this stage at an export, not a logged change")


class FieldChange(BaseModel):
    at: UtcDatetime
    field: str
    old: str | None
    new: str | None


class Activity(BaseModel):
    at: UtcDatetime
    type: str | None


class Stakeholder(BaseModel):
    at: UtcDatetime
    role: str | None


class DealHistory(BaseModel):
    stages: list[StageEntry]
    changes: list[FieldChange]
    activities: list[Activity]
    stakeholders: list[Stakeholder]


# A signal is a number, a flag, a label or unknown (null, never 0); mapped custom columns
# (``custom_*``) come beside the registered ones.
SignalValue = bool | int | float | str | None
SIGNALS_DOC = (
    "the deal's signals as of as_of, by name (null: unknown at that date); `pipecast signals "
    "--deal ID` prints them with what each means. Registered: " + ", ".join(SIGNALS)
)


class DealDetail(BaseModel):
    deal_id: str
    account: str | None
    owner: str | None
    team: str | None
    segment: str | None
    product: str | None
    created_at: UtcDatetime | None
    status: str = Field(description="open, or the outcome if closed by as_of")
    closed_at: UtcDatetime | None
    as_of: UtcDatetime
    score: DealScore | None = Field(description="null when the deal is not open at as_of")
    method: Method
    fallback_reason: str | None
    model_versions: dict[str, str | None]
    signals: dict[str, SignalValue] = Field(description=SIGNALS_DOC)
    flags: list[HygieneFlag]
    history: DealHistory


def _scores_body(frame: pd.DataFrame, as_of: pd.Timestamp, limit: int | None) -> DealScores:
    rows = frame if limit is None else frame.head(limit)
    return DealScores(
        as_of=as_of.to_pydatetime(),
        method=views.scored_method(frame),  # type: ignore[arg-type]
        fallback_reason=frame.attrs.get("fallback_reason"),
        model_versions=dict(frame.attrs.get("model_versions", {})),
        note=frame.attrs.get("note"),
        total=len(frame),
        deals=[DealScore.model_validate(r) for r in views.records(rows)],
    )


@router.get(
    "/deals/scores",
    response_model=DealScores,
    summary="open deals ranked by expected value this quarter, with reasons and next actions",
    description="A rep sees their own deals, a manager their team's, RevOps every deal. "
    "Without a champion model the deals are scored with historical stage win rates and "
    "`method` says so (`historical_stage_rates`, with `fallback_reason`).",
)
def deal_scores(
    caller: CallerDep,
    snap: SnapshotDep,
    state: StateDep,
    served: ServedDep,
    as_of: AsOfQuery = None,
    team: TeamQuery = None,
    owner: OwnerQuery = None,
    limit: Annotated[int | None, Query(ge=1, le=10_000, description="top N deals")] = None,
) -> DealScores:
    scope = views.request_scope(caller, snap, team=team, owner=owner, as_of=as_of)
    frame = views.scores(state, snap, served, scope.as_of, team=scope.team, owner=scope.owner)
    return _scores_body(frame, scope.as_of, limit)


DealIdPath = Annotated[str, Path(min_length=1, max_length=200, description="CRM deal id")]


@router.get(
    "/deals/{deal_id}",
    response_model=DealDetail,
    summary="one deal: score, signals, hygiene flags, stage path, field changes, activities",
    description="404 for an unknown deal and for a deal outside the caller's scope alike. "
    "Scored like `/v1/deals/scores` (the same numbers, the same fallback).",
    responses={404: error("unknown deal, or not yours to see")},
)
def deal(
    deal_id: DealIdPath,
    caller: CallerDep,
    snap: SnapshotDep,
    state: StateDep,
    served: ServedDep,
    as_of: AsOfQuery = None,
) -> DealDetail:
    when = views.resolve_as_of(as_of, snap)
    return DealDetail.model_validate(views.deal_detail(state, snap, served, caller, deal_id, when))


# --- what-if ------------------------------------------------------------------------------------
class DealChange(BaseModel):
    """Changes to one stored deal, as if made at ``as_of``; unset fields stay as they are."""

    model_config = ConfigDict(extra="forbid")

    deal_id: str = Field(min_length=1, max_length=200)
    amount: float | None = Field(default=None, ge=0, le=1e12, description="in the deal's currency")
    stage: str | None = Field(default=None, description="a stage key of the stage configuration")
    expected_close_date: date | None = None
    forecast_category: ForecastCategory | None = None
    next_step: str | None = Field(default=None, min_length=1, max_length=500)
    next_step_date: date | None = None
    add_stakeholders: list[StakeholderRole] = Field(
        default_factory=list, max_length=20, description="e.g. `champion` identified"
    )
    add_activities: list[ActivityType] = Field(default_factory=list, max_length=50)


class WhatIfRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    as_of: date | datetime | None = Field(
        default=None, description="default: the time of the latest export in the store"
    )
    deals: list[DealChange] = Field(min_length=1, max_length=100)


class Probabilities(BaseModel):
    p_win: float
    p_won_this_quarter: float
    expected_value: float | None
    reasons_for: list[str]
    reasons_against: list[str]


class WhatIfScore(BaseModel):
    deal_id: str
    before: Probabilities
    after: Probabilities
    changed: list[str] = Field(description="the fields the request changed")


class WhatIfResponse(BaseModel):
    as_of: UtcDatetime
    method: Literal["model"]
    model_versions: dict[str, str | None]
    deals: list[WhatIfScore]


def _probabilities(row: dict[str, Any]) -> Probabilities:
    return Probabilities.model_validate(row)


@router.post(
    "/score",
    response_model=WhatIfResponse,
    summary="what-if: score stored deals with changes (a champion identified, a new amount...)",
    description="Each deal must be open at `as_of` and visible to the caller (else 404). "
    "Answers 503 while no champion model is registered: a what-if asks the model.",
    responses={
        404: error("unknown deal, or not yours"),
        422: error("invalid body (field-level detail)", model=ValidationErrorBody),
        503: error("no champion model, or no deals in the store yet"),
    },
)
def score(
    body: WhatIfRequest,
    caller: CallerDep,
    snap: SnapshotDep,
    state: StateDep,
    served: ServedDep,
) -> WhatIfResponse:
    if served.models is None:
        raise ServiceUnavailable(
            f"what-if scoring needs a champion model: {served.fallback_reason}"
        )
    problems = [
        {
            "type": "value_error",
            "loc": ("body", "deals", i, "stage"),
            "msg": f"unknown stage {d.stage!r}; known: {list(state.stages.by_key)}",
            "input": d.stage,
        }
        for i, d in enumerate(body.deals)
        if d.stage is not None and d.stage not in state.stages.by_key
    ]
    ids = [d.deal_id for d in body.deals]
    problems += [
        {
            "type": "value_error",
            "loc": ("body", "deals", i, "deal_id"),
            "msg": f"deal {d.deal_id!r} is listed more than once",
            "input": d.deal_id,
        }
        for i, d in enumerate(body.deals)
        if ids.index(d.deal_id) != i
    ]
    if problems:
        raise RequestValidationError(problems)
    when = views.resolve_as_of(body.as_of, snap)
    before = views.scores_by_deal(state, snap, served, when)
    rows, facts = views.what_if_basis(state, snap, when)
    for d in body.deals:
        views.check_visible(snap, caller, d.deal_id, rows)  # 404 unless the caller may see it
        if d.deal_id not in before:
            raise NotFoundError(f"deal {d.deal_id!r} is not open at {when:%Y-%m-%d}")
    changes = [d.model_dump(mode="json") for d in body.deals]
    rescored = whatif.rescore(
        served.models,
        rows,
        facts,
        state.stages,
        changes,
        batcher=state.whatif,
        key=(snap.version, when, served.key),
        bases=views.what_if_bases(state, snap, served, rows, facts),
    )
    after = {str(r["deal_id"]): r for r in views.records(rescored)}
    out = []
    for d, change in zip(body.deals, changes, strict=True):
        changed = [
            k
            for k, v in change.items()
            if k != "deal_id" and v is not None and v != [] and k in d.model_fields_set
        ]
        out.append(
            WhatIfScore(
                deal_id=d.deal_id,
                before=_probabilities(before[d.deal_id]),
                after=_probabilities(after[d.deal_id]),
                changed=changed,
            )
        )
    return WhatIfResponse(
        as_of=when.to_pydatetime(),
        method="model",
        model_versions=dict(served.versions),
        deals=out,
    )
