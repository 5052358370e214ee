"""Pipeline metrics as of a date: the seed's metrics table, computed point-in-time.

Every number is built from :func:`features.signals.pointintime.deal_states_as_of` (deals as they
stood at ``as_of``, by its one rule) and from events stamped on or before ``as_of``; nothing known
only later is read. A value the rebuild cannot know at ``as_of`` (an amount or expected close date
without dated history before the export) is unknown, never 0: every summed amount comes with the
count of deals whose amount is unknown (``amount_unknown``, also counting amounts the export left
empty), coverage counts the open deals whose expected close date is unknown (they may or may not
close this quarter), and the weighted pipeline also counts unknown stages.

Definitions (days are whole calendar days; "window" is the trailing ``window_days`` ending at
``as_of``, reported as first and last day in the output):

- open pipeline: open deals at ``as_of`` (count, summed amount).
- closing this quarter: open deals whose expected close date falls in ``as_of``'s quarter.
- coverage: pipeline closing this quarter / the quarter's target (owner, else team, else company
  target); bands: below ``coverage_healthy.min`` "in_trouble", inside "healthy", up to
  :data:`OPTIMISTIC_COVERAGE` "buffer_check_amounts", above it "likely_optimistic".
- weighted pipeline: amount x the stage's default win probability (open deals with unknown stage
  are left out and counted); the quarter's weighted pipeline should exceed target by 20-50%.
- new pipeline added: deals created this quarter up to ``as_of`` (any outcome), amount as of
  ``as_of``.
- velocity: mean created -> closed days (won or lost) of deals closed in the window, against the
  window before it.
- deals entered in the CRM after they closed (``deals.entered_after_close``) count in won and
  lost totals (won this quarter, win rate, deal size, loss reasons) and nowhere that measures an
  open deal's path or the pipeline they never were: velocity, sales cycle, stage conversion (and
  the funnel and historical forecast built on it), completed time in stage,
  opportunity-to-customer, new pipeline added.
- win rate: won / (won + lost) among deals closed in the window.
- opportunity-to-customer: of the deals created in the window, the share won by ``as_of`` (deals
  still open count as not yet customers; their number is reported).
- stage-to-stage conversion, per open stage N: cohort = deals that entered N on or before
  ``as_of`` and whose fate at N is decided (they reached a later stage or won, or were lost);
  converted = reached any later open stage or won. Deals still open without passing N are
  undecided and left out. Lookback: all history up to ``as_of``.
- lead-to-opportunity: not computable (no leads data); reported as unavailable.
- average deal size, sales cycle: won deals closed in the window (created -> won days).
- time in stage: open deals' days in their current stage, and completed stays that ended in the
  window, against the stage norm; outliers exceed ``time_in_stage_factor`` x norm.
- activities: this quarter up to ``as_of``, by type; calls+meetings, demos, proposals sent.
- loss reasons: deals lost in the window.
- funnel projection: open deals per stage pushed through the conversion rates to expected wins.
- historical-conversion forecast: open pipeline in stage 2+ closing this quarter x the value share
  won of deals that reached stage 2+ and closed in the window.

Each metric is a small function registered under its field of :class:`PipelineMetrics`
(:data:`METRICS`); :func:`compute_metrics` builds the scope once (:class:`MetricsInput`: the
deals as of ``as_of``, the windows, the target) and loops over the registry. Open deals' days in
stage (the ``days_in_stage`` signal) and the outlier rule come from :mod:`features.pipeline.facts`,
as for the hygiene rules and the review pack. An unknown team or owner is a
:class:`~features.errors.NotFoundError`; a known one without deals at ``as_of`` gives zeros and
unknowns (see :mod:`features.pipeline.scope`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from features.data.calendar import days_between, quarter_bounds, quarter_of
from features.data.currency import corporate_currency
from features.data.schema import (
    ActivityType,
    CanonicalTables,
    Outcome,
    TargetScope,
    entered_after_close,
)
from features.data.stages import StageConfig
from features.pipeline.facts import stage_limits, stage_time
from features.pipeline.scope import scoped_events, scoped_states
from features.serialize import UtcDatetime, jsonable

WINDOW_DAYS = 365
# The seed: ">6x: your amount estimates are probably too optimistic".
OPTIMISTIC_COVERAGE = 6.0
# The seed: weighted pipeline "should exceed target by 20-50%".
WEIGHTED_TARGET_RANGE = (1.2, 1.5)
# Velocity changes within +-5% of the previous window count as stable.
TREND_TOLERANCE = 0.05
_DAY = pd.Timedelta(days=1)


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den else None


def _amount(deals: pd.DataFrame) -> float:
    """Summed amount of the deals whose amount is known (see :func:`_amount_unknown`)."""
    return float(deals["amount"].sum())


def _amount_unknown(deals: pd.DataFrame) -> int:
    """Deals whose amount is not known at the date (or was empty in the export): a sum adds
    nothing for them, so every sum states how many."""
    return int(deals["amount"].isna().sum())


def _count_value(deals: pd.DataFrame) -> CountValue:
    return CountValue(len(deals), _amount(deals), _amount_unknown(deals))


# --- result types ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Window:
    """A trailing period of whole days, both ends included."""

    first_day: date
    last_day: date
    days: int


@dataclass(frozen=True)
class CountValue:
    """Deals and their summed amount; ``amount_unknown`` of them add nothing to ``value``."""

    count: int
    value: float
    amount_unknown: int


@dataclass(frozen=True)
class Coverage:
    quarter: str
    target: float | None
    target_scope: str | None
    pipeline_closing: float
    ratio: float | None
    band: str
    healthy_range: tuple[float, float]
    won_this_quarter: float
    remaining_target: float | None
    ratio_to_remaining: float | None
    closing_amount_unknown: int  # closing deals whose amount is unknown (not in the ratio)
    close_date_unknown: int  # open deals whose expected close date is unknown (not counted)
    won_amount_unknown: int


@dataclass(frozen=True)
class Weighted:
    all_open: float
    closing_this_quarter: float
    ratio_to_target: float | None
    band: str
    target_range: tuple[float, float]
    unknown_stage_count: int
    unknown_amount_count: int


@dataclass(frozen=True)
class Velocity:
    window: Window
    closed_count: int
    mean_days: float | None
    previous_window: Window
    previous_closed_count: int
    previous_mean_days: float | None
    change_days: float | None
    trend: str | None


@dataclass(frozen=True)
class Rate:
    numerator: int
    denominator: int
    rate: float | None
    window: Window | None
    note: str = ""


@dataclass(frozen=True)
class StageConversion:
    stage: str
    label: str
    reached: int
    decided: int
    converted: int
    undecided: int
    rate: float | None


@dataclass(frozen=True)
class DealSize:
    window: Window
    won_count: int
    won_value: float
    average: float | None  # over the won deals whose amount is known
    amount_unknown: int


@dataclass(frozen=True)
class CycleLength:
    window: Window
    won_count: int
    median_days: float | None
    mean_days: float | None


@dataclass(frozen=True)
class TimeInStage:
    stage: str
    label: str
    norm_days: float | None
    limit_days: float | None
    open_count: int
    open_median_days: float | None
    open_outliers: int
    open_entry_unknown: int
    completed_count: int
    completed_median_days: float | None


@dataclass(frozen=True)
class ActivityCounts:
    first_day: date
    last_day: date
    weeks: float
    by_type: dict[str, int]
    calls_meetings: int
    demos: int
    proposals_sent: int
    calls_meetings_per_week: float | None


@dataclass(frozen=True)
class LossReasonCount:
    reason: str
    count: int
    value: float
    share: float
    amount_unknown: int


@dataclass(frozen=True)
class FunnelStage:
    stage: str
    label: str
    open_count: int
    open_value: float
    amount_unknown: int
    conversion_rate: float | None
    p_win_from_stage: float | None
    expected_reaching: float | None
    expected_wins: float | None
    expected_won_value: float | None


@dataclass(frozen=True)
class FunnelProjection:
    stages: list[FunnelStage]
    expected_wins: float | None
    expected_won_value: float | None
    text: str


@dataclass(frozen=True)
class HistoricalForecast:
    from_stage: str
    quarter: str
    pipeline_count: int
    pipeline_value: float
    amount_unknown: int
    conversion_rate: float | None
    window: Window
    forecast: float | None
    text: str


@dataclass(frozen=True)
class Unavailable:
    available: bool
    reason: str


@dataclass(frozen=True)
class PipelineMetrics:
    """Every pipeline metric of the seed for one scope, as of one date."""

    as_of: UtcDatetime
    quarter: str
    team: str | None
    owner: str | None
    currency: str | None  # the corporate currency of every amount (None: one unnamed currency)
    open_pipeline: CountValue
    closing_this_quarter: CountValue
    coverage: Coverage
    weighted: Weighted
    new_pipeline: CountValue
    velocity: Velocity
    win_rate: Rate
    opportunity_to_customer: Rate
    stage_conversion: list[StageConversion]
    lead_to_opportunity: Unavailable
    average_deal_size: DealSize
    sales_cycle: CycleLength
    time_in_stage: list[TimeInStage]
    activities: ActivityCounts
    loss_reasons: list[LossReasonCount]
    funnel: FunnelProjection
    historical_forecast: HistoricalForecast

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = jsonable(self)
        return out


# --- the scope every metric reads -----------------------------------------------------------------
Bounds = tuple[pd.Timestamp, pd.Timestamp]


def _window(as_of: pd.Timestamp, days: int, back: int = 0) -> Bounds:
    """(start, end] bounds of the trailing window ``back`` windows before the current one."""
    end = as_of - pd.Timedelta(days=days * back)
    return end - pd.Timedelta(days=days), end


def _window_info(bounds: Bounds, days: int) -> Window:
    start, end = bounds
    return Window((start + _DAY).date(), end.date(), days)


def _in(ts: pd.Series, bounds: Bounds) -> pd.Series:
    return (ts > bounds[0]) & (ts <= bounds[1])


def _days(later: pd.Series, earlier: pd.Series) -> pd.Series:
    """:func:`days_between` lined up with ``later``'s index."""
    return pd.Series(days_between(later, earlier).to_numpy(), index=later.index)


