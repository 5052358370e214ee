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
- fixed at creation, taken from the row at every date: account, owner, team, segment, product,
  created_at, competitor (an assumption: the audit measures whether they separate won from lost
  far from the close). ``custom_*`` columns carry no history: when ``static_custom`` is given,
  a custom column not listed there is unknown before ``observed_at`` (as a tracked field is).

Works on many dates at once (one row per deal and date) so training snapshots are set-based.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.data.currency import in_corporate_currency
from features.data.schema import (
    CUSTOM_PREFIX,
    TRACKED_FIELDS,
    CanonicalTables,
    HistorySource,
    Outcome,
)
from features.data.stages import StageConfig, StageKind
from features.errors import NotFoundError

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
_DATE_FIELDS = {"expected_close_date", "next_step_date"}


def known_column(field: str) -> str:
    """The flag column of a tracked field: ``amount`` -> ``amount_known``."""
    return f"{field}_known"


def tracked_since(field_history: pd.DataFrame) -> dict[str, pd.Timestamp]:
    """Each tracked field's first logged change anywhere in the store (absent: never tracked)."""
    if field_history.empty:
        return {}
    first = field_history.groupby("field", observed=True)["changed_at"].min()
    return {str(f): pd.Timestamp(t) for f, t in first.items() if str(f) in TRACKED_FIELDS}


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


def parse_field(values: pd.Series, field: str) -> pd.Series:
    """Field-history text (or deal column) values of a tracked field in the field's dtype."""
    if field == "amount":
        return pd.to_numeric(values, errors="coerce").astype("float64")
    if field in _DATE_FIELDS:
        return pd.to_datetime(values, errors="coerce").astype("datetime64[us]")
    return values.astype("str").where(values.notna())


@dataclass(frozen=True)
class _Rows:
    """Per (as_of, deal) row facts that decide which source may speak for a value."""

    keys: pd.DataFrame  # _key, as_of, deal_id
    as_of: np.ndarray  # datetime64[us]
    observed: np.ndarray  # the deal row's observed_at
    closed_by: np.ndarray  # closed on or before as_of
    derived: np.ndarray  # deals-only import: no history exported

    @property
    def row_speaks(self) -> np.ndarray:
        """The deal row is a statement about observed_at and later."""
        return self.as_of >= self.observed


def _rows(grid: pd.DataFrame, cur: pd.DataFrame) -> _Rows:
    ids = grid["deal_id"]
    as_of = grid["as_of"].to_numpy()
    closed_at = pd.to_datetime(cur["closed_at"].reindex(ids).to_numpy()).to_numpy()
    observed = pd.to_datetime(cur["observed_at"].reindex(ids).to_numpy())
    source = cur["history_source"].reindex(ids).to_numpy()
    return _Rows(
        keys=grid[["_key", "as_of", "deal_id"]],
        as_of=as_of,
        observed=observed.astype("datetime64[us]").to_numpy(),
        closed_by=closed_at.astype("datetime64[us]") <= as_of,
        derived=source == HistorySource.DERIVED.value,
    )


def _stage(
    rows: _Rows, stage_history: pd.DataFrame, row_stage: np.ndarray
) -> tuple[np.ndarray, pd.Series]:
    """Stage and its entry time from the last stage change on or before as_of; from
    observed_at on, the row's stage unless a later stage change says otherwise."""
    sh = stage_history[["deal_id", "stage", "entered_at", "derived"]]
    st = _asof(rows.keys, sh, "entered_at", "backward")
    stage = st["stage"].to_numpy(dtype=object)
    derived_row = st["derived"].fillna(False).astype(bool).to_numpy()
    # A derived row only says the deal was *seen* in that stage then: its entry time is unknown.
    entered = st["entered_at"].where(~derived_row)
    entered_at = st["entered_at"].astype("datetime64[us]").to_numpy()
    newer_history = entered_at > rows.observed  # NaT compares False
    use_row = rows.row_speaks & ~newer_history
    moved = use_row & (row_stage != stage)
    stage = np.where(use_row, row_stage, stage)
    return stage, entered.where(~moved)


def _tracked_field(
    field: str,
    rows: _Rows,
    changes: pd.DataFrame,
    current: pd.Series,
    since: pd.Timestamp | None,
    strict: bool,
) -> tuple[pd.Series, np.ndarray]:
    """One tracked field's value at each row and whether it is known (module docstring)."""
    if changes.empty:
        history = current
        newest = current
    else:
        before = _asof(rows.keys, changes, "changed_at", "backward")
        after = _asof(rows.keys, changes, "changed_at", "forward", allow_exact=False)
        new_value = parse_field(before["new_value"], field)
        has_before = before["changed_at"].notna()
        has_after = after["changed_at"].notna()
        prior = parse_field(after["old_value"], field)
        history = new_value.where(has_before, prior.where(has_after, current))
        # from observed_at on the row holds, unless a change stamped after it is newer
        later = before["changed_at"].astype("datetime64[us]").to_numpy() > rows.observed
        newest = new_value.where(later, current)
    speaks = rows.row_speaks
    if not strict:  # the earlier rule: uncovered fields take the row's value
        known = speaks | ~rows.derived
        return newest.where(speaks, history).where(known), known
    tracked = ~rows.derived & (since is not None) & (rows.as_of >= np.datetime64(since, "us"))
    known = speaks | tracked | rows.closed_by
    value = newest.where(speaks, history.where(tracked, current.where(rows.closed_by)))
    return value.where(known), known


