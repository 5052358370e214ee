"""Point-in-time deal signals: what a model (or a rep) could know about an open deal at ``as_of``.

One module serves training (weekly snapshots over years) and serving (today's open deals), so the
two cannot drift apart. It is written Hamilton style: every signal is a function named after its
output column whose parameters are named after its inputs (state columns from
:func:`features.pointintime.deal_states`, the event tables, or other signals). A small driver,
:func:`compute_signals`, resolves the functions and returns one row per (deal, as_of).

Rules that keep it honest:

- every event table is read through "stamped on or before ``as_of``" queries (``_EventIndex``);
  nothing stamped later changes a signal (``tests/test_signals.py`` proves it with Hypothesis);
- rep and team statistics count only deals closed on or before ``as_of`` and are shrunk toward
  the overall rate as of that date (a beta prior), so a rep with two closes is not 0% or 100%;
- days are whole calendar days (``as_of`` 30 June 23:59 minus 30 June 08:00 is 0 days), and an
  activity window of 14 days at ``as_of`` covers ``(as_of - 14 days, as_of]``;
- on a deals-only import (``history_source == 'derived'``) the past of a deal was never exported:
  signals that need it come out missing, flagged by ``history_known`` (tracked fields as of the
  date), ``field_changes_known`` (change counts) and ``stage_entry_known`` (days in stage) —
  never invented.

Static attributes (segment, product, competitor, ``custom_*``) are the deal row's current values;
they are assumed known from creation. Custom columns are included only when the caller lists them.

Everything is set-based: sorted composite keys and ``np.searchsorted``, no loop per deal. The only
loop is one ``np.median`` per (rep or team, distinct close count), which is small.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

import numpy as np
import pandas as pd

from features.pointintime import deal_states
from features.schema import (
    CUSTOM_PREFIX,
    ActivityType,
    CanonicalTables,
    HistorySource,
    Outcome,
    StakeholderRole,
)
from features.stages import StageConfig

ACTIVITY_WINDOWS: tuple[int, ...] = (14, 30, 90)
ACTIVITY_TYPES: tuple[str, ...] = tuple(a.value for a in ActivityType)
# Pseudo-closes of the beta prior that pulls a rep's or team's win rate toward the overall rate.
WIN_RATE_PRIOR_CLOSES = 10.0
# Pseudo-closes that pull a rep's or team's median cycle length toward the overall median.
CYCLE_PRIOR_CLOSES = 5.0

_US_PER_DAY = 86_400_000_000
_NAT = np.iinfo(np.int64).min


class SignalKind(StrEnum):
    NUMBER = "number"
    FLAG = "flag"  # 1.0 / 0.0, NaN when unknown
    CATEGORY = "category"


@dataclass(frozen=True)
class SignalSpec:
    """What a signal means; serving uses it to explain scores."""

    name: str
    description: str
    kind: SignalKind = SignalKind.NUMBER
    # Missing on deals-only imports (see module docstring), never guessed.
    needs_history: bool = False


# --- registry and decorators ----------------------------------------------------------------------
SIGNALS: dict[str, SignalSpec] = {}
_NODES: dict[str, Callable[..., Any]] = {}
_EXTRACTED: dict[str, str] = {}  # column -> group node that computes it


def _declare(name: str, description: str, kind: SignalKind = SignalKind.NUMBER, **kw: Any) -> None:
    SIGNALS[name] = SignalSpec(name, description, kind, **kw)


def _signal(
    description: str, kind: SignalKind = SignalKind.NUMBER, *, needs_history: bool = False
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a function as the signal named after it."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        _declare(fn.__name__, description, kind, needs_history=needs_history)
        _NODES[fn.__name__] = fn
        return fn

    return wrap


def _node(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Register an intermediate result that signals depend on (not an output column)."""
    _NODES[fn.__name__] = fn
    return fn