@dataclass(frozen=True)
class MetricsInput:
    """One scope (company, team or owner) as of one date: what every metric function reads.

    Built once by :func:`compute_metrics`; the derived frames are computed on first use.
    """

    tables: CanonicalTables
    stages: StageConfig
    as_of: pd.Timestamp
    team: str | None
    owner: str | None
    window_days: int
    states: pd.DataFrame  # every deal in scope that existed at as_of, as it stood then

    @property
    def quarter(self) -> str:
        return quarter_of(self.as_of)

    @cached_property
    def quarter_bounds(self) -> Bounds:
        return quarter_bounds(self.quarter)

    @cached_property
    def window(self) -> Bounds:
        return _window(self.as_of, self.window_days)

    @cached_property
    def previous_window(self) -> Bounds:
        return _window(self.as_of, self.window_days, back=1)

    @cached_property
    def window_info(self) -> Window:
        return _window_info(self.window, self.window_days)

    @cached_property
    def open_deals(self) -> pd.DataFrame:
        return self.states[self.states["is_open"]]

    @cached_property
    def open_stage_time(self) -> pd.DataFrame:
        """Open deals' stage, days in stage (the signal) and whether that is over the norm."""
        time = stage_time(self.open_deals, self.stages, self.as_of)
        return time.assign(stage=self.open_deals["stage"])

    @cached_property
    def closing(self) -> pd.DataFrame:
        """Open deals whose expected close date falls in ``as_of``'s quarter."""
        q_start, q_end = self.quarter_bounds
        close = self.open_deals["expected_close_date"]
        return self.open_deals[(close >= q_start) & (close <= q_end)]

    @cached_property
    def target(self) -> tuple[float | None, str | None]:
        return _target(self.tables.targets, self.quarter, self.team, self.owner)

    @cached_property
    def won_this_quarter_deals(self) -> pd.DataFrame:
        s = self.states
        return s[(s["outcome"] == Outcome.WON.value) & (s["closed_at"] >= self.quarter_bounds[0])]

    @cached_property
    def won_this_quarter(self) -> float:
        return _amount(self.won_this_quarter_deals)

    @cached_property
    def closed(self) -> pd.DataFrame:
        return self.states[~self.states["is_open"]]

    @cached_property
    def worked(self) -> pd.DataFrame:
        """The deals that were open in the CRM: not entered after they closed."""
        return self.states[~entered_after_close(self.tables.deals, self.states["deal_id"])]

    @cached_property
    def worked_closed(self) -> pd.DataFrame:
        return self.worked[~self.worked["is_open"]]

    @cached_property
    def cycle_days(self) -> pd.Series:
        """Created -> closed days of the closed deals that were open in the CRM."""
        return _days(self.worked_closed["closed_at"], self.worked_closed["created_at"])

    @cached_property
    def closed_in_window(self) -> pd.DataFrame:
        return self.closed[_in(self.closed["closed_at"], self.window)]

    @cached_property
    def won_in_window(self) -> pd.DataFrame:
        c = self.closed_in_window
        return c[c["outcome"] == Outcome.WON.value]

    @cached_property
    def reach(self) -> pd.DataFrame:
        return stage_reach(self.tables, self.worked, self.stages, self.as_of)

    @cached_property
    def conversion(self) -> list[StageConversion]:
        return _conversion(self.reach, self.worked, self.stages)


