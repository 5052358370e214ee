"""Stage signals: where the deal is in the process and for how long."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.data.stages import StageConfig
from features.signals.events import days_between, flag
from features.signals.registry import SignalKind, signal


@signal("position of the stage in the sales process (1 = qualification)", needs_history=True)
def stage_order(stage: pd.Series, stages: StageConfig) -> pd.Series:
    order = {s.key: float(s.order) for s in stages.stages}
    return pd.Series(stage.map(order), dtype="float64")


@signal("the stage's default win probability (stage configuration)", needs_history=True)
def stage_win_probability(stage: pd.Series, stages: StageConfig) -> pd.Series:
    p = {s.key: s.win_probability for s in stages.stages}
    return pd.Series(stage.map(p), dtype="float64")


@signal("1 if the date the deal entered its current stage is known", SignalKind.FLAG)
def stage_entry_known(stage_entered_at: pd.Series) -> pd.Series:
    return flag(stage_entered_at.notna())


@signal("days since the deal entered its current stage", needs_history=True)
def days_in_stage(as_of: pd.Series, stage_entered_at: pd.Series) -> pd.Series:
    return days_between(as_of, stage_entered_at)


@signal(
    "days in stage divided by the stage norm (midpoint of its typical duration)", needs_history=True
)
def stage_norm_ratio(days_in_stage: pd.Series, stage: pd.Series, stages: StageConfig) -> pd.Series:
    norms = {s.key: s.duration_days.norm for s in stages.stages if s.duration_days}
    norm = pd.Series(stage.map(norms), dtype="float64").replace(0.0, np.nan)
    return days_in_stage / norm


@signal(
    "days from creation to entering the current stage over the summed norms of the stages before "
    "it (1 = on the norms, above 1 slower; missing in the first stage)",
    needs_history=True,
)
def stage_pace(
    stage: pd.Series, stage_entered_at: pd.Series, created_at: pd.Series, stages: StageConfig
) -> pd.Series:
    """A deal's speed through the stages it has left: good deals move faster, and one past stage's
    time says little (a stall, a holiday) while the whole path so far averages that out."""
    before: dict[str, float] = {}
    total = 0.0
    for s in stages.open_stages:
        before[s.key] = total
        total += s.duration_days.norm if s.duration_days else np.nan
    norm = pd.Series(stage.map(before), dtype="float64").replace(0.0, np.nan)
    return days_between(stage_entered_at, created_at) / norm.to_numpy()


@signal("days since the deal was created")
def deal_age_days(as_of: pd.Series, created_at: pd.Series) -> pd.Series:
    return days_between(as_of, created_at)
