"""Rebuild deals as they stood on a past date, from the history tables only.

Everything here answers "what did we know at ``as_of``?". Nothing stamped after ``as_of`` is read,
so features and labels built on these states cannot leak the future.

**The deal row speaks for its ``observed_at`` (the export time) and later, never before it.** A real
CRM export overwrites a deal's row up to the export: a closed deal's forecast category reads
``closed``/``omitted``, its close date is the actual close date, its amount the final (discounted)
one. Before ``observed_at`` a tracked field (amount, expected close date, forecast category, next
step, next-step date) is known only where dated history covers it, for open and closed deals alike:

- the last change on or before ``as_of`` gives its ``new_value``;
- else the first change after ``as_of`` gives its ``old_value`` (the value it had before);
- else, the field never changed for this deal, and the current value held all along.

All three need the field to be *tracked* at ``as_of``: a field counts as tracked from its first
logged change anywhere in the store (:func:`tracked_since`); a CRM that logs a field logs every
change of it, including the one at the close. Before that date, or for a field with no history
at all (Salesforce orgs often track only CloseDate and Amount), the field is **unknown** (missing,
``<field>_known`` false), never the deal row's value. Why the same rule for open deals: if only
closed deals lost their row values, a missing forecast category would itself say "this deal
closes before the export" (a training set cut at T, or a backtest, would learn it). Here whether a
field is known depends on ``as_of``, the store's tracking and the export the row came from, never
on how or when the deal ends.

Other cases:

- ``as_of >= observed_at``: the row's values hold, stage too (a newer export whose row changed
  without history rows); where the row's stage differs from the last stage-history row, its
  entry time is unknown. A dated change after ``observed_at`` and on or before ``as_of`` wins.
- a deal already closed at ``as_of``: an untracked field takes the row's value, what the deal
  closed with (the outcome is no longer future; ``pipecast audit`` reports changes after a close).
- a deals-only import (``history_source == 'derived'``): no history was exported, so before
  ``observed_at`` the stage and tracked fields are unknown.
- a won or lost deal without ``closed_at`` (a deals-only export that lacks close dates): the row
  proves it closed by ``observed_at``, so it is closed from then on (:func:`closing_time`); its
  ``closed_at`` stays missing (when it closed is unknown, so no window counts it), and before
  ``observed_at`` it is open with whatever history says (unknown stage on a deals-only import).
- fixed at creation, taken from the row at every date: account, owner, team, segment, product,
  created_at, competitor (an assumption: the audit measures whether they separate won from lost
  far from the close). ``custom_*`` columns carry no history: when ``static_custom`` is given,
  a custom column not listed there is unknown before ``observed_at`` (as a tracked field is).

There is one rule, for every reader (signals, snapshots, metrics, hygiene, review, audit):
nothing known only after ``as_of`` reaches a state. :func:`deal_states` is one short function per
concern (grid, static columns, outcome, stage, tracked fields), so a step such as a currency
conversion is one more function.

Works on many dates at once (one row per deal and date) so training snapshots are set-based.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.data.currency import in_corporate_currency
from features.data.schema import (
    CUSTOM_PREFIX,
    DATE_FIELDS,
    TRACKED_FIELDS,
    CanonicalTables,
    HistorySource,
    Outcome,
)
from features.data.stages import StageConfig, StageKind
from features.errors import NotFoundError
from features.signals.events import codes

# Deal columns assumed fixed at creation: read from the row at every date.
STATIC_COLUMNS: tuple[str, ...] = (
    "account",
    "owner",
    "team",
    "segment",
    "product",
    "created_at",
    "competitor",
)


def known_column(field: str) -> str:
    """The flag column of a tracked field: ``amount`` -> ``amount_known``."""
    return f"{field}_known"


def tracked_since(field_history: pd.DataFrame) -> dict[str, pd.Timestamp]:
    """Each tracked field's first logged change anywhere in the store (absent: never tracked)."""
    if field_history.empty:
        return {}
    first = field_history.groupby("field", observed=True)["changed_at"].min()
    return {str(f): pd.Timestamp(t) for f, t in first.items() if str(f) in TRACKED_FIELDS}


def states_a_value(field_history: pd.DataFrame) -> np.ndarray:
    """Rows without an old value: they state a value (the creation row of a snapshot history,
    a field's first value), they change none. Change counts skip them."""
    old = field_history["old_value"]
    text = old.astype("str").str.strip()
    return (old.isna() | (text == "")).to_numpy(dtype=bool)