# --- registry -------------------------------------------------------------------------------------
MetricFn = Callable[[MetricsInput], Any]
# PipelineMetrics field -> the function that computes it, in field order.
METRICS: dict[str, MetricFn] = {}


def metric(name: str) -> Callable[[MetricFn], MetricFn]:
    """Register ``fn`` as the computation of the :class:`PipelineMetrics` field ``name``."""

    def wrap(fn: MetricFn) -> MetricFn:
        METRICS[name] = fn
        return fn

    return wrap


# --- helpers --------------------------------------------------------------------------------------
def _target(
    targets: pd.DataFrame, quarter: str, team: str | None, owner: str | None
) -> tuple[float | None, str | None]:
    """The quarter's target for the narrowest scope asked for."""
    if owner is not None:
        scope, scope_id = TargetScope.OWNER.value, owner
    elif team is not None:
        scope, scope_id = TargetScope.TEAM.value, team
    else:
        scope, scope_id = TargetScope.COMPANY.value, TargetScope.COMPANY.value
    hit = targets[
        (targets["scope"] == scope)
        & (targets["quarter"] == quarter)
        & ((targets["scope_id"] == scope_id) | (scope == TargetScope.COMPANY.value))
    ]
    if hit.empty:
        return None, f"{scope}:{scope_id}"
    return float(hit["amount"].sum()), f"{scope}:{scope_id}"


