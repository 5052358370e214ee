"""The training recipe: time windows, label horizon, minimum data and model parameters.

One validated object (pydantic, unknown keys refused) so that a recipe can be logged with a model,
compared, and fitted again later on other data (the promotion gate refits the champion's recipe
on the new evaluation rows). ``fit_models(..., **config)`` and ``pipecast train`` build it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from features.data.config import read_yaml, validate
from features.errors import ConfigError


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GbmParams(_Frozen):
    """LightGBM parameters of one model (see :class:`training.win.WinModel`)."""

    # Many shallow trees on large leaves: on 20k generated deals this beat deeper, fewer trees
    # (Brier 0.1311 vs 0.1322 for 600 x 15 leaves, 0.1362 for 1500 x 31), and shallow trees make
    # per-prediction contributions (reasons) cheaper.
    n_estimators: Annotated[int, Field(ge=1, le=20_000)] = 800
    learning_rate: Annotated[float, Field(gt=0, le=1)] = 0.03
    num_leaves: Annotated[int, Field(ge=2, le=4096)] = 7
    min_child_samples: Annotated[int, Field(ge=1)] = 500
    subsample: Annotated[float, Field(gt=0, le=1)] = 0.8
    colsample_bytree: Annotated[float, Field(gt=0, le=1)] = 0.5
    reg_lambda: Annotated[float, Field(ge=0)] = 5.0


class TrainingConfig(_Frozen):
    """How the win and slip models are trained; every default is argued in the README."""

    # P(win) means "won within this many days of as-of". Longer than almost every remaining cycle
    # (99% of won snapshot rows of generated data close within 365 days), short enough that the
    # evaluation and calibration windows can be longer than it (censoring weights need that).
    horizon_days: Annotated[int, Field(ge=30, le=1460)] = 365
    freq: str = "W-MON"
    # No snapshot before this many days after the first deal: the pipeline is still filling up.
    warmup_days: Annotated[int, Field(ge=0)] = 90
    # Windows in weeks of snapshot dates; both exceed horizon_days (see training.datasets).
    calibration_weeks: Annotated[int, Field(ge=4)] = 65
    eval_weeks: Annotated[int, Field(ge=4)] = 65
    min_base_weeks: Annotated[int, Field(ge=4)] = 26
    # The calibration window is scored out of time in this many consecutive folds, each by the
    # recipe fitted before it; the served model is then fitted on every row (training.calibration).
    calibration_folds: Annotated[int, Field(ge=1, le=12)] = 3
    calibration: Literal["sigmoid", "isotonic"] = "sigmoid"
    # Below this, training refuses and scoring falls back to historical stage rates.
    min_closed_deals: Annotated[int, Field(ge=10)] = 200
    min_won: Annotated[int, Field(ge=5)] = 30
    min_lost: Annotated[int, Field(ge=5)] = 30
    # Censoring weights are capped at 1 / min_censoring_survival.
    min_censoring_survival: Annotated[float, Field(gt=0, le=1)] = 0.05
    # Slip: P(won within h days) for h up to this (the close-week distribution: 26 weeks).
    slip_horizon_days: Annotated[int, Field(ge=14, le=730)] = 182
    slip_extra_horizons: Annotated[int, Field(ge=0, le=8)] = 2
    # None: every mapped custom column of the store becomes a feature.
    custom: list[str] | None = None
    # Custom columns fixed at a deal's creation (industry, region, ...): known at every date. Any
    # other custom column carries no history, so before the export it is unknown (missing) on an
    # open deal's rows: point in time, whatever the export lacks.
    static_custom: list[str] = []
    exclude_features: list[str] = []
    win: GbmParams = GbmParams()
    slip: GbmParams = GbmParams(
        n_estimators=250, learning_rate=0.05, num_leaves=31, min_child_samples=200
    )
    # No worse = the new version's Brier (win) / log loss (slip) at most this much above.
    promotion_tolerance: Annotated[float, Field(ge=0, le=0.5)] = 0.005
    random_state: int = 0
    n_jobs: Annotated[int, Field(ge=1, le=2)] = 2

    def fingerprint(self) -> str:
        """A short hash of the recipe: two versions with the same one differ only in data."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def make_config(config: TrainingConfig | None = None, **overrides: Any) -> TrainingConfig:
    """A validated recipe from keyword overrides; a wrong key or value is a :class:`ConfigError`."""
    base = config.model_dump() if config is not None else {}
    try:
        return TrainingConfig.model_validate({**base, **overrides})
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in err.errors()
        )
        raise ConfigError(f"invalid training configuration: {problems}") from None


def config_from_json(text: str) -> TrainingConfig:
    """A recipe logged with a model version (see :mod:`training.tracking`)."""
    try:
        return TrainingConfig.model_validate_json(text)
    except ValidationError as err:
        raise ConfigError(f"logged training configuration no longer valid: {err}") from None


def load_config(path: str | Path) -> TrainingConfig:
    """A recipe from a YAML (or JSON) file of overrides; errors name the file and the key."""
    data = read_yaml(path, "training configuration") or {}
    return validate(TrainingConfig, data, str(path), "training configuration", "win")