def _signal_group(
    specs: Sequence[SignalSpec],
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a function that returns several signals as a frame (Hamilton's extract_columns)."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        _NODES[fn.__name__] = fn
        for spec in specs:
            SIGNALS[spec.name] = spec
            _EXTRACTED[spec.name] = fn.__name__
        return fn

    return wrap


# --- set-based helpers ----------------------------------------------------------------------------
def _micros(values: Any) -> np.ndarray:
    """Timestamps as int64 microseconds (NaT -> int64 min)."""
    arr = pd.to_datetime(pd.Series(values)).astype("datetime64[us]").to_numpy()
    return arr.view("int64")


def _day_number(values: Any) -> np.ndarray:
    """Calendar day number (days since epoch) as float, NaN for missing."""
    us = _micros(values)
    out = np.floor_divide(us, _US_PER_DAY).astype("float64")
    out[us == _NAT] = np.nan
    return out


def _days_between(later: Any, earlier: Any) -> pd.Series:
    return pd.Series(_day_number(later) - _day_number(earlier))


def _codes(values: pd.Series, categories: Sequence[Any] | pd.Index) -> np.ndarray:
    """Integer position of each value in ``categories`` (-1 when absent or missing)."""
    cats = pd.Index(categories)
    return np.asarray(cats.get_indexer(pd.Index(values.astype(object))), dtype=np.int64)


class _EventIndex:
    """Events keyed by an integer code and sorted by time, for "how many up to t" queries.

    Times are replaced by their rank among the distinct event times, so (code, rank) packs into
    one sorted int64 key without overflow and ``np.searchsorted`` answers exactly
    "events of this code stamped on or before t" for many (code, t) at once.
    """

    def __init__(self, codes: np.ndarray, times: Any) -> None:
        us = _micros(times)
        codes = np.asarray(codes, dtype=np.int64)
        keep = np.flatnonzero((codes >= 0) & (us != _NAT))
        order = keep[np.lexsort((us[keep], codes[keep]))]
        self.rows = order  # original row numbers, in key order
        self.uniq = np.unique(us[order])
        self.width = np.int64(len(self.uniq) + 1)
        rank = np.searchsorted(self.uniq, us[order]) + 1
        self.keys = codes[order] * self.width + rank
        self.times = us[order]

    def __len__(self) -> int:
        return len(self.keys)

    def start(self, code: np.ndarray) -> np.ndarray:
        """Position of the code's first event."""
        return np.searchsorted(self.keys, np.asarray(code, dtype=np.int64) * self.width, "left")

    def end(self, code: np.ndarray, at: Any) -> np.ndarray:
        """Position just after the code's last event stamped on or before ``at``."""
        code = np.asarray(code, dtype=np.int64)
        seen = np.searchsorted(self.uniq, _micros(at), "right")
        return np.searchsorted(self.keys, code * self.width + seen, "right")

    def cumsum(self, values: np.ndarray) -> np.ndarray:
        """Prefix sums of per-event ``values`` (given in original row order), in key order."""
        return np.concatenate([[0.0], np.cumsum(np.asarray(values, dtype="float64")[self.rows])])

    def total(self, values: np.ndarray, code: np.ndarray, at: Any) -> np.ndarray:
        """Sum of per-event ``values`` over each code's events stamped on or before ``at``."""
        cs = self.cumsum(values)
        return cs[self.end(code, at)] - cs[self.start(code)]


def _nan_where(values: Any, mask: np.ndarray) -> pd.Series:
    out = pd.Series(values, dtype="float64")
    out[np.asarray(mask, dtype=bool)] = np.nan
    return out


def _flag(values: Any) -> pd.Series:
    return pd.Series(np.asarray(values, dtype=bool).astype("float64"))


def _parse_number(values: pd.Series) -> np.ndarray:
    return pd.to_numeric(values, errors="coerce").astype("float64").to_numpy()


# --- inputs declared as signals (state columns passed through) ------------------------------------
_declare("stage", "stage key as of the date", SignalKind.CATEGORY, needs_history=True)
_declare("stage_known", "1 if the stage as of the date is known", SignalKind.FLAG)
_declare("amount", "deal value as of the date", needs_history=True)
_declare(
    "forecast_category",
    "rep's forecast category as of the date",
    SignalKind.CATEGORY,
    needs_history=True,
)
_declare(
    "segment", "market segment (current value, assumed known from creation)", SignalKind.CATEGORY
)
_declare(
    "product", "product line (current value, assumed known from creation)", SignalKind.CATEGORY
)
_declare(
    "history_known",
    "1 if tracked fields (amount, dates, category, next step) could be rebuilt as of the date",
    SignalKind.FLAG,
)


# --- stage ----------------------------------------------------------------------------------------
@_signal("position of the stage in the sales process (1 = qualification)", needs_history=True)
def stage_order(stage: pd.Series, stages: StageConfig) -> pd.Series:
    order = {s.key: float(s.order) for s in stages.stages}
    return pd.Series(stage.map(order), dtype="float64")


@_signal("the stage's default win probability (stage configuration)", needs_history=True)
def stage_win_probability(stage: pd.Series, stages: StageConfig) -> pd.Series:
    p = {s.key: s.win_probability for s in stages.stages}
    return pd.Series(stage.map(p), dtype="float64")


@_signal("1 if the date the deal entered its current stage is known", SignalKind.FLAG)
def stage_entry_known(stage_entered_at: pd.Series) -> pd.Series:
    return _flag(stage_entered_at.notna())


@_signal("days since the deal entered its current stage", needs_history=True)
def days_in_stage(as_of: pd.Series, stage_entered_at: pd.Series) -> pd.Series:
    return _days_between(as_of, stage_entered_at)


@_signal(
    "days in stage divided by the stage norm (midpoint of its typical duration)", needs_history=True
)
def stage_norm_ratio(days_in_stage: pd.Series, stage: pd.Series, stages: StageConfig) -> pd.Series:
    norms = {s.key: s.duration_days.norm for s in stages.stages if s.duration_days}
    norm = pd.Series(stage.map(norms), dtype="float64").replace(0.0, np.nan)
    return days_in_stage / norm


@_signal("days since the deal was created")
def deal_age_days(as_of: pd.Series, created_at: pd.Series) -> pd.Series:
    return _days_between(as_of, created_at)


# --- activities -----------------------------------------------------------------------------------
@_node
def deal_index(deals: pd.DataFrame) -> pd.Index:
    return pd.Index(deals["deal_id"])


@_node
def activity_index(activities: pd.DataFrame, deal_index: pd.Index) -> _EventIndex:
    return _EventIndex(_codes(activities["deal_id"], deal_index), activities["occurred_at"])


_ACTIVITY_SPECS = [
    SignalSpec(f"activities_{t}_{w}d", f"{t.replace('_', ' ')} activities in the last {w} days")
    for w in ACTIVITY_WINDOWS
    for t in ACTIVITY_TYPES
] + [
    SignalSpec(f"activities_total_{w}d", f"all activities in the last {w} days")
    for w in ACTIVITY_WINDOWS
]


@_signal_group(_ACTIVITY_SPECS)
def activity_counts(
    activities: pd.DataFrame, activity_index: _EventIndex, deal_code: np.ndarray, as_of: pd.Series
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


@_signal("activities ever logged on the deal up to the date")
def activities_total(
    activity_index: _EventIndex, deal_code: np.ndarray, as_of: pd.Series
) -> pd.Series:
    idx = activity_index
    return pd.Series((idx.end(deal_code, as_of) - idx.start(deal_code)).astype("float64"))


@_signal("days since the last activity (missing when there has been none)")
def days_since_last_activity(
    activity_index: _EventIndex, deal_code: np.ndarray, as_of: pd.Series
) -> pd.Series:
    idx = activity_index
    end = idx.end(deal_code, as_of)
    has = end > idx.start(deal_code)
    last = np.where(has, idx.times[np.maximum(end - 1, 0)] if len(idx) else _NAT, _NAT)
    return _days_between(as_of, pd.Series(last.astype("datetime64[us]")))


# --- stakeholders ---------------------------------------------------------------------------------
@_node
def contact_index(stakeholders: pd.DataFrame, deal_index: pd.Index) -> _EventIndex:
    """Each contact counted once, from the first time it was added with any role."""
    first = stakeholders.groupby(["deal_id", "contact_id"])["added_at"].min().reset_index()
    return _EventIndex(_codes(first["deal_id"], deal_index), first["added_at"])


@_node
def role_firsts(stakeholders: pd.DataFrame) -> pd.DataFrame:
    return stakeholders.groupby(["deal_id", "role"])["added_at"].min().reset_index()


@_node
def role_index(role_firsts: pd.DataFrame, deal_index: pd.Index) -> _EventIndex:
    return _EventIndex(_codes(role_firsts["deal_id"], deal_index), role_firsts["added_at"])


@_signal("distinct stakeholders (contacts) recorded on the deal")
def n_stakeholders(
    contact_index: _EventIndex, deal_code: np.ndarray, as_of: pd.Series
) -> pd.Series:
    idx = contact_index
    return pd.Series((idx.end(deal_code, as_of) - idx.start(deal_code)).astype("float64"))


@_node
def role_counts(
    role_firsts: pd.DataFrame, role_index: _EventIndex, deal_code: np.ndarray, as_of: pd.Series
) -> pd.DataFrame:
    """Per role, 1 if a stakeholder with that role was recorded by the date."""
    lo, hi = role_index.start(deal_code), role_index.end(deal_code, as_of)
    roles = role_firsts["role"].to_numpy()
    return pd.DataFrame(
        {
            r.value: (lambda cs: cs[hi] - cs[lo])(role_index.cumsum(roles == r.value))
            for r in StakeholderRole
        }
    )


@_signal("1 if a decision maker is among the stakeholders", SignalKind.FLAG)
def decision_maker_engaged(role_counts: pd.DataFrame) -> pd.Series:
    return _flag(role_counts[StakeholderRole.DECISION_MAKER.value] > 0)


@_signal("1 if a champion is among the stakeholders", SignalKind.FLAG)
def champion_identified(role_counts: pd.DataFrame) -> pd.Series:
    return _flag(role_counts[StakeholderRole.CHAMPION.value] > 0)


@_signal("number of distinct stakeholder roles (breadth of the buying committee covered)")
def stakeholder_roles(role_counts: pd.DataFrame) -> pd.Series:
    return pd.Series((role_counts > 0).sum(axis=1).astype("float64").to_numpy())


# --- amount and competition -----------------------------------------------------------------------
@_signal("1 if a competitor is known (current value, assumed known from creation)", SignalKind.FLAG)
def competitor_present(competitor: pd.Series) -> pd.Series:
    named = competitor.notna() & (competitor.astype(object).astype(str).str.strip() != "")
    return _flag(named.to_numpy())


@_signal("log(1 + amount): deal size on the scale models need", needs_history=True)
def amount_log1p(amount: pd.Series) -> pd.Series:
    return pd.Series(np.log1p(amount.astype("float64").clip(lower=0).to_numpy()))


@_signal("1 if the deal's change history was exported (0 on deals-only imports)", SignalKind.FLAG)
def field_changes_known(history_source: pd.Series) -> pd.Series:
    return _flag(history_source.to_numpy() != HistorySource.DERIVED.value)


@_node
def amount_changes(field_history: pd.DataFrame) -> pd.DataFrame:
    return field_history[field_history["field"] == "amount"].reset_index(drop=True)


@_node
def amount_index(amount_changes: pd.DataFrame, deal_index: pd.Index) -> _EventIndex:
    return _EventIndex(_codes(amount_changes["deal_id"], deal_index), amount_changes["changed_at"])


@_signal("times the amount was changed", needs_history=True)
def amount_change_count(
    amount_index: _EventIndex,
    deal_code: np.ndarray,
    as_of: pd.Series,
    field_changes_known: pd.Series,
) -> pd.Series:
    n = amount_index.end(deal_code, as_of) - amount_index.start(deal_code)
    return _nan_where(n, field_changes_known.to_numpy() == 0)


@_signal("relative change of the amount since creation (0.1 = 10% up)", needs_history=True)
def amount_change_since_creation(
    amount: pd.Series,
    amount_changes: pd.DataFrame,
    amount_index: _EventIndex,
    deal_code: np.ndarray,
    as_of: pd.Series,
    field_changes_known: pd.Series,
) -> pd.Series:
    """The creation amount is the old value of the first change, if one happened by as_of;
    otherwise the amount never changed and the current (as-of) amount is the creation amount."""
    idx = amount_index
    start, end = idx.start(deal_code), idx.end(deal_code, as_of)
    old = _parse_number(amount_changes["old_value"])
    new = _parse_number(amount_changes["new_value"])
    # A change that sets a first amount (old missing) states the creation amount itself.
    first_values = np.append(np.where(np.isnan(old), new, old)[idx.rows], np.nan)
    now = amount.astype("float64").to_numpy()
    first = np.where(end > start, first_values[np.minimum(start, len(idx))], now)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(first > 0, now / first - 1.0, np.nan)
    return _nan_where(rel, field_changes_known.to_numpy() == 0)


# --- close date -----------------------------------------------------------------------------------
@_node
def close_date_changes(field_history: pd.DataFrame) -> pd.DataFrame:
    fh = field_history[field_history["field"] == "expected_close_date"].reset_index(drop=True)
    old = _day_number(pd.to_datetime(fh["old_value"], errors="coerce"))
    new = _day_number(pd.to_datetime(fh["new_value"], errors="coerce"))
    push = new > old  # NaN compares False: setting a first date is not a push
    return fh.assign(push=push, slip_days=np.where(push, new - old, 0.0))


@_node
def close_date_index(close_date_changes: pd.DataFrame, deal_index: pd.Index) -> _EventIndex:
    cc = close_date_changes
    return _EventIndex(_codes(cc["deal_id"], deal_index), cc["changed_at"])


@_signal("times the expected close date was moved later", needs_history=True)
def close_date_push_count(
    close_date_changes: pd.DataFrame,
    close_date_index: _EventIndex,
    deal_code: np.ndarray,
    as_of: pd.Series,
    field_changes_known: pd.Series,
) -> pd.Series:
    n = close_date_index.total(close_date_changes["push"].to_numpy(), deal_code, as_of)
    return _nan_where(n, field_changes_known.to_numpy() == 0)


@_signal("total days the expected close date was moved later", needs_history=True)
def close_date_slip_days(
    close_date_changes: pd.DataFrame,
    close_date_index: _EventIndex,
    deal_code: np.ndarray,
    as_of: pd.Series,
    field_changes_known: pd.Series,
) -> pd.Series:
    days = close_date_index.total(close_date_changes["slip_days"].to_numpy(), deal_code, as_of)
    return _nan_where(days, field_changes_known.to_numpy() == 0)


@_signal("days until the expected close date (negative: it is in the past)", needs_history=True)
def days_to_expected_close(as_of: pd.Series, expected_close_date: pd.Series) -> pd.Series:
    return _days_between(expected_close_date, as_of)


@_signal("days left in the calendar quarter of the date (0 on its last day)")
def days_left_in_quarter(as_of: pd.Series) -> pd.Series:
    last_day = as_of.dt.to_period("Q").dt.end_time.dt.normalize()
    return _days_between(last_day, as_of)


# --- next step ------------------------------------------------------------------------------------
@_signal("1 if a next step is written down", SignalKind.FLAG, needs_history=True)
def next_step_defined(next_step: pd.Series, history_known: pd.Series) -> pd.Series:
    text = next_step.astype(object).where(next_step.notna(), "").astype(str).str.strip()
    return _nan_where(
        (text != "").astype("float64").to_numpy(), ~history_known.to_numpy(dtype=bool)
    )


@_signal("days until the next-step date (negative: overdue; missing: no date)", needs_history=True)
def days_to_next_step(as_of: pd.Series, next_step_date: pd.Series) -> pd.Series:
    return _days_between(next_step_date, as_of)


# --- rep and team track record --------------------------------------------------------------------
def _track_record(deals: pd.DataFrame, by: str, who: pd.Series, as_of: pd.Series) -> pd.DataFrame:
    """Win rate and median cycle of ``who``'s deals closed on or before ``as_of``, shrunk toward
    the overall figures as of the same date (empirical-Bayes style, so few closes stay moderate)."""
    closed = deals[
        deals["outcome"].isin([Outcome.WON.value, Outcome.LOST.value]) & deals["closed_at"].notna()
    ].reset_index(drop=True)
    won = (closed["outcome"] == Outcome.WON.value).to_numpy()
    cycle = _days_between(closed["closed_at"], closed["created_at"]).to_numpy()
    groups = pd.Index(closed[by].dropna().unique())

    overall = _EventIndex(np.zeros(len(closed), dtype=np.int64), closed["closed_at"])
    zero = np.zeros(len(as_of), dtype=np.int64)
    o_lo, o_hi = overall.start(zero), overall.end(zero, as_of)
    o_n = (o_hi - o_lo).astype("float64")
    o_rate = (overall.cumsum(won)[o_hi] + 1.0) / (o_n + 2.0)  # Laplace: 0.5 before any close
    o_med = _prefix_medians(cycle[overall.rows], o_lo, o_hi)

    mine = _EventIndex(_codes(closed[by], groups), closed["closed_at"])
    code = _codes(who, groups)
    lo, hi = mine.start(code), mine.end(code, as_of)
    n = np.where(code >= 0, hi - lo, 0).astype("float64")
    wins = np.where(code >= 0, mine.cumsum(won)[hi] - mine.cumsum(won)[lo], 0.0)
    k = WIN_RATE_PRIOR_CLOSES
    rate = (wins + k * o_rate) / (n + k)
    med = _prefix_medians(cycle[mine.rows], lo, np.where(code >= 0, hi, lo))
    c = CYCLE_PRIOR_CLOSES
    cycle_days = np.where(n > 0, (n * np.nan_to_num(med) + c * o_med) / (n + c), o_med)
    return pd.DataFrame(
        {f"{by}_win_rate": rate, f"{by}_n_closed": n, f"{by}_median_cycle_days": cycle_days}
    )


def _prefix_medians(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Median of ``values[lo:hi]`` per query; one np.median per distinct (lo, hi) pair."""
    out = np.full(len(lo), np.nan)
    has = hi > lo
    if not has.any():
        return out
    pairs, inverse = np.unique(np.stack([lo[has], hi[has]], axis=1), axis=0, return_inverse=True)
    meds = np.array([np.median(values[a:b]) for a, b in pairs])
    out[has] = meds[inverse.ravel()]
    return out


def _record_specs(by: str, who: str) -> list[SignalSpec]:
    return [
        SignalSpec(
            f"{by}_win_rate",
            f"{who}'s win rate over deals closed by the date, shrunk toward the overall rate",
        ),
        SignalSpec(f"{by}_n_closed", f"deals {who} closed (won or lost) by the date"),
        SignalSpec(
            f"{by}_median_cycle_days",
            f"{who}'s median days from creation to close, shrunk toward the overall median",
        ),
    ]


@_signal_group(_record_specs("owner", "the rep"))
def owner_record(deals: pd.DataFrame, owner: pd.Series, as_of: pd.Series) -> pd.DataFrame:
    return _track_record(deals, "owner", owner, as_of)


@_signal_group(_record_specs("team", "the team"))
def team_record(deals: pd.DataFrame, team: pd.Series, as_of: pd.Series) -> pd.DataFrame:
    return _track_record(deals, "team", team, as_of)


# --- driver ---------------------------------------------------------------------------------------
_STATE_INPUTS = (
    "stage",
    "stage_entered_at",
    "created_at",
    "amount",
    "expected_close_date",
    "forecast_category",
    "next_step",
    "next_step_date",
    "competitor",
    "segment",
    "product",
    "owner",
    "team",
    "history_known",
    "stage_known",
)


_ROW_INPUTS = frozenset({"as_of", "deal_code", "history_source", *_STATE_INPUTS})


def _is_static(name: str) -> bool:
    """True for nodes that depend on the tables only (not on the rows): reusable across dates."""
    if name in _ROW_INPUTS:
        return False
    if name in _EXTRACTED:
        return _is_static(_EXTRACTED[name])
    if name not in _NODES:
        return True
    return all(_is_static(p) for p in inspect.signature(_NODES[name]).parameters)


def _execute(
    inputs: dict[str, Any], wanted: Iterable[str], static: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Resolve each wanted node from the inputs, computing its dependencies first (memoised).

    Table-level nodes (event indexes) are kept in ``static`` when given, so successive calls on
    the same tables for different dates build them once.
    """
    cache = dict(inputs)
    if static:
        cache.update(static)

    def get(name: str) -> Any:
        if name in cache:
            return cache[name]
        if name in _EXTRACTED:
            group = get(_EXTRACTED[name])
            for col in group.columns:
                cache[col] = group[col].reset_index(drop=True)
            return cache[name]
        if name not in _NODES:
            raise KeyError(f"no input or signal function named {name!r}")
        fn = _NODES[name]
        result = fn(**{p: get(p) for p in inspect.signature(fn).parameters})
        if isinstance(result, pd.Series):
            result = result.reset_index(drop=True)
        cache[name] = result
        if static is not None and name in _NODES and _is_static(name):
            static[name] = result
        return result

    return {name: get(name) for name in wanted}


def custom_column_names(deals: pd.DataFrame, custom: Iterable[str]) -> list[str]:
    """Resolve ``industry`` or ``custom_industry`` to deal columns; unknown names fail loudly."""
    names = []
    for name in custom:
        col = name if name.startswith(CUSTOM_PREFIX) else CUSTOM_PREFIX + name
        if col not in deals.columns:
            known = [c for c in deals.columns if c.startswith(CUSTOM_PREFIX)]
            raise KeyError(f"custom column {col!r} is not in deals; mapped custom columns: {known}")
        names.append(col)
    return names


def compute_signals(
    tables: CanonicalTables,
    as_of_dates: Iterable[pd.Timestamp] | pd.Timestamp,
    stages: StageConfig,
    *,
    open_only: bool = True,
    deal_ids: Iterable[str] | None = None,
    custom: Iterable[str] = (),
    cache: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Signals of every (open) deal at each date: columns deal_id, as_of, owner, team, then
    :data:`SIGNALS` in registry order, then the listed ``custom_*`` columns (static attributes).

    ``deal_ids`` restricts the rows; rep and team statistics still use every deal. ``cache``
    (an empty dict at first) keeps table-level indexes between calls on the *same* tables.
    """
    deals = tables.deals
    subset = tables
    if deal_ids is not None:
        subset = replace(tables, deals=deals[deals["deal_id"].isin(list(deal_ids))])
    dates = [as_of_dates] if isinstance(as_of_dates, pd.Timestamp) else list(as_of_dates)
    states = deal_states(subset, dates, stages, open_only=open_only)
    all_deals = deals.reset_index(drop=True)
    index = pd.Index(all_deals["deal_id"])
    code = _codes(states["deal_id"], index)
    inputs: dict[str, Any] = {
        "deals": all_deals,
        "deal_index": index,
        "deal_code": code,
        "stages": stages,
        "activities": tables.activities.reset_index(drop=True),
        "stakeholders": tables.stakeholders.reset_index(drop=True),
        "field_history": tables.field_history.reset_index(drop=True),
        "as_of": states["as_of"].astype("datetime64[us]").reset_index(drop=True),
        "history_source": pd.Series(all_deals["history_source"].to_numpy()[code]),
    }
    for col in _STATE_INPUTS:
        inputs[col] = states[col].reset_index(drop=True)
    for col in ("history_known", "stage_known"):
        inputs[col] = _flag(states[col].to_numpy())
    values = _execute(inputs, SIGNALS, cache)
    out = pd.DataFrame(
        {
            "deal_id": states["deal_id"].to_numpy(),
            "as_of": inputs["as_of"].to_numpy(),
            "owner": states["owner"].to_numpy(),
            "team": states["team"].to_numpy(),
        }
    )
    for name in SIGNALS:
        out[name] = (
            np.asarray(values[name]) if name not in _STATE_INPUTS else values[name].to_numpy()
        )
    for col in custom_column_names(deals, custom):
        out[col] = states[col].to_numpy()
    return out


def describe_signals() -> pd.DataFrame:
    """The registry as a table (name, kind, needs_history, description)."""
    return pd.DataFrame(
        [(s.name, s.kind.value, s.needs_history, s.description) for s in SIGNALS.values()],
        columns=["name", "kind", "needs_history", "description"],
    )