def _coverage_band(ratio: float | None, stages: StageConfig) -> str:
    if ratio is None:
        return "no_target"
    healthy = stages.hygiene.coverage_healthy
    if ratio < healthy.min:
        return "in_trouble"
    if ratio <= healthy.max:
        return "healthy"
    if ratio <= OPTIMISTIC_COVERAGE:
        return "buffer_check_amounts"
    return "likely_optimistic"


def _weighted_band(ratio: float | None) -> str:
    if ratio is None:
        return "no_target"
    lo, hi = WEIGHTED_TARGET_RANGE
    if ratio < lo:
        return "below_range"
    return "in_range" if ratio <= hi else "above_range"


def _stats(values: pd.Series) -> tuple[float | None, float | None]:
    """(median, mean) or Nones when empty."""
    v = values.dropna()
    if v.empty:
        return None, None
    return float(v.median()), float(v.mean())


def _weighted_sum(deals: pd.DataFrame, stages: StageConfig) -> float:
    """Amount x the stage's default win probability; unknown stages and amounts count nothing."""
    prob = {s.key: s.win_probability for s in stages.stages}
    # float64 even when no deal is left (an empty object map would be multiplied as text)
    p = deals["stage"].astype(object).map(prob).astype("float64")
    return float((deals["amount"].astype("float64") * p).sum())


