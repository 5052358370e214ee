"""Leakage audit of an imported store: what a model could learn that it should not know.

Real CRM exports leak in ways no mapping foresees (a custom field filled in at the close, a
forecast category without history). ``pipecast audit`` runs four checks and names what it finds:

- **history coverage**, per tracked field: its first logged change (``tracked_since``), the share
  of the deals' lives (creation to close, or to the export) at which dated history covers it, and
  the deals whose row holds a value that their last logged change does not (a change the CRM did
  not log). A field with no history is unknown before the export (see ``pointintime``).
- **activity after the close**: deals with activities, field changes or stage changes stamped on a
  calendar day after their close (a close date that is not the real close, or post-close edits).
- **single-signal separation**: each signal, static column and custom column (custom columns taken
  as exported, as if declared fixed at creation), on weekly-style snapshot rows of deals that later
  closed. Its AUC for ``won`` is measured on rows at least :data:`FAR_DAYS` before the close and on
  rows at most :data:`NEAR_DAYS` before it. A signal whose far AUC reaches
  :data:`FAR_AUC_LIMIT` is flagged: no honest fact about a long-cycle B2B deal tells won from lost
  that well three months ahead (on generated data with full history the best signal reaches
  about 0.75), while a value written at the close separates as well far from it as near it.
- **close-date timing**: the share of those rows whose expected close date is the actual close
  date, far from and near the close. Far above :data:`TIMING_LIMIT` means the close date was
  overwritten at the close and reaches earlier dates.

AUC is computed without a model library: values are put in bins (numbers in up to
:data:`BINS` quantile bins, other values by category, missing values in a bin of their own), each
bin is scored by its won rate in the *other* half of the deals (two folds by deal, so a column
unique per deal cannot score itself), and the AUC of those scores is the rank formula
(Mann-Whitney U, ties count one half). It is reported as ``max(AUC, 1 - AUC)``: a signal that
separates in reverse separates all the same.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from features.data.schema import CUSTOM_PREFIX, TRACKED_FIELDS, CanonicalTables, HistorySource
from features.data.stages import StageConfig
from features.signals.driver import compute_signals
from features.signals.pointintime import custom_column_names, parse_field, tracked_since
from features.signals.registry import SIGNALS
from features.signals.snapshots import data_end, outcome_labels, snapshot_dates

# Rows at least this many days before their deal's close count as "far" from it...
FAR_DAYS = 90
# ...and rows at most this many days before it as "near".
NEAR_DAYS = 30
# A far-from-close single-signal AUC at or above this is flagged as a likely leak.
FAR_AUC_LIMIT = 0.80
# Far-from-close rows whose expected close date equals the actual close date: flagged above this.
TIMING_LIMIT = 0.05
# Fewer won or lost rows than this in a band: not enough data for an AUC.
MIN_ROWS_PER_CLASS = 20
# A field whose history covers less of the deals' lives than this is reported as partial.
COVERAGE_LIMIT = 0.95
BINS = 20
EXAMPLES = 5
# Deal columns assumed fixed at creation that are not signals themselves.
_STATIC_CATEGORIES = ("account", "owner", "team", "competitor")

Progress = Callable[[int, int], None]


# --- AUC ------------------------------------------------------------------------------------------
def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC by the rank formula (ties count one half); NaN without both classes."""
    pos = np.asarray(positive, dtype=bool)
    n1 = int(pos.sum())
    n0 = len(pos) - n1
    if n1 == 0 or n0 == 0:
        return math.nan
    ranks = pd.Series(np.asarray(scores, dtype="float64")).rank(method="average").to_numpy()
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def value_bins(values: pd.Series, bins: int = BINS) -> np.ndarray:
    """Integer bin of each value: numbers (and dates) by quantile, others by category;
    missing values get bin 0 and every other bin is >= 1."""
    if pd.api.types.is_datetime64_any_dtype(values):
        values = pd.Series(
            values.astype("datetime64[us]").to_numpy().view("int64"), dtype="float64"
        )
        values = values.where(values != np.iinfo(np.int64).min)
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
        x = values.astype("float64").to_numpy()
        ok = ~np.isnan(x)
        uniq = np.unique(x[ok])
        if len(uniq) <= bins:
            codes = np.searchsorted(uniq, x)
        else:
            edges = np.unique(np.quantile(x[ok], np.linspace(0, 1, bins + 1)[1:-1]))
            codes = np.searchsorted(edges, x, side="right")
        return np.where(ok, codes + 1, 0).astype(np.int64)
    codes, _ = pd.factorize(values.astype(object), use_na_sentinel=True)
    return (codes + 1).astype(np.int64)