def deal_states(
    tables: CanonicalTables,
    as_of: Iterable[pd.Timestamp] | pd.Timestamp,
    stages: StageConfig,
    *,
    open_only: bool = False,
    strict: bool = False,
    static_custom: Iterable[str] | None = None,
) -> pd.DataFrame:
    """The state of every deal that existed at each ``as_of`` (one row per as_of and deal).

    Columns: as_of, deal_id, the static deal attributes, ``custom_*`` columns, stage,
    stage_entered_at, stage_known, is_open, outcome, closed_at (only if closed by as_of), the
    tracked fields, ``<field>_known`` per tracked field, ``history_known`` (every tracked
    field known), and ``amount_original`` and ``currency``: ``amount`` is in the corporate
    currency at the date (:func:`features.data.currency.in_corporate_currency`), these are the
    deal's own.

    ``strict=True`` applies the rule of the module docstring (signals and snapshots always do).
    ``False`` keeps the earlier rule, which pipeline views still read: a tracked field that no
    dated change covers takes the deal row's value, so a closed deal's final values reach dates
    before its close. ``static_custom`` lists the custom columns known from creation; when it is
    given, the others are unknown before ``observed_at``. ``None`` keeps every custom column as
    the row's value at every date.
    """
    deals = tables.deals.reset_index(drop=True)
    grid = _grid(deals, _as_of_index(as_of), open_only)
    grid["_key"] = np.arange(len(grid))
    cur = deals.set_index("deal_id")
    rows = _rows(grid, cur)

    custom = [c for c in deals.columns if c.startswith(CUSTOM_PREFIX)]
    static = deals[["deal_id", *[c for c in STATIC_COLUMNS if c in deals.columns], *custom]]
    out = grid.merge(static, on="deal_id", how="left", validate="many_to_one")
    if static_custom is not None:
        fixed = set(custom_column_names(deals, static_custom))
        for col in set(custom) - fixed:
            out[col] = out[col].where(rows.row_speaks | rows.closed_by)

    out["is_open"] = ~rows.closed_by
    final_outcome = cur["outcome"].reindex(out["deal_id"]).to_numpy()
    out["outcome"] = np.where(rows.closed_by, final_outcome, Outcome.OPEN.value)
    closed_at = pd.to_datetime(cur["closed_at"].reindex(out["deal_id"]).to_numpy())
    out["closed_at"] = pd.Series(closed_at, index=out.index).where(rows.closed_by)

    row_stage = cur["stage"].reindex(out["deal_id"]).to_numpy(dtype=object)
    stage, out["stage_entered_at"] = _stage(rows, tables.stage_history, row_stage)
    closed_stage = np.where(out["outcome"] == Outcome.WON.value, stages.won_key, stages.lost_key)
    # The close itself is known even when the path to it is not (deals-only exports).
    out["stage"] = np.where(rows.closed_by, closed_stage, stage)
    kind = {s.key: s.kind for s in stages.stages}
    stage_kind = out["stage"].map(lambda s: kind.get(s) if isinstance(s, str) else None)
    bad_open = (~rows.closed_by) & stage_kind.isin([StageKind.WON, StageKind.LOST])
    out.loc[bad_open, "stage"] = None  # history says closed, the deal row says open: unknown
    out["stage_known"] = out["stage"].notna()

    fh = tables.field_history
    since = tracked_since(fh)
    all_known = np.ones(len(out), dtype=bool)
    for field in TRACKED_FIELDS:
        current = parse_field(cur[field].reindex(out["deal_id"]), field).reset_index(drop=True)
        changes = fh.loc[fh["field"] == field, ["deal_id", "changed_at", "old_value", "new_value"]]
        value, known = _tracked_field(field, rows, changes, current, since.get(field), strict)
        out[field] = value.to_numpy()
        out[known_column(field)] = known
        all_known &= known
    out["history_known"] = all_known
    # Amounts in the corporate currency at each as_of (the deal's own beside it).
    out = in_corporate_currency(out, deals, tables.exchange_rates)
    return out.drop(columns=["_row", "_key"]).reset_index(drop=True)


def deal_states_as_of(
    tables: CanonicalTables,
    as_of: pd.Timestamp,
    stages: StageConfig,
    *,
    open_only: bool = False,
    strict: bool = False,
    static_custom: Iterable[str] | None = None,
) -> pd.DataFrame:
    """:func:`deal_states` for a single date (one row per deal that existed at ``as_of``)."""
    states = deal_states(
        tables, as_of, stages, open_only=open_only, strict=strict, static_custom=static_custom
    )
    return states.drop(columns="as_of")


def events_as_of(events: pd.DataFrame, column: str, as_of: pd.Timestamp) -> pd.DataFrame:
    """Rows of an event table stamped on or before ``as_of`` (activities, stakeholders...)."""
    return events[events[column] <= as_of]