def stage_reach(
    tables: CanonicalTables, states: pd.DataFrame, stages: StageConfig, as_of: pd.Timestamp
) -> pd.DataFrame:
    """Per deal in ``states`` and open stage: whether it entered the stage by ``as_of``.

    Also ``_max_order``: the highest open-stage order reached.
    """
    order = {s.key: s.order for s in stages.open_stages}
    sh = scoped_events(tables.stage_history, "entered_at", as_of, states["deal_id"])
    sh = sh[sh["stage"].isin(list(order))]
    keys = list(order)
    hits = np.zeros((len(states), len(keys)), dtype=bool)
    rows = pd.Index(states["deal_id"]).get_indexer(pd.Index(sh["deal_id"]))
    cols = pd.Index(keys).get_indexer(pd.Index(sh["stage"]))
    hits[rows, cols] = True
    reached = pd.DataFrame(hits, index=pd.Index(states["deal_id"]), columns=keys)
    orders = np.array([order[k] for k in keys])
    masked = np.where(hits, orders[None, :], 0)
    reached["_max_order"] = masked.max(axis=1) if len(keys) else 0
    return reached


def _conversion(
    reach: pd.DataFrame, states: pd.DataFrame, stages: StageConfig
) -> list[StageConversion]:
    won = (states["outcome"] == Outcome.WON.value).to_numpy()
    lost = (states["outcome"] == Outcome.LOST.value).to_numpy()
    max_order = reach["_max_order"].to_numpy()
    out = []
    for s in stages.open_stages:
        hit = reach[s.key].to_numpy()
        converted = hit & ((max_order > s.order) | won)
        decided = converted | (hit & lost)
        n_dec = int(decided.sum())
        out.append(
            StageConversion(
                stage=s.key,
                label=s.label,
                reached=int(hit.sum()),
                decided=n_dec,
                converted=int(converted.sum()),
                undecided=int(hit.sum()) - n_dec,
                rate=_ratio(int(converted.sum()), n_dec),
            )
        )
    return out


def _funnel(
    open_deals: pd.DataFrame, conversion: list[StageConversion], stages: StageConfig
) -> FunnelProjection:
    """The seed's "100 in stage 1 -> 60 -> 42 -> 17 won", from the open deals of today."""
    rates = [c.rate for c in conversion]
    rows: list[FunnelStage] = []
    flow: float | None = 0.0
    for i, s in enumerate(stages.open_stages):
        here = open_deals[open_deals["stage"] == s.key]
        n, value = len(here), _amount(here)
        p_win: float | None = 1.0
        for r in rates[i:]:
            p_win = None if (r is None or p_win is None) else p_win * r
        prev_rate = rates[i - 1] if i else 1.0
        if i == 0:
            flow = float(n)
        elif flow is not None and prev_rate is not None:
            flow = flow * prev_rate + n
        else:
            flow = None
        rows.append(
            FunnelStage(
                stage=s.key,
                label=s.label,
                open_count=n,
                open_value=value,
                amount_unknown=_amount_unknown(here),
                conversion_rate=rates[i],
                p_win_from_stage=p_win,
                expected_reaching=flow,
                expected_wins=None if p_win is None else n * p_win,
                expected_won_value=None if p_win is None else value * p_win,
            )
        )
    return FunnelProjection(rows, *_funnel_totals(rows))


def _funnel_totals(rows: list[FunnelStage]) -> tuple[float | None, float | None, str]:
    """Expected wins, expected won value and the seed-style text of a funnel."""
    wins = [r.expected_wins for r in rows]
    values = [r.expected_won_value for r in rows]
    total_wins = None if any(w is None for w in wins) else float(sum(w or 0.0 for w in wins))
    total_value = None if any(v is None for v in values) else float(sum(v or 0.0 for v in values))
    steps = " -> ".join(
        "?" if r.expected_reaching is None else f"{r.expected_reaching:.0f}" for r in rows
    )
    won_txt = "?" if total_wins is None else f"{total_wins:.0f}"
    text = f"{steps} -> {won_txt} won"
    if total_value is not None:
        text += f" (expected won value {total_value:,.0f})"
    return total_wins, total_value, text