def deal_folds(deal_ids: pd.Series) -> np.ndarray:
    """Two folds by deal (a stable hash), so every row of a deal falls in the same half."""
    hashed = pd.util.hash_array(deal_ids.astype(str).to_numpy(dtype=object))
    return (hashed % 2).astype(np.int64)


def separation(values: pd.Series, won: np.ndarray, folds: np.ndarray) -> float:
    """max(AUC, 1 - AUC) of the binned values scored by the other fold's won rates."""
    codes = value_bins(values.reset_index(drop=True))
    won = np.asarray(won, dtype="float64")
    k = int(codes.max()) + 1 if len(codes) else 1
    score = np.empty(len(codes))
    for f in (0, 1):
        train, test = folds != f, folds == f
        overall = float(won[train].mean()) if train.any() else 0.5
        n = np.bincount(codes[train], minlength=k)
        wins = np.bincount(codes[train], weights=won[train], minlength=k)
        # one pseudo-row at the overall rate: a bin seen once does not score 0 or 1
        rate = (wins + overall) / (n + 1.0)
        score[test] = rate[codes[test]]
    a = auc(score, won == 1)
    return a if math.isnan(a) else max(a, 1.0 - a)


# --- report ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FieldCoverage:
    field: str
    changes: int
    deals_with_changes: int
    tracked_since: pd.Timestamp | None
    covered_share: float  # of the CRM deals' lives (creation to close or export)
    unlogged_changes: int  # deals whose row value is not their last logged value
    status: str  # "no history", "partial" or "covered"


@dataclass(frozen=True)
class AfterClose:
    closed_deals: int
    activities: int  # deals with an activity on a day after their close
    field_changes: int
    stage_changes: int
    examples: list[str]


@dataclass(frozen=True)
class Separation:
    column: str
    source: str  # signal, static (assumed fixed at creation), custom
    auc_far: float | None
    auc_near: float | None
    flagged: bool


@dataclass(frozen=True)
class Timing:
    far_share: float | None  # rows far from the close whose expected close date is the close
    near_share: float | None
    flagged: bool


@dataclass(frozen=True)
class AuditReport:
    deals: int
    won: int
    lost: int
    data_end: pd.Timestamp | None
    rows: dict[str, int]  # labelled snapshot rows audited: far / near, won / lost
    fields: list[FieldCoverage]
    after_close: AfterClose
    separation: list[Separation]
    timing: Timing
    findings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, pd.Timestamp):
        return None if pd.isna(obj) else obj.isoformat()
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _nan_none(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 4)


# --- history coverage -----------------------------------------------------------------------------
def _days(later: pd.Series, earlier: pd.Series) -> np.ndarray:
    delta = (later.astype("datetime64[us]") - earlier.astype("datetime64[us]")).to_numpy()
    return np.clip(delta / np.timedelta64(1, "D"), 0.0, None)


def _same(a: pd.Series, b: pd.Series, field: str) -> np.ndarray:
    """Equal field values (both missing counts as equal; dates by day, amounts to the cent)."""
    both_missing = (a.isna() & b.isna()).to_numpy()
    if field == "amount":
        equal = np.isclose(a.to_numpy(dtype="float64"), b.to_numpy(dtype="float64"), atol=0.005)
    elif pd.api.types.is_datetime64_any_dtype(a):
        equal = (a.dt.normalize() == b.dt.normalize()).fillna(False).to_numpy(dtype=bool)
    else:
        equal = (a.astype(object) == b.astype(object)).to_numpy(dtype=bool)
    return both_missing | equal


