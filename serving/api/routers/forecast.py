"""The quarter forecast: the revenue distribution beside every rule-based method, and why.

A cold forecast (a store version, model versions and date not seen before) fits the forecast
posterior in the request: about 90 s on the 3,000-deal demo at the default sampler settings, so
a client should allow two minutes for the first call of a day. Every later call for that date
(any scope) reuses the posterior; the same call again is answered from memory.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from features.serialize import UtcDatetime
from serving.api import views
from serving.api.deps import (
    AsOfQuery,
    CallerDep,
    OwnerQuery,
    ServedDep,
    SettingsDep,
    SnapshotDep,
    StateDep,
    TeamQuery,
)
from serving.api.errors import AUTHENTICATED, READS_STORE

router = APIRouter(prefix="/v1", tags=["forecast"], responses={**AUTHENTICATED, **READS_STORE})

QuarterQuery = Annotated[
    str | None,
    Query(
        pattern=r"^\d{4}Q[1-4]$",
        description="quarter to forecast (e.g. 2025Q4); default: the quarter of as_of",
    ),
]


class Summary(BaseModel):
    p10: float
    p50: float
    p90: float
    mean: float
    p_target: float | None = Field(description="P(quarter revenue >= target); null: no target")


class QuantilePoint(BaseModel):
    q: float = Field(ge=0, le=1)
    value: float


class Methods(BaseModel):
    """The rule-based forecasts (won so far included), null where a method has no data."""

    stage_weighted: float | None
    commit: float | None
    best_case: float | None
    historical_conversion: float | None


class ForecastDriver(BaseModel):
    deal_id: str
    owner: str
    stage: str | None
    amount: float
    expected_close_date: str | None
    p_won_this_quarter: float = Field(ge=0, le=1)
    p50_if_won: float
    p50_if_not: float
    swing: float = Field(description="P50 if won minus P50 if not")


class ModelVersions(BaseModel):
    forecast_config_hash: str = Field(description="hash of the forecast model's configuration")
    forecast_fitted_as_of: str
    history_quarters: list[str]
    history_in_warmup: list[str] = Field(
        default_factory=list,
        description="history quarters scored by scorers fitted before the data's warm-up "
        "ended: they learnt only from the deals that closed fast",
    )
    scorer: str | None = Field(description="how the open pipeline was scored")
    deal_models: dict[str, str | None] = Field(description="champion versions serving now")
    deal_models_fallback: str | None


class ForecastAnswer(BaseModel):
    quarter: str
    as_of: UtcDatetime
    scope: str = Field(description="company, team:T or owner:O")
    target: float | None
    won_so_far: float
    pipecast: Summary = Field(description="the Bayesian forecast's distribution")
    quantiles: list[QuantilePoint] = Field(description="5%..95% by 5%, for charts")
    methods: Methods
    independent_stage_sim: Summary = Field(
        description="every deal an independent coin flip at its stage's probability"
    )
    drivers: list[ForecastDriver] = Field(description="the deals that move the P50 most")
    model_versions: ModelVersions
    diagnostics: dict[str, Any] = Field(description="the sampler's divergences, r-hat, ESS, time")
    open_deals: int
    scenarios: int


@router.get(
    "/forecast",
    response_model=ForecastAnswer,
    summary="the quarter's revenue distribution beside every rule-based forecast",
    description="A rep gets the forecast of their own deals, a manager their team's, RevOps any "
    "scope. The first call for a date fits the forecast model in the request (about 90 s on "
    "the 3,000-deal demo); later calls for that date, any scope, reuse it, and a repeated call "
    "is answered from memory (`X-Pipecast-Cache: hit`).",
)
def forecast(
    caller: CallerDep,
    snap: SnapshotDep,
    state: StateDep,
    served: ServedDep,
    settings: SettingsDep,
    response: Response,
    quarter: QuarterQuery = None,
    as_of: AsOfQuery = None,
    team: TeamQuery = None,
    owner: OwnerQuery = None,
) -> dict[str, Any]:
    scope = views.request_scope(caller, snap, team=team, owner=owner, as_of=as_of, quarter=quarter)
    body, hit = views.forecast(
        state, snap, served, settings, caller, scope.as_of, team=scope.team, owner=scope.owner
    )
    response.headers["X-Pipecast-Cache"] = "hit" if hit else "miss"
    return body