def _completed_stays(x: MetricsInput) -> pd.DataFrame:
    """Stage stays (stage, days) that ended in the window: an entry followed by the next stage
    change, or by the close."""
    states = x.worked
    sh = scoped_events(x.tables.stage_history, "entered_at", x.as_of, states["deal_id"])
    sh = sh.sort_values(["deal_id", "entered_at"], kind="stable")
    nxt = sh.groupby("deal_id")[["entered_at", "derived", "stage"]].shift(-1)
    closed = states.set_index("deal_id")["closed_at"].reindex(sh["deal_id"]).to_numpy()
    last = nxt["entered_at"].isna().to_numpy()
    end = nxt["entered_at"].where(~last, pd.Series(closed, index=sh.index))
    # A derived or unknown-stage next row only shows the deal had left by then: end unknown.
    end_known = last | (~nxt["derived"].fillna(False).astype(bool) & nxt["stage"].notna())
    stays = pd.DataFrame({"stage": sh["stage"], "days": _days(end, sh["entered_at"])})
    return stays[(~sh["derived"]) & end_known & _in(end, x.window)]


# --- the metrics, in PipelineMetrics field order --------------------------------------------------
@metric("open_pipeline")
def open_pipeline(x: MetricsInput) -> CountValue:
    return _count_value(x.open_deals)


@metric("closing_this_quarter")
def closing_this_quarter(x: MetricsInput) -> CountValue:
    return _count_value(x.closing)


@metric("coverage")
def coverage(x: MetricsInput) -> Coverage:
    target, scope = x.target
    closing = _amount(x.closing)
    ratio = _ratio(closing, target) if target else None
    remaining = None if target is None else max(target - x.won_this_quarter, 0.0)
    healthy = x.stages.hygiene.coverage_healthy
    return Coverage(
        quarter=x.quarter,
        target=target,
        target_scope=scope,
        pipeline_closing=closing,
        ratio=ratio,
        band=_coverage_band(ratio, x.stages),
        healthy_range=(healthy.min, healthy.max),
        won_this_quarter=x.won_this_quarter,
        remaining_target=remaining,
        ratio_to_remaining=_ratio(closing, remaining) if remaining else None,
        closing_amount_unknown=_amount_unknown(x.closing),
        close_date_unknown=int(x.open_deals["expected_close_date"].isna().sum()),
        won_amount_unknown=_amount_unknown(x.won_this_quarter_deals),
    )


@metric("weighted")
def weighted(x: MetricsInput) -> Weighted:
    target = x.target[0]
    w_closing = _weighted_sum(x.closing, x.stages)
    ratio = _ratio(w_closing, target) if target else None
    return Weighted(
        all_open=_weighted_sum(x.open_deals, x.stages),
        closing_this_quarter=w_closing,
        ratio_to_target=ratio,
        band=_weighted_band(ratio),
        target_range=WEIGHTED_TARGET_RANGE,
        unknown_stage_count=int((~x.open_deals["stage_known"].astype(bool)).sum()),
        unknown_amount_count=_amount_unknown(x.open_deals),
    )


@metric("new_pipeline")
def new_pipeline(x: MetricsInput) -> CountValue:
    return _count_value(x.worked[x.worked["created_at"] >= x.quarter_bounds[0]])


@metric("velocity")
def velocity(x: MetricsInput) -> Velocity:
    closed_at = x.worked_closed["closed_at"]
    in_win, in_prev = _in(closed_at, x.window), _in(closed_at, x.previous_window)
    mean_now, mean_prev = _stats(x.cycle_days[in_win])[1], _stats(x.cycle_days[in_prev])[1]
    change = None if mean_now is None or mean_prev is None else mean_now - mean_prev
    trend = None
    if change is not None and mean_prev is not None:
        if abs(change) <= TREND_TOLERANCE * mean_prev:
            trend = "stable"
        else:
            trend = "shortening" if change < 0 else "lengthening"
    return Velocity(
        x.window_info,
        int(in_win.sum()),
        mean_now,
        _window_info(x.previous_window, x.window_days),
        int(in_prev.sum()),
        mean_prev,
        change,
        trend,
    )


