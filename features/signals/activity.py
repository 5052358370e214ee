"""Activity signals: the rhythm of calls, meetings, demos and proposals up to the date."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.data.schema import ActivityType
from features.signals.events import NAT, EventIndex, codes, days_between, micros
from features.signals.registry import SignalSpec, node, signal, signal_group

ACTIVITY_WINDOWS: tuple[int, ...] = (14, 30, 90)
ACTIVITY_TYPES: tuple[str, ...] = tuple(a.value for a in ActivityType)


@node
def deal_index(deals: pd.DataFrame) -> pd.Index:
    return pd.Index(deals["deal_id"])


@node
def activity_index(activities: pd.DataFrame, deal_index: pd.Index) -> EventIndex:
    return EventIndex(codes(activities["deal_id"], deal_index), activities["occurred_at"])


_ACTIVITY_SPECS = [
    SignalSpec(f"activities_{t}_{w}d", f"{t.replace('_', ' ')} activities in the last {w} days")
    for w in ACTIVITY_WINDOWS
    for t in ACTIVITY_TYPES
] + [
    SignalSpec(f"activities_total_{w}d", f"all activities in the last {w} days")
    for w in ACTIVITY_WINDOWS
]


@signal_group(_ACTIVITY_SPECS)
def activity_counts(
    activities: pd.DataFrame, activity_index: EventIndex, deal_code: np.ndarray, as_of: pd.Series
) -> pd.DataFrame:
    """Windowed counts per type from per-type prefix sums: two lookups per window, any type."""
    idx = activity_index
    types = activities["type"].to_numpy()
    sums = {t: idx.cumsum(types == t) for t in ACTIVITY_TYPES}
    sums["total"] = idx.cumsum(np.ones(len(types)))
    hi = idx.end(deal_code, as_of)
    out: dict[str, np.ndarray] = {}
    for w in ACTIVITY_WINDOWS:
        lo = idx.end(deal_code, as_of - pd.Timedelta(days=w))
        for t, cs in sums.items():
            out[f"activities_{t}_{w}d"] = cs[hi] - cs[lo]
    return pd.DataFrame(out)


@signal("activities ever logged on the deal up to the date")
def activities_total(
    activity_index: EventIndex, deal_code: np.ndarray, as_of: pd.Series
) -> pd.Series:
    idx = activity_index
    return pd.Series((idx.end(deal_code, as_of) - idx.start(deal_code)).astype("float64"))


@signal("days since the last activity (missing when there has been none)")
def days_since_last_activity(
    activity_index: EventIndex, deal_code: np.ndarray, as_of: pd.Series
) -> pd.Series:
    idx = activity_index
    end = idx.end(deal_code, as_of)
    has = end > idx.start(deal_code)
    last = np.where(has, idx.times[np.maximum(end - 1, 0)] if len(idx) else NAT, NAT)
    return days_between(as_of, pd.Series(last.astype("datetime64[us]")))


@node
def field_change_index(field_history: pd.DataFrame, deal_index: pd.Index) -> EventIndex:
    return EventIndex(codes(field_history["deal_id"], deal_index), field_history["changed_at"])


@node
def stage_change_index(stage_history: pd.DataFrame, deal_index: pd.Index) -> EventIndex:
    """Stage changes with a known time (a derived row only says when the deal was seen)."""
    logged = stage_history[~stage_history["derived"].astype(bool)]
    return EventIndex(codes(logged["deal_id"], deal_index), logged["entered_at"])


@node
def stakeholder_index(stakeholders: pd.DataFrame, deal_index: pd.Index) -> EventIndex:
    return EventIndex(codes(stakeholders["deal_id"], deal_index), stakeholders["added_at"])


def _last_time(idx: EventIndex, deal_code: np.ndarray, as_of: pd.Series) -> np.ndarray:
    """Microseconds of each deal's last event on or before as_of (NAT when none)."""
    end = idx.end(deal_code, as_of)
    has = end > idx.start(deal_code)
    if not len(idx):
        return np.full(len(deal_code), NAT, dtype=np.int64)
    return np.where(has, idx.times[np.maximum(end - 1, 0)], NAT)


@signal(
    "days since anything was last logged on the deal (an activity, a field change, a stage "
    "change, a stakeholder, or its creation): a deal nobody touches has often been given up"
)
def days_since_last_touch(
    activity_index: EventIndex,
    field_change_index: EventIndex,
    stage_change_index: EventIndex,
    stakeholder_index: EventIndex,
    deal_code: np.ndarray,
    as_of: pd.Series,
    created_at: pd.Series,
) -> pd.Series:
    """Silence in activities alone mixes deals given up with deals in a quiet stage (waiting for
    a capex round); a live deal still gets its close date moved and its next step updated."""
    indexes = (activity_index, field_change_index, stage_change_index, stakeholder_index)
    last = micros(created_at)
    for idx in indexes:
        last = np.maximum(last, _last_time(idx, deal_code, as_of))
    return days_between(as_of, pd.Series(last.astype("datetime64[us]")))