def custom_column_names(deals: pd.DataFrame, custom: Iterable[str]) -> list[str]:
    """Resolve ``industry`` or ``custom_industry`` to deal columns; unknown names fail loudly."""
    names = []
    for name in custom:
        col = name if name.startswith(CUSTOM_PREFIX) else CUSTOM_PREFIX + name
        if col not in deals.columns:
            known = [c for c in deals.columns if c.startswith(CUSTOM_PREFIX)]
            raise NotFoundError(
                f"custom column {col!r} is not in deals; mapped custom columns: {known}"
            )
        names.append(col)
    return names


def _as_of_index(as_of: Iterable[pd.Timestamp] | pd.Timestamp) -> pd.DatetimeIndex:
    if isinstance(as_of, pd.Timestamp):
        as_of = [as_of]
    stamps = sorted({pd.Timestamp(t) for t in as_of})
    return pd.DatetimeIndex(np.array(stamps, dtype="datetime64[us]"))


def closing_time(deals: pd.DataFrame) -> pd.Series:
    """When each deal counts as closed: ``closed_at``, else, for a won or lost deal without one
    (a deals-only export lacking close dates), its ``observed_at``: the row proves the deal was
    closed by then, not when. Open deals: NaT."""
    closed_at = deals["closed_at"].astype("datetime64[us]")
    observed = deals["observed_at"].astype("datetime64[us]")
    closed = deals["outcome"].isin([Outcome.WON.value, Outcome.LOST.value]).to_numpy(dtype=bool)
    return closed_at.where(closed_at.notna() | ~closed, observed)


def _grid(deals: pd.DataFrame, dates: pd.DatetimeIndex, open_only: bool) -> pd.DataFrame:
    """One row per (as_of, deal) for deals that existed at as_of (and, optionally, were open)."""
    created = deals["created_at"].astype("datetime64[us]").to_numpy()
    closed = closing_time(deals).to_numpy()
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
    grid["_row"] = grid["_row"].astype(np.int64)
    # sorted by as_of (dates ascending, built in order): merge_asof needs it, and keeps it
    return grid


def _events(events: pd.DataFrame, on: str, deals: pd.DataFrame) -> pd.DataFrame:
    """History rows keyed by their deal's row position (``_row``; rows of deals not in
    ``deals`` dropped), stamped at ``on`` (datetime64[us]) and sorted by it, for :func:`_asof`.
    Integer keys: merge_asof by the text ids cost a factorisation of both sides per call."""
    out = events.assign(_row=codes(events["deal_id"], pd.Index(deals["deal_id"])))
    out[on] = out[on].astype("datetime64[us]")
    out = out[(out["_row"] >= 0) & out[on].notna()].drop(columns="deal_id")
    return out.sort_values(on, kind="stable").reset_index(drop=True)


def _asof(
    rows: _Rows, events: pd.DataFrame, on: str, direction: str, allow_exact: bool = True
) -> pd.DataFrame:
    """For each grid row, its deal's event (from :func:`_events`) stamped nearest to as_of in
    ``direction``: the events' columns in grid order, missing where there is none."""
    return pd.merge_asof(
        rows.left,
        events,
        left_on="as_of",
        right_on=on,
        by="_row",
        direction=direction,  # type: ignore[arg-type]
        allow_exact_matches=allow_exact,
    )


def parse_field(values: pd.Series, field: str) -> pd.Series:
    """Field-history text (or deal column) values of a tracked field in the field's dtype."""
    if field == "amount":
        return pd.to_numeric(values, errors="coerce").astype("float64")
    if field in DATE_FIELDS:
        return pd.to_datetime(values, errors="coerce").astype("datetime64[us]")
    return values.astype("str").where(values.notna())


@dataclass(frozen=True)
class _Rows:
    """Per (as_of, deal) row facts that decide which source may speak for a value."""

    left: pd.DataFrame  # as_of, _row (the deal's row): the left side of every as-of merge
    deals: pd.DataFrame  # the deal rows (0..n-1)
    pos: np.ndarray  # each grid row's deal row
    as_of: np.ndarray  # datetime64[us]
    observed: np.ndarray  # the deal row's observed_at
    closed_by: np.ndarray  # closed on or before as_of (closing_time)
    derived: np.ndarray  # deals-only import: no history exported

    @property
    def row_speaks(self) -> np.ndarray:
        """The deal row is a statement about observed_at and later."""
        return self.as_of >= self.observed

    @property
    def row_known(self) -> np.ndarray:
        """The row's values hold: from observed_at on, or once the deal has closed (what it
        closed with is no longer future)."""
        return self.row_speaks | self.closed_by

    def column(self, name: str) -> pd.Series:
        """A deal-row column lined up with the grid (index 0..n-1)."""
        return self.deals[name].take(self.pos).reset_index(drop=True)