@metric("win_rate")
def win_rate(x: MetricsInput) -> Rate:
    won, closed = len(x.won_in_window), len(x.closed_in_window)
    return Rate(won, closed, _ratio(won, closed), x.window_info)


@metric("opportunity_to_customer")
def opportunity_to_customer(x: MetricsInput) -> Rate:
    cohort = x.worked[_in(x.worked["created_at"], x.window)]
    n_won = int((cohort["outcome"] == Outcome.WON.value).sum())
    return Rate(
        n_won,
        len(cohort),
        _ratio(n_won, len(cohort)),
        x.window_info,
        note=f"deals created in the window; {int(cohort['is_open'].sum())} still open",
    )


@metric("stage_conversion")
def stage_conversion(x: MetricsInput) -> list[StageConversion]:
    return x.conversion


@metric("lead_to_opportunity")
def lead_to_opportunity(x: MetricsInput) -> Unavailable:
    return Unavailable(False, "needs leads (MQL/SQL) data, which the canonical model does not hold")


@metric("average_deal_size")
def average_deal_size(x: MetricsInput) -> DealSize:
    won = x.won_in_window
    value, unknown = _amount(won), _amount_unknown(won)
    return DealSize(x.window_info, len(won), value, _ratio(value, len(won) - unknown), unknown)


@metric("sales_cycle")
def sales_cycle(x: MetricsInput) -> CycleLength:
    won = x.won_in_window
    days = x.cycle_days.reindex(won.index[won.index.isin(x.cycle_days.index)])
    median, mean = _stats(days)
    return CycleLength(x.window_info, len(days), median, mean)


@metric("time_in_stage")
def time_in_stage(x: MetricsInput) -> list[TimeInStage]:
    """Open deals' days in stage (the signal) against the norm; stays that ended in the window."""
    facts, stays = x.open_stage_time, _completed_stays(x)
    limits = stage_limits(x.stages)
    out = []
    for s in x.stages.open_stages:
        norm, limit = limits.get(s.key, (x.stages.norm_days(s.key), None))
        here = facts[(facts["stage"] == s.key).to_numpy(dtype=bool)]
        days = here["days_in_stage"]
        done = stays.loc[stays["stage"] == s.key, "days"]
        out.append(
            TimeInStage(
                stage=s.key,
                label=s.label,
                norm_days=norm,
                limit_days=limit,
                open_count=len(here),
                open_median_days=_stats(days)[0],
                open_outliers=int(here["over_stage_norm"].sum()),
                open_entry_unknown=int(days.isna().sum()),
                completed_count=len(done),
                completed_median_days=_stats(done)[0],
            )
        )
    return out


@metric("activities")
def activities(x: MetricsInput) -> ActivityCounts:
    q_start = x.quarter_bounds[0]
    acts = scoped_events(x.tables.activities, "occurred_at", x.as_of, x.states["deal_id"])
    counts = acts.loc[acts["occurred_at"] >= q_start, "type"].value_counts()
    by_type = {t.value: int(counts.get(t.value, 0)) for t in ActivityType}
    weeks = (float(days_between(x.as_of, q_start).iloc[0]) + 1) / 7
    calls = by_type[ActivityType.CALL.value] + by_type[ActivityType.MEETING.value]
    return ActivityCounts(
        first_day=q_start.date(),
        last_day=x.as_of.date(),
        weeks=round(weeks, 2),
        by_type=by_type,
        calls_meetings=calls,
        demos=by_type[ActivityType.DEMO.value],
        proposals_sent=by_type[ActivityType.PROPOSAL.value],
        calls_meetings_per_week=_ratio(calls, weeks),
    )