def _unlogged(changes: pd.DataFrame, deals: pd.DataFrame, field: str) -> int:
    """Deals whose row value differs from the new value of their last change before the export."""
    obs = deals.set_index("deal_id")["observed_at"]
    ch = changes[changes["changed_at"] <= obs.reindex(changes["deal_id"]).to_numpy()]
    if ch.empty:
        return 0
    last = ch.sort_values("changed_at", kind="stable").groupby("deal_id").tail(1)
    logged = parse_field(last["new_value"].reset_index(drop=True), field)
    row = deals.set_index("deal_id")[field].reindex(last["deal_id"]).reset_index(drop=True)
    return int((~_same(logged, parse_field(row, field), field)).sum())


def field_coverage(tables: CanonicalTables) -> list[FieldCoverage]:
    """Per tracked field: how much of the deals' history its logged changes cover."""
    deals = tables.deals
    crm = deals[deals["history_source"] != HistorySource.DERIVED.value]
    created = crm["created_at"].astype("datetime64[us]")
    end = crm["closed_at"].astype("datetime64[us]").fillna(crm["observed_at"])
    life = _days(end, created).sum()
    fh = tables.field_history
    since = tracked_since(fh)
    out = []
    for name in TRACKED_FIELDS:
        changes = fh[fh["field"] == name]
        first = since.get(name)
        share = 0.0
        if first is not None and life > 0:
            start = created.where(created >= first, first)
            share = float(_days(end, start).sum() / life)
        unlogged = _unlogged(changes, deals, name)
        status = "no history" if first is None else "covered"
        if first is not None and (share < COVERAGE_LIMIT or unlogged > 0):
            status = "partial"
        out.append(
            FieldCoverage(
                name,
                len(changes),
                int(changes["deal_id"].nunique()),
                first,
                round(share, 4),
                unlogged,
                status,
            )
        )
    return out


# --- events after the close -----------------------------------------------------------------------
def _late_deals(events: pd.DataFrame, column: str, next_day: pd.Series) -> set[str]:
    """Deals with an event stamped on a calendar day after their close."""
    if events.empty or next_day.empty:
        return set()
    limit = next_day.reindex(events["deal_id"]).to_numpy()
    late = events[column].astype("datetime64[us]").to_numpy() >= limit  # NaT compares False
    return set(events.loc[late, "deal_id"].astype(str))


def after_close(tables: CanonicalTables) -> AfterClose:
    closed = tables.deals[tables.deals["closed_at"].notna()]
    next_day = closed.set_index("deal_id")["closed_at"].astype("datetime64[us]")
    next_day = next_day.dt.normalize() + pd.Timedelta(days=1)
    acts = _late_deals(tables.activities, "occurred_at", next_day)
    fields = _late_deals(tables.field_history, "changed_at", next_day)
    stages = _late_deals(tables.stage_history, "entered_at", next_day)
    examples = sorted(acts | fields | stages)[:EXAMPLES]
    return AfterClose(len(closed), len(acts), len(fields), len(stages), examples)


# --- single-signal separation and timing ----------------------------------------------------------
def _sample(deals: pd.DataFrame, max_deals: int) -> list[str]:
    """Up to ``max_deals`` closed deals, picked by a stable hash (the same store, the same pick)."""
    closed = deals.loc[deals["closed_at"].notna(), "deal_id"].astype(str)
    if len(closed) <= max_deals:
        return list(closed)
    order = np.argsort(pd.util.hash_array(closed.to_numpy(dtype=object)), kind="stable")
    return list(closed.to_numpy()[order[:max_deals]])