def _rows(grid: pd.DataFrame, deals: pd.DataFrame) -> _Rows:
    pos = grid["_row"].to_numpy(dtype=np.int64)
    as_of = grid["as_of"].to_numpy()
    closes = closing_time(deals).to_numpy()[pos]
    observed = deals["observed_at"].astype("datetime64[us]").to_numpy()[pos]
    source = deals["history_source"].to_numpy()[pos]
    return _Rows(
        left=grid[["as_of", "_row"]].reset_index(drop=True),
        deals=deals,
        pos=pos,
        as_of=as_of,
        observed=observed,
        closed_by=closes <= as_of,
        derived=source == HistorySource.DERIVED.value,
    )


def _static_columns(
    rows: _Rows, deals: pd.DataFrame, static_custom: Iterable[str]
) -> dict[str, Any]:
    """Columns fixed at creation (:data:`STATIC_COLUMNS`), and the ``custom_*`` columns: those
    not declared in ``static_custom`` only where the row's values hold (``row_known``)."""
    out: dict[str, Any] = {}
    for col in (c for c in STATIC_COLUMNS if c in deals.columns):
        out[col] = rows.column(col)
    fixed = set(custom_column_names(deals, static_custom))
    known = rows.row_known
    for col in (c for c in deals.columns if c.startswith(CUSTOM_PREFIX)):
        out[col] = rows.column(col) if col in fixed else rows.column(col).where(known)
    out["row_known"] = known
    return out


def _outcome(rows: _Rows) -> dict[str, Any]:
    """Open until the deal's closing time; then its outcome, and ``closed_at`` (missing when the
    export gave no close date: see :func:`closing_time`)."""
    closed = rows.closed_by
    return {
        "is_open": ~closed,
        "outcome": np.where(closed, rows.column("outcome").to_numpy(), Outcome.OPEN.value),
        "closed_at": rows.column("closed_at").astype("datetime64[us]").where(closed),
    }


def _stage(rows: _Rows, stage_history: pd.DataFrame, stages: StageConfig) -> dict[str, Any]:
    """Stage and its entry time: from the last stage change on or before as_of; from
    observed_at on, the row's stage unless a later stage change says otherwise; the closed stage
    once closed. A stage that history says is closed on a deal still open is unknown."""
    sh = _events(
        stage_history[["deal_id", "stage", "entered_at", "derived"]], "entered_at", rows.deals
    )
    st = _asof(rows, sh, "entered_at", "backward")
    logged = st["stage"].to_numpy(dtype=object)
    derived_row = st["derived"].fillna(False).astype(bool).to_numpy()
    # A derived row only says the deal was *seen* in that stage then: its entry time is unknown.
    entered = st["entered_at"].astype("datetime64[us]").where(~derived_row)
    newer_history = st["entered_at"].astype("datetime64[us]").to_numpy() > rows.observed
    use_row = rows.row_speaks & ~newer_history  # NaT compares False
    row_stage = rows.column("stage").to_numpy(dtype=object)
    moved = use_row & (row_stage != logged)
    outcome = rows.column("outcome").to_numpy()
    closed_stage = np.where(outcome == Outcome.WON.value, stages.won_key, stages.lost_key)
    # The close itself is known even when the path to it is not (deals-only exports).
    open_stage = np.where(use_row, row_stage, logged)
    stage = pd.Series(np.where(rows.closed_by, closed_stage, open_stage), dtype=object)
    closed_keys = [s.key for s in stages.stages if s.kind in (StageKind.WON, StageKind.LOST)]
    bad_open = ~rows.closed_by & stage.isin(closed_keys).to_numpy()
    stage = stage.where(~bad_open, None)  # history says closed, the deal row says open: unknown
    return {
        "stage": stage,
        "stage_entered_at": entered.where(~moved),
        "stage_known": stage.notna().to_numpy(),
    }


def _tracked_field(
    field: str,
    rows: _Rows,
    changes: pd.DataFrame,
    since: pd.Timestamp | None,
) -> tuple[pd.Series, np.ndarray]:
    """One tracked field's value at each row and whether it is known (module docstring)."""
    current = parse_field(rows.column(field), field)
    speaks = rows.row_speaks
    if changes.empty:
        history = current
        newest = current
    else:
        changes = _events(changes, "changed_at", rows.deals).assign(
            old_value=lambda c: parse_field(c["old_value"], field),
            new_value=lambda c: parse_field(c["new_value"], field),
        )
        before = _asof(rows, changes.drop(columns="old_value"), "changed_at", "backward")
        new_value = before["new_value"]
        # from observed_at on the row holds, unless a change stamped after it is newer
        later = before["changed_at"].astype("datetime64[us]").to_numpy() > rows.observed
        newest = new_value.where(later, current)
        history = current  # read only where the row does not speak: none here, skip the merge
        if not speaks.all():
            after = _asof(
                rows, changes.drop(columns="new_value"), "changed_at", "forward", allow_exact=False
            )
            has_before = before["changed_at"].notna()
            has_after = after["changed_at"].notna()
            prior = after["old_value"]
            history = new_value.where(has_before, prior.where(has_after, current))
    tracked = ~rows.derived & (since is not None) & (rows.as_of >= np.datetime64(since, "us"))
    known = speaks | tracked | rows.closed_by
    value = newest.where(speaks, history.where(tracked, current.where(rows.closed_by)))
    return value.where(known), known