@metric("loss_reasons")
def loss_reasons(x: MetricsInput) -> list[LossReasonCount]:
    lost = x.closed_in_window[x.closed_in_window["outcome"] == Outcome.LOST.value]
    reasons = x.tables.deals.set_index("deal_id")["loss_reason"].reindex(lost["deal_id"])
    frame = pd.DataFrame(
        {"reason": reasons.fillna("unknown").to_numpy(), "amount": lost["amount"].to_numpy()}
    )
    grouped = (
        frame.assign(unknown=frame["amount"].isna())
        .groupby("reason")
        .agg(count=("unknown", "size"), sum=("amount", "sum"), unknown=("unknown", "sum"))
        .sort_values(["count", "sum"], ascending=False)
    )
    total = len(frame)
    return [
        LossReasonCount(
            str(r),
            int(row["count"]),
            float(row["sum"]),
            int(row["count"]) / total,
            int(row["unknown"]),
        )
        for r, row in grouped.iterrows()
    ]


@metric("funnel")
def funnel(x: MetricsInput) -> FunnelProjection:
    return _funnel(x.open_deals, x.conversion, x.stages)


@metric("historical_forecast")
def historical_forecast(x: MetricsInput) -> HistoricalForecast:
    """The seed's "EUR 2M in stage 2+, historical conversion 35% -> EUR 700K"."""
    opens = x.stages.open_stages
    start = opens[1] if len(opens) > 1 else opens[0]
    order = {s.key: s.order for s in opens}
    pipe = x.closing[x.closing["stage"].astype(object).map(order).fillna(0) >= start.order]
    value = _amount(pipe)
    closed = x.closed_in_window
    max_order = x.reach["_max_order"].reindex(closed["deal_id"]).fillna(0).to_numpy()
    hist = closed[max_order >= start.order]
    won_value = float(hist.loc[hist["outcome"] == Outcome.WON.value, "amount"].sum())
    rate = _ratio(won_value, float(hist["amount"].sum()))
    forecast = None if rate is None else value * rate
    rate_txt = "n/a" if rate is None else f"{rate:.0%}"
    fc_txt = "n/a" if forecast is None else f"{forecast:,.0f}"
    text = (
        f"{value:,.0f} pipeline in {start.label}+ closing {x.quarter}, "
        f"historical conversion {rate_txt} -> {fc_txt}"
    )
    return HistoricalForecast(
        start.key,
        x.quarter,
        len(pipe),
        value,
        _amount_unknown(pipe),
        rate,
        x.window_info,
        forecast,
        text,
    )


# --- entry point ----------------------------------------------------------------------------------
def compute_metrics(
    tables: CanonicalTables,
    stages: StageConfig,
    as_of: pd.Timestamp,
    *,
    team: str | None = None,
    owner: str | None = None,
    window_days: int = WINDOW_DAYS,
) -> PipelineMetrics:
    """All pipeline metrics for a scope (company, team or owner) as they stood at ``as_of``."""
    x = _metrics_input(tables, stages, as_of, team, owner, window_days)
    return PipelineMetrics(
        as_of=x.as_of.to_pydatetime(),
        quarter=x.quarter,
        team=team,
        owner=owner,
        currency=corporate_currency(tables.exchange_rates),
        **{name: fn(x) for name, fn in METRICS.items()},
    )


def compute_metric(
    tables: CanonicalTables,
    stages: StageConfig,
    as_of: pd.Timestamp,
    name: str,
    *,
    team: str | None = None,
    owner: str | None = None,
    window_days: int = WINDOW_DAYS,
) -> Any:
    """One field of :func:`compute_metrics` (a :data:`METRICS` name), computing only what it
    reads."""
    if name not in METRICS:
        raise KeyError(f"no pipeline metric {name!r} (known: {', '.join(METRICS)})")
    return METRICS[name](_metrics_input(tables, stages, as_of, team, owner, window_days))


def _metrics_input(
    tables: CanonicalTables,
    stages: StageConfig,
    as_of: pd.Timestamp,
    team: str | None,
    owner: str | None,
    window_days: int,
) -> MetricsInput:
    as_of = pd.Timestamp(as_of)
    states = scoped_states(tables, stages, as_of, team=team, owner=owner)
    return MetricsInput(tables, stages, as_of, team, owner, window_days, states)
