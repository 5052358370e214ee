"""Deal facts for the pipeline reports: the point-in-time signals of open deals, read once.

Hygiene rules, the review pack and the metrics tell a rep one story about a deal because they read
the same facts: the signals of :func:`features.signals.compute_signals` (idle days, close-date
pushes, contacts, decision maker, days in stage and its ratio to the norm, days to the expected
close date and to the quarter end, ...), beside the deal's state as of the date. Nothing here counts
events or days itself; the few facts derived below are combinations of signals, defined here once:

- ``days_without_activity``: ``days_since_last_activity``, or the deal's age when it has had no
  activity yet (a deal created 60 days ago and never touched has been idle 60 days);
- ``last_activity_on``: the day of the last activity (``as_of``'s day minus
  ``days_since_last_activity``), missing when there was none;
- ``close_date_passed``: the expected close date is before ``as_of``'s day (today is not past);
- ``stage_norm_days`` / ``stage_limit_days``: the stage norm (midpoint of its typical duration)
  and ``time_in_stage_factor`` x the norm (missing for a stage without a typical duration, or a
  0-day one);
- ``over_stage_norm``: days in stage *strictly more* than the limit (:func:`over_stage_limit`).
  At exactly 1.5x the norm a deal is not flagged, one day more it is; hygiene, the review pack,
  the metrics' outlier counts and the plot all use this one rule. Unknown stage or entry date
  (deals-only imports) is never over;
- ``age_at_quarter_end``: the deal's age on the last day of ``as_of``'s quarter.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from features.data.schema import CanonicalTables
from features.data.stages import StageConfig
from features.signals.driver import signals_of_states
from features.signals.stage import days_in_stage as days_in_stage_signal

# The signals the reports read (hygiene rules, review pack and its risk notes); computing the
# others (activity windows, track records, amount changes) would cost time nobody reads.
FACT_SIGNALS: tuple[str, ...] = (
    "days_since_last_activity",
    "deal_age_days",
    "days_to_expected_close",
    "days_left_in_quarter",
    "days_in_stage",
    "stage_norm_ratio",
    "next_step_defined",
    "days_to_next_step",
    "close_date_push_count",
    "decision_maker_engaged",
    "n_stakeholders",
)


def over_stage_limit(days_in_stage: Any, limit_days: Any) -> Any:
    """The time-in-stage rule: strictly more days than the limit (NaN on either side: False)."""
    with np.errstate(invalid="ignore"):
        return np.greater(
            np.asarray(days_in_stage, dtype="float64"), np.asarray(limit_days, dtype="float64")
        )


def stage_limits(stages: StageConfig) -> dict[str, tuple[float, float]]:
    """Open stage key -> (norm days, limit days) for stages that have a typical duration."""
    factor = stages.hygiene.time_in_stage_factor
    out = {}
    for s in stages.open_stages:
        norm = stages.norm_days(s.key)
        if norm:  # a 0-day norm (duration 0-0) is no norm: nothing is "5x" of it
            out[s.key] = (norm, norm * factor)
    return out


def open_deal_facts(
    tables: CanonicalTables, stages: StageConfig, as_of: pd.Timestamp, states: pd.DataFrame
) -> pd.DataFrame:
    """One row per open deal of ``states`` (rebuilt as of ``as_of`` by
    :func:`~features.signals.pointintime.deal_states_as_of`), in ``states``' order: its state
    columns, its signals (:data:`FACT_SIGNALS`) as of ``as_of`` and the derived facts of the
    module docstring. The signals are computed on these very states, not on a second rebuild."""
    open_states = states[states["is_open"]].reset_index(drop=True)
    stamp = pd.Series(pd.Timestamp(as_of), index=open_states.index).astype("datetime64[us]")
    signals = signals_of_states(
        tables, open_states.assign(as_of=stamp), stages, signals=FACT_SIGNALS
    )
    extra = [c for c in signals.columns if c not in open_states.columns and c != "as_of"]
    facts = pd.concat([open_states, signals[extra]], axis=1)
    return _derive(facts, stages, as_of)


def stage_time(states: pd.DataFrame, stages: StageConfig, as_of: pd.Timestamp) -> pd.DataFrame:
    """Just the time-in-stage facts of ``states`` (same index): ``days_in_stage`` from the
    signal's own function, the norm, the limit and ``over_stage_norm``.

    For the metrics, which need only these: computing every signal for them would cost several
    times the metrics themselves. The function is the signal's definition, so the two agree.
    """
    stamps = pd.Series(as_of, index=range(len(states))).astype("datetime64[us]")
    entered = states["stage_entered_at"].reset_index(drop=True)
    days = pd.Series(days_in_stage_signal(stamps, entered).to_numpy(), index=states.index)
    return pd.DataFrame(
        {"days_in_stage": days, **_limits(states["stage"], days, stages)}, index=states.index
    )


def _limits(stage: pd.Series, days_in_stage: pd.Series, stages: StageConfig) -> dict[str, Any]:
    """``stage_norm_days``, ``stage_limit_days`` and ``over_stage_norm`` of each deal."""
    limits = stage_limits(stages)
    keys = stage.astype(object)
    norm = keys.map({k: v[0] for k, v in limits.items()}).astype("float64")
    limit = keys.map({k: v[1] for k, v in limits.items()}).astype("float64")
    return {
        "stage_norm_days": norm,
        "stage_limit_days": limit,
        "over_stage_norm": over_stage_limit(days_in_stage.astype("float64"), limit),
    }


def _derive(facts: pd.DataFrame, stages: StageConfig, as_of: pd.Timestamp) -> pd.DataFrame:
    since = facts["days_since_last_activity"].astype("float64")
    day = as_of.normalize()
    return facts.assign(
        days_without_activity=since.fillna(facts["deal_age_days"].astype("float64")),
        last_activity_on=(day - pd.to_timedelta(since, unit="D")).astype("datetime64[us]"),
        close_date_passed=(facts["days_to_expected_close"].astype("float64") < 0).to_numpy(),
        **_limits(facts["stage"], facts["days_in_stage"], stages),
        age_at_quarter_end=(
            facts["deal_age_days"].astype("float64")
            + facts["days_left_in_quarter"].astype("float64")
        ),
    )
