"""Rebuild deals as they stood on a past date, from the history tables only.

Everything here answers "what did we know at ``as_of``?". A deal's current row is its state at
``observed_at`` (the export time); earlier states come from ``stage_history`` and
``field_history``. Nothing stamped after ``as_of`` is read, so features and labels built on top of
these states cannot leak the future.

Rules for a tracked field (amount, expected close date, forecast category, next step, next-step
date) of a deal with CRM history:
- the last change on or before ``as_of`` gives its ``new_value``;
- else the first change after ``as_of`` gives its ``old_value`` (the value it had before);
- else the field never changed and the current value held all along.
A deal loaded from a deals-only export (``history_source == 'derived'``) has no such history, so
before ``observed_at`` its tracked fields and stage are *unknown* (missing), never guessed.

Works on many dates at once (one row per deal and date) so training snapshots are set-based.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from features.data.schema import TRACKED_FIELDS, CanonicalTables, HistorySource, Outcome
from features.data.stages import StageConfig, StageKind

_STATIC = ["deal_id", "account", "owner", "team", "segment", "product", "created_at", "competitor"]
_DATE_FIELDS = {"expected_close_date", "next_step_date"}


def _as_of_index(as_of: Iterable[pd.Timestamp] | pd.Timestamp) -> pd.DatetimeIndex:
    if isinstance(as_of, pd.Timestamp):
        as_of = [as_of]
    stamps = sorted({pd.Timestamp(t) for t in as_of})
    return pd.DatetimeIndex(np.array(stamps, dtype="datetime64[us]"))


def _grid(deals: pd.DataFrame, dates: pd.DatetimeIndex, open_only: bool) -> pd.DataFrame:
    """One row per (as_of, deal) for deals that existed at as_of (and, optionally, were open)."""
    base = deals[["deal_id", "created_at", "closed_at"]].copy()
    base["created_at"] = base["created_at"].astype("datetime64[us]")
    base["closed_at"] = base["closed_at"].astype("datetime64[us]")
    created = base["created_at"].to_numpy()
    closed = base["closed_at"].to_numpy()
    parts = []
    for t in dates.to_numpy():
        alive = created <= t
        if open_only:
            alive &= ~(closed <= t)  # NaT compares False: still open
        idx = np.flatnonzero(alive)
        parts.append(pd.DataFrame({"as_of": np.repeat(t, len(idx)), "_row": idx}))
    grid = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({"as_of": [], "_row": []})
    grid["as_of"] = grid["as_of"].astype("datetime64[us]")
    ids = deals["deal_id"].to_numpy()[grid["_row"].to_numpy(dtype=np.int64)]
    # typed even when empty (no deal existed yet), so the merges below still match dtypes
    grid["deal_id"] = pd.Series(ids, index=grid.index, dtype=deals["deal_id"].dtype)
    return grid


def _asof(
    left: pd.DataFrame,
    right: pd.DataFrame,
    on: str,
    direction: str,
    allow_exact: bool = True,
) -> pd.DataFrame:
    """merge_asof of ``left`` (deal_id, as_of) with events ``right`` stamped at ``on``."""
    right = right.copy()
    right[on] = right[on].astype("datetime64[us]")
    right = right.sort_values(on, kind="stable")
    out = pd.merge_asof(
        left.sort_values("as_of", kind="stable"),
        right,
        left_on="as_of",
        right_on=on,
        by="deal_id",
        direction=direction,  # type: ignore[arg-type]
        allow_exact_matches=allow_exact,
    )
    return out.sort_values("_key", kind="stable").reset_index(drop=True)


def _parse_field(values: pd.Series, field: str) -> pd.Series:
    if field == "amount":
        return pd.to_numeric(values, errors="coerce").astype("float64")
    if field in _DATE_FIELDS:
        return pd.to_datetime(values, errors="coerce").astype("datetime64[us]")
    return values.astype("str").where(values.notna())


def deal_states(
    tables: CanonicalTables,
    as_of: Iterable[pd.Timestamp] | pd.Timestamp,
    stages: StageConfig,
    *,
    open_only: bool = False,
) -> pd.DataFrame:
    """The state of every deal that existed at each ``as_of`` (one row per as_of and deal).

    Columns: as_of, the static deal attributes, ``custom_*`` columns, stage, stage_entered_at,
    stage_known, is_open, outcome, closed_at (only if closed by as_of), the tracked fields, and
    ``history_known`` (False where the tracked fields could not be rebuilt and are missing).
    """
    deals = tables.deals.reset_index(drop=True)
    dates = _as_of_index(as_of)
    grid = _grid(deals, dates, open_only)
    grid["_key"] = np.arange(len(grid))

    # --- stage: last stage change on or before as_of ------------------------------------------
    sh = tables.stage_history[["deal_id", "stage", "entered_at", "derived"]]
    st = _asof(grid[["_key", "as_of", "deal_id"]], sh, "entered_at", "backward")
    out = grid.copy()
    out["stage"] = st["stage"].to_numpy()
    derived_row = st["derived"].fillna(False).astype(bool).to_numpy()
    # A derived row only says the deal was *seen* in that stage then: its entry time is unknown.
    out["stage_entered_at"] = st["entered_at"].where(~derived_row).to_numpy()

    # --- static attributes (known from creation) ---------------------------------------------
    custom = [c for c in deals.columns if c.startswith("custom_")]
    static = deals[[c for c in _STATIC if c in deals.columns] + custom]
    out = out.merge(static, on="deal_id", how="left", validate="many_to_one")

    cur = deals.set_index("deal_id")
    closed_at = pd.to_datetime(cur["closed_at"].reindex(out["deal_id"]).to_numpy())
    closed_by = pd.Series(closed_at <= out["as_of"].to_numpy(), index=out.index)
    out["is_open"] = ~closed_by
    final_outcome = cur["outcome"].reindex(out["deal_id"]).to_numpy()
    out["outcome"] = np.where(closed_by, final_outcome, Outcome.OPEN.value)
    out["closed_at"] = pd.Series(closed_at, index=out.index).where(closed_by)
    kind = {s.key: s.kind for s in stages.stages}
    closed_stage = np.where(out["outcome"] == Outcome.WON.value, stages.won_key, stages.lost_key)
    # The close itself is known even when the path to it is not (deals-only exports).
    out["stage"] = np.where(closed_by, closed_stage, out["stage"])
    stage_kind = out["stage"].map(lambda s: kind.get(s) if isinstance(s, str) else None)
    bad_open = (~closed_by) & stage_kind.isin([StageKind.WON, StageKind.LOST])
    out.loc[bad_open, "stage"] = None  # history says closed, the deal row says open: unknown
    out["stage_known"] = out["stage"].notna()

    # --- tracked fields -------------------------------------------------------------------------
    observed = pd.to_datetime(cur["observed_at"].reindex(out["deal_id"]).to_numpy())
    derived = (
        cur["history_source"].reindex(out["deal_id"]).to_numpy() == HistorySource.DERIVED.value
    )
    history_known = ~(derived & (out["as_of"].to_numpy() < observed))
    out["history_known"] = history_known
    fh = tables.field_history
    keys = grid[["_key", "as_of", "deal_id"]]
    for field in TRACKED_FIELDS:
        current = _parse_field(cur[field].reindex(out["deal_id"]), field).reset_index(drop=True)
        changes = fh.loc[fh["field"] == field, ["deal_id", "changed_at", "old_value", "new_value"]]
        if changes.empty:
            value = current
        else:
            before = _asof(keys, changes, "changed_at", "backward")
            after = _asof(keys, changes, "changed_at", "forward", allow_exact=False)
            value = _parse_field(before["new_value"], field)
            has_before = before["changed_at"].notna()
            has_after = after["changed_at"].notna()
            prior = _parse_field(after["old_value"], field)
            value = value.where(has_before, prior.where(has_after, current))
        out[field] = value.where(history_known).to_numpy()
    return out.drop(columns=["_row", "_key"]).reset_index(drop=True)


def deal_states_as_of(
    tables: CanonicalTables,
    as_of: pd.Timestamp,
    stages: StageConfig,
    *,
    open_only: bool = False,
) -> pd.DataFrame:
    """:func:`deal_states` for a single date (one row per deal that existed at ``as_of``)."""
    return deal_states(tables, as_of, stages, open_only=open_only).drop(columns="as_of")


def events_as_of(events: pd.DataFrame, column: str, as_of: pd.Timestamp) -> pd.DataFrame:
    """Rows of an event table stamped on or before ``as_of`` (activities, stakeholders...)."""
    return events[events[column] <= as_of]