def labelled_rows(
    tables: CanonicalTables,
    stages: StageConfig,
    *,
    freq: str = "W-MON",
    max_deals: int = 5000,
    custom: Iterable[str] = (),
    static_custom: Iterable[str] = (),
    progress: Progress | None = None,
) -> pd.DataFrame:
    """Signals and labels of sampled deals that later closed, at each ``freq`` date while open:
    the rows a model would train on (``won`` known)."""
    deals = tables.deals
    ids = _sample(deals, max_deals)
    if not ids:
        return pd.DataFrame()
    dates = snapshot_dates(deals["created_at"].min(), data_end(tables), freq)
    cache: dict[str, Any] = {}
    parts = []
    for i in range(0, len(dates), 26):
        chunk = dates[i : i + 26]
        parts.append(
            compute_signals(
                tables,
                chunk,
                stages,
                deal_ids=ids,
                custom=custom,
                static_custom=static_custom,
                cache=cache,
            )
        )
        if progress is not None:
            progress(i + len(chunk), len(dates))
    signals = pd.concat(parts, ignore_index=True)
    labels = outcome_labels(signals[["deal_id", "as_of"]], deals)
    rows = pd.concat([signals, labels], axis=1)
    return rows[rows["censored"] == 0].reset_index(drop=True)


def _columns(rows: pd.DataFrame, customs: list[str]) -> list[tuple[str, str]]:
    cols = [(name, "signal") for name in SIGNALS]
    cols += [(name, "static") for name in _STATIC_CATEGORIES if name in rows.columns]
    return cols + [(name, "custom") for name in customs]


def separations(rows: pd.DataFrame, customs: list[str]) -> tuple[list[Separation], dict[str, int]]:
    """Single-signal AUC for ``won`` far from and near the close, per column."""
    far = (rows["days_to_close"] >= FAR_DAYS).to_numpy()
    near = (rows["days_to_close"] <= NEAR_DAYS).to_numpy()
    won = rows["won"].to_numpy(dtype="float64")
    folds = deal_folds(rows["deal_id"])
    counts = {
        "far_won": int((far & (won == 1)).sum()),
        "far_lost": int((far & (won == 0)).sum()),
        "near_won": int((near & (won == 1)).sum()),
        "near_lost": int((near & (won == 0)).sum()),
    }
    enough_far = min(counts["far_won"], counts["far_lost"]) >= MIN_ROWS_PER_CLASS
    enough_near = min(counts["near_won"], counts["near_lost"]) >= MIN_ROWS_PER_CLASS
    out = []
    for name, source in _columns(rows, customs):
        values = rows[name]
        a_far = separation(values[far], won[far], folds[far]) if enough_far else math.nan
        a_near = separation(values[near], won[near], folds[near]) if enough_near else math.nan
        flagged = not math.isnan(a_far) and a_far >= FAR_AUC_LIMIT
        out.append(Separation(name, source, _nan_none(a_far), _nan_none(a_near), flagged))
    return out, counts


def close_date_timing(rows: pd.DataFrame, deals: pd.DataFrame) -> Timing:
    """Share of rows whose expected close date is the deal's actual close date (same day)."""
    if rows.empty:
        return Timing(None, None, False)
    closed = deals.set_index("deal_id")["closed_at"].reindex(rows["deal_id"])
    close_day = pd.Series(closed.to_numpy()).astype("datetime64[us]").dt.normalize()
    ecd = rows["as_of"].astype("datetime64[us]").dt.normalize() + pd.to_timedelta(
        rows["days_to_expected_close"], unit="D"
    )
    same = (ecd == close_day).fillna(False).to_numpy(dtype=bool)
    shares = []
    for band in (rows["days_to_close"] >= FAR_DAYS, rows["days_to_close"] <= NEAR_DAYS):
        mask = band.to_numpy(dtype=bool)
        shares.append(float(same[mask].mean()) if mask.sum() >= MIN_ROWS_PER_CLASS else math.nan)
    far, near = shares
    return Timing(_nan_none(far), _nan_none(near), not math.isnan(far) and far > TIMING_LIMIT)


# --- the audit ------------------------------------------------------------------------------------
def _field_findings(fields: list[FieldCoverage]) -> list[str]:
    out = []
    for f in fields:
        if f.status == "no history":
            out.append(
                f"{f.field}: no field history; its value before the export is unknown to "
                "signals (map the CRM's field history or snapshot table to recover it)"
            )
            continue
        if f.covered_share < COVERAGE_LIMIT:
            since = f.tracked_since.date() if f.tracked_since is not None else "-"
            out.append(
                f"{f.field}: history covers {f.covered_share:.0%} of the deals' lives "
                f"(first logged change {since}); earlier values are unknown"
            )
        if f.unlogged_changes:
            out.append(
                f"{f.field}: {f.unlogged_changes:,} deals hold a value their last logged change "
                "does not set (changes the CRM did not log)"
            )
    return out