def _tracked_fields(
    rows: _Rows, field_history: pd.DataFrame, since: dict[str, pd.Timestamp] | None = None
) -> dict[str, Any]:
    """Every tracked field, its ``<field>_known`` flag and ``history_known`` (all known);
    ``since`` as :func:`tracked_since` of the whole store when ``field_history`` is a part."""
    since = tracked_since(field_history) if since is None else since
    out: dict[str, Any] = {}
    all_known = np.ones(len(rows.as_of), dtype=bool)
    cols = ["deal_id", "changed_at", "old_value", "new_value"]
    for field in TRACKED_FIELDS:
        changes = field_history.loc[field_history["field"] == field, cols]
        value, known = _tracked_field(field, rows, changes, since.get(field))
        out[field] = value
        out[known_column(field)] = known
        all_known &= known
    out["history_known"] = all_known
    return out


def deal_states(
    tables: CanonicalTables,
    as_of: Iterable[pd.Timestamp] | pd.Timestamp,
    stages: StageConfig,
    *,
    open_only: bool = False,
    static_custom: Iterable[str] = (),
    tracked: dict[str, pd.Timestamp] | None = None,
) -> pd.DataFrame:
    """The state of every deal that existed at each ``as_of`` (one row per as_of and deal), by
    the rule of the module docstring: nothing known only after ``as_of``.

    Columns: as_of, deal_id, the static deal attributes, ``custom_*`` columns, ``row_known``,
    is_open, outcome, closed_at (only if closed by as_of), stage, stage_entered_at, stage_known,
    the tracked fields, ``<field>_known`` per tracked field and ``history_known`` (every tracked
    field known). ``row_known`` says whether the deal row's own values hold at the date (from
    ``observed_at`` on, or once the deal has closed): a deal column without history (custom
    columns, loss reason, ...) is known only there. ``static_custom`` lists the custom columns
    declared fixed at creation, known at every date; the others are missing where the row is
    not known. ``tracked`` is :func:`tracked_since` of the whole store, for ``tables`` that hold
    only some deals' rows (the tracking start is a fact of the export, not of a deal; default:
    read from ``tables``). ``amount`` is in the corporate currency at the date
    (:func:`features.data.currency.in_corporate_currency`); ``amount_original`` and
    ``currency`` are the deal's own.
    """
    deals = tables.deals.reset_index(drop=True)
    grid = _grid(deals, _as_of_index(as_of), open_only)
    rows = _rows(grid, deals)
    out: dict[str, Any] = {
        "as_of": grid["as_of"].to_numpy(),
        "deal_id": grid["deal_id"].reset_index(drop=True),
    }
    _add(out, _static_columns(rows, deals, static_custom))
    _add(out, _outcome(rows))
    _add(out, _stage(rows, tables.stage_history, stages))
    _add(out, _tracked_fields(rows, tables.field_history, tracked))
    # Amounts in the corporate currency at each as_of (the deal's own beside it).
    money = ["amount", "amount_original", "currency"]
    converted = in_corporate_currency(
        pd.DataFrame({k: out[k] for k in ("as_of", "deal_id", "amount", "closed_at")}),
        deals,
        tables.exchange_rates,
    )
    _add(out, {name: converted[name] for name in money})
    return pd.DataFrame(out)


def _add(out: dict[str, Any], columns: dict[str, Any]) -> None:
    """Put one concern's columns into the states' columns, positionally (every part is in grid
    order). Part by part, so no part's intermediate frames outlive it; the frame is built once
    at the end (a column inserted at a time cost more than the rebuild for a few deals)."""
    for name, column in columns.items():
        out[name] = column.to_numpy() if isinstance(column, pd.Series) else column


def deal_states_as_of(
    tables: CanonicalTables,
    as_of: pd.Timestamp,
    stages: StageConfig,
    *,
    open_only: bool = False,
    static_custom: Iterable[str] = (),
) -> pd.DataFrame:
    """:func:`deal_states` for a single date (one row per deal that existed at ``as_of``)."""
    states = deal_states(tables, as_of, stages, open_only=open_only, static_custom=static_custom)
    return states.drop(columns="as_of")


def events_as_of(events: pd.DataFrame, column: str, as_of: pd.Timestamp) -> pd.DataFrame:
    """Rows of an event table stamped on or before ``as_of`` (activities, stakeholders...)."""
    return events[events[column] <= as_of]
