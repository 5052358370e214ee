"""Models: registered versions and their evaluation, retraining as a background job, promotion."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, ConfigDict, Field

from serving.api import jobs, views
from serving.api.deps import CallerDep, RevOpsDep, SettingsDep, StateDep
from serving.api.errors import AUTHENTICATED, Conflict, ServiceUnavailable, error

router = APIRouter(prefix="/v1", tags=["models"], responses=AUTHENTICATED)

ModelName = Literal["win_probability", "slip"]


class ModelVersion(BaseModel):
    name: ModelName
    version: str
    aliases: list[str]
    created: str
    cutoff: str | None = Field(description="the training data's end")
    eval_window: str | None
    recipe: str | None = Field(description="hash of the training recipe")
    metrics: dict[str, float | None] = Field(description="backtest scores on the eval window")
    baselines: dict[str, dict[str, float | None]] = Field(
        description="the baselines' scores on the same rows"
    )
    reliability: dict[str, list[list[float]]] = Field(
        description="win model only: per curve (pipecast, baselines, oracle) the bins as "
        "[mean predicted, observed rate, weight]"
    )
    promotion_reason: str | None


class ModelsReport(BaseModel):
    serving: dict[str, str | None] = Field(description="the versions this worker answers with")
    serving_error: str | None = Field(description="why the latest champion could not be loaded")
    versions: list[ModelVersion]


@router.get(
    "/models",
    response_model=ModelsReport,
    summary="registered model versions with aliases and evaluation metrics against baselines",
    description="Any key may read this: it names the versions behind every score.",
)
def models(caller: CallerDep, state: StateDep) -> ModelsReport:
    rows = views.model_versions(state)
    return ModelsReport(
        serving=dict(state.models.current().versions),
        serving_error=state.models.last_error,
        versions=[ModelVersion.model_validate(r) for r in rows],
    )


class RetrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    as_of: date | None = Field(default=None, description="train as of (default: end of data)")
    config: dict[str, Any] | None = Field(
        default=None,
        description="recipe overrides, as `pipecast train --config` (e.g. "
        '`{"win": {"n_estimators": 200}}`)',
    )


class JobProgress(BaseModel):
    phase: str | None
    done: int
    total: int
    fraction: float = Field(ge=0, le=1, description="of the whole job")


class JobResult(BaseModel):
    version: str
    alias: str
    reason: str


class JobStatus(BaseModel):
    id: str
    kind: Literal["retrain"]
    state: Literal["queued", "running", "succeeded", "failed"]
    created: str
    started: str | None
    finished: str | None
    progress: JobProgress
    result: dict[str, JobResult] | None = Field(description="per model: version and alias")
    error: str | None


def _status(raw: dict[str, Any]) -> JobStatus:
    return JobStatus.model_validate({k: v for k, v in raw.items() if k != "pid"})


@router.post(
    "/models/retrain",
    response_model=JobStatus,
    status_code=202,
    summary="retrain both models in a background job (RevOps); poll /v1/jobs/{id}",
    description="The job trains, registers the new versions and runs the promotion gate "
    "(like `pipecast train`). A failed job registers nothing: the served models stay. "
    "409 while another retrain runs.",
    responses={
        409: error("a retrain is already running"),
        503: error("no store to train on yet"),
    },
)
def retrain(
    body: RetrainRequest,
    caller: RevOpsDep,
    state: StateDep,
    settings: SettingsDep,
    response: Response,
) -> JobStatus:
    from training.config import make_config

    make_config(**(body.config or {}))  # a bad recipe is a 422 now, not a failed job later
    if not state.store.path.exists():
        raise ServiceUnavailable("no store to train on: import data first")
    try:
        status = jobs.start_retrain_if_idle(
            settings.jobs_dir,
            {
                "db": str(state.store.path),
                "stages": str(settings.stages) if settings.stages else None,
                "tracking_uri": settings.mlflow_tracking_uri,
                "artifacts": settings.mlflow_artifacts,
                "config": body.config,
                "as_of": body.as_of.isoformat() if body.as_of else None,
                "requested_by": caller.key_id,
            },
        )
    except jobs.RetrainRunning as busy:
        raise Conflict(str(busy)) from None
    response.headers["Location"] = f"/v1/jobs/{status['id']}"
    return _status(status)


@router.get(
    "/jobs/{job_id}",
    response_model=JobStatus,
    summary="a background job's state and progress (RevOps)",
    responses={404: error("unknown job")},
)
def job(
    job_id: Annotated[str, Path(max_length=64)], caller: RevOpsDep, settings: SettingsDep
) -> JobStatus:
    return _status(jobs.read_status(settings.jobs_dir, job_id))


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: ModelName
    version: str = Field(pattern=r"^[0-9]{1,9}$")
    force: bool = Field(default=False, description="promote even if worse (logged)")


class PromoteResponse(BaseModel):
    name: ModelName
    version: str
    reason: str
    serving: dict[str, str | None] = Field(description="this worker's versions after the swap")


@router.post(
    "/models/promote",
    response_model=PromoteResponse,
    summary="make a version the champion (RevOps), gated like `pipecast promote`",
    description="409 when the gate refuses (worse than the champion, or not comparable) "
    "unless `force`. Every worker swaps to the new champion within "
    "PIPECAST_MODEL_REFRESH_SECONDS; this one at once.",
    responses={404: error("unknown version"), 409: error("gate refused")},
)
def promote(body: PromoteRequest, caller: RevOpsDep, state: StateDep) -> PromoteResponse:
    reason = state.registry.promote(body.name, body.version, force=body.force)
    state.models.refresh()
    return PromoteResponse(
        name=body.name,
        version=body.version,
        reason=reason,
        serving=dict(state.models.current().versions),
    )