def _signal_findings(seps: list[Separation], declared: set[str]) -> list[str]:
    out = []
    for s in seps:
        if not s.flagged:
            continue
        near = "-" if s.auc_near is None else f"{s.auc_near:.2f}"
        what = (
            f"{s.column} separates won from lost {FAR_DAYS}+ days before the close "
            f"(AUC {s.auc_far:.2f}; {near} within {NEAR_DAYS} days of it)"
        )
        if s.source == "custom" and s.column not in declared:
            what += (
                "; its exported value was written later in the deal's life: do not declare it "
                "fixed at creation (signals leave it out before the export)"
            )
        elif s.source in ("custom", "static"):
            what += "; assumed fixed at creation, but it looks written later"
        else:
            what += "; it likely carries the outcome"
        out.append(what)
    return out


def _after_close_findings(a: AfterClose) -> list[str]:
    parts = [
        (a.activities, "activities"),
        (a.field_changes, "field changes"),
        (a.stage_changes, "stage changes"),
    ]
    found = [f"{n:,} with {what}" for n, what in parts if n]
    if not found:
        return []
    return [
        f"deals with events after their close: {', '.join(found)} (e.g. {', '.join(a.examples)})"
    ]


def audit(
    tables: CanonicalTables,
    stages: StageConfig,
    *,
    freq: str = "W-MON",
    max_deals: int = 5000,
    static_custom: Iterable[str] = (),
    progress: Progress | None = None,
) -> AuditReport:
    """Run every check on the store's tables (see the module docstring).

    ``static_custom`` names the custom columns the user declares fixed at creation; every custom
    column is audited as exported, and the findings say which may be declared.
    """
    deals = tables.deals
    customs = sorted(c for c in deals.columns if c.startswith(CUSTOM_PREFIX))
    declared = set(custom_column_names(deals, static_custom))
    won = int((deals["outcome"] == "won").sum())
    lost = int((deals["outcome"] == "lost").sum())
    end = data_end(tables) if len(deals) else None
    fields = field_coverage(tables)
    late = after_close(tables)
    notes: list[str] = []
    if deals.empty:
        notes.append("the store holds no deals: nothing to audit")
    rows = labelled_rows(
        tables,
        stages,
        freq=freq,
        max_deals=max_deals,
        custom=customs,
        static_custom=customs,
        progress=progress,
    )
    if rows.empty:
        seps: list[Separation] = []
        counts = {"far_won": 0, "far_lost": 0, "near_won": 0, "near_lost": 0}
    else:
        rows = rows.merge(deals[["deal_id", "account", "competitor"]], on="deal_id", how="left")
        seps, counts = separations(rows, customs)
    for band in ("far", "near"):
        n_won, n_lost = counts[f"{band}_won"], counts[f"{band}_lost"]
        if min(n_won, n_lost) < MIN_ROWS_PER_CLASS:
            days = f">= {FAR_DAYS}" if band == "far" else f"<= {NEAR_DAYS}"
            notes.append(
                f"not enough data for single-signal AUC {band} from the close ({days} days): "
                f"{n_won} won and {n_lost} lost rows, {MIN_ROWS_PER_CLASS} of each needed"
            )
    timing = close_date_timing(rows, deals)
    findings = _field_findings(fields) + _after_close_findings(late)
    findings += _signal_findings(seps, declared)
    if timing.flagged:
        findings.append(
            f"expected close date equals the actual close date on {timing.far_share:.0%} of rows "
            f"{FAR_DAYS}+ days before the close: the close date was overwritten at the close"
        )
    return AuditReport(
        len(deals), won, lost, end, counts, fields, late, seps, timing, findings, notes
    )
