"""Pipeline metrics as of a date: the seed's metrics table, computed point-in-time.

Every number is built from :func:`features.signals.pointintime.deal_states_as_of` (deals as they
stood at ``as_of``) and from events stamped on or before ``as_of``; nothing known only later is
read.

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
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from datetime import date, datetime
from enum import Enum
from typing import Any

import numpy as np
import pandas as pd

from features.data.calendar import quarter_bounds, quarter_of
from features.data.schema import ActivityType, CanonicalTables, Outcome, TargetScope
from features.data.stages import StageConfig
from features.signals.pointintime import deal_states_as_of, events_as_of

WINDOW_DAYS = 365
# The seed: ">6x: your amount estimates are probably too optimistic".
OPTIMISTIC_COVERAGE = 6.0
# The seed: weighted pipeline "should exceed target by 20-50%".
WEIGHTED_TARGET_RANGE = (1.2, 1.5)
# Velocity changes within +-5% of the previous window count as stable.
TREND_TOLERANCE = 0.05
_DAY = pd.Timedelta(days=1)


# --- JSON ----------------------------------------------------------------------------------------
def jsonable(obj: Any) -> Any:
    """Dataclasses, dates, enums and numpy scalars as plain JSON values (NaN -> None)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, pd.Timestamp):
        return None if pd.isna(obj) else obj.isoformat()
    if isinstance(obj, datetime | date):
        return obj.isoformat()
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is pd.NaT or obj is pd.NA:
        return None
    return obj


# --- small helpers shared with hygiene and review --------------------------------------------
def days_between(start: pd.Series, end: pd.Timestamp) -> pd.Series:
    """Whole calendar days from each ``start`` to ``end`` (an end-of-day as_of counts the day)."""
    return (end.normalize() - pd.to_datetime(start).dt.normalize()).dt.days


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den else None


def scoped_states(
    tables: CanonicalTables,
    stages: StageConfig,
    as_of: pd.Timestamp,
    *,
    team: str | None = None,
    owner: str | None = None,
) -> pd.DataFrame:
    """Every deal that existed at ``as_of`` as it stood then, limited to a team and/or owner."""
    states = deal_states_as_of(tables, as_of, stages)
    if team is not None:
        states = states[states["team"] == team]
    if owner is not None:
        states = states[states["owner"] == owner]
    return states.reset_index(drop=True)


def scoped_events(
    events: pd.DataFrame, column: str, as_of: pd.Timestamp, deal_ids: pd.Series
) -> pd.DataFrame:
    """Events stamped on or before ``as_of`` of the deals in scope."""
    ev = events_as_of(events, column, as_of)
    # Hash lookup: Series.isin on arrow strings walks the values in Python.
    known = pd.Index(deal_ids).get_indexer(pd.Index(ev["deal_id"])) >= 0
    return ev[known]


def last_activity(tables: CanonicalTables, as_of: pd.Timestamp, deal_ids: pd.Series) -> pd.Series:
    """Time of each deal's last activity on or before ``as_of`` (NaT when none)."""
    acts = scoped_events(tables.activities, "occurred_at", as_of, deal_ids)
    return acts.groupby("deal_id")["occurred_at"].max()


# --- result types ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Window:
    """A trailing period of whole days, both ends included."""

    first_day: date
    last_day: date
    days: int


@dataclass(frozen=True)
class CountValue:
    count: int
    value: float


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


@dataclass(frozen=True)
class Weighted:
    all_open: float
    closing_this_quarter: float
    ratio_to_target: float | None
    band: str
    target_range: tuple[float, float]
    unknown_stage_count: int


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
    average: float | None


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


@dataclass(frozen=True)
class FunnelStage:
    stage: str
    label: str
    open_count: int
    open_value: float
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

    as_of: datetime
    quarter: str
    team: str | None
    owner: str | None
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


# --- pieces ---------------------------------------------------------------------------------
def _window(as_of: pd.Timestamp, days: int, back: int = 0) -> tuple[pd.Timestamp, pd.Timestamp]:
    """(start, end] bounds of the trailing window ``back`` windows before the current one."""
    end = as_of - pd.Timedelta(days=days * back)
    return end - pd.Timedelta(days=days), end


def _window_info(bounds: tuple[pd.Timestamp, pd.Timestamp], days: int) -> Window:
    start, end = bounds
    return Window((start + _DAY).date(), end.date(), days)


def _in(ts: pd.Series, bounds: tuple[pd.Timestamp, pd.Timestamp]) -> pd.Series:
    return (ts > bounds[0]) & (ts <= bounds[1])


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
        n, value = len(here), float(here["amount"].sum())
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
                conversion_rate=rates[i],
                p_win_from_stage=p_win,
                expected_reaching=flow,
                expected_wins=None if p_win is None else n * p_win,
                expected_won_value=None if p_win is None else value * p_win,
            )
        )
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
    return FunnelProjection(rows, total_wins, total_value, text)


def _time_in_stage(
    tables: CanonicalTables,
    states: pd.DataFrame,
    stages: StageConfig,
    as_of: pd.Timestamp,
    window: tuple[pd.Timestamp, pd.Timestamp],
) -> list[TimeInStage]:
    open_deals = states[states["is_open"]]
    days_open = days_between(open_deals["stage_entered_at"], as_of)

    # Completed stays: an entry followed by the next stage change (or the close) in the window.
    sh = scoped_events(tables.stage_history, "entered_at", as_of, states["deal_id"])
    sh = sh.sort_values(["deal_id", "entered_at"], kind="stable")
    nxt = sh.groupby("deal_id")[["entered_at", "derived", "stage"]].shift(-1)
    closed = states.set_index("deal_id")["closed_at"].reindex(sh["deal_id"]).to_numpy()
    last = nxt["entered_at"].isna().to_numpy()
    end = nxt["entered_at"].where(~last, pd.Series(closed, index=sh.index))
    # A derived or unknown-stage next row only shows the deal had left by then: end unknown.
    end_known = last | (~nxt["derived"].fillna(False).astype(bool) & nxt["stage"].notna())
    stays = pd.DataFrame(
        {
            "stage": sh["stage"],
            "days": (end.dt.normalize() - sh["entered_at"].dt.normalize()).dt.days,
        }
    )[(~sh["derived"]) & end_known & _in(end, window)]

    factor = stages.hygiene.time_in_stage_factor
    out = []
    for s in stages.open_stages:
        norm = stages.norm_days(s.key)
        limit = None if norm is None else norm * factor
        mask = open_deals["stage"] == s.key
        d = days_open[mask]
        done = stays.loc[stays["stage"] == s.key, "days"]
        out.append(
            TimeInStage(
                stage=s.key,
                label=s.label,
                norm_days=norm,
                limit_days=limit,
                open_count=int(mask.sum()),
                open_median_days=_stats(d)[0],
                open_outliers=0 if limit is None else int((d > limit).sum()),
                open_entry_unknown=int(d.isna().sum()),
                completed_count=len(done),
                completed_median_days=_stats(done)[0],
            )
        )
    return out


def _activities(
    tables: CanonicalTables, states: pd.DataFrame, as_of: pd.Timestamp, q_start: pd.Timestamp
) -> ActivityCounts:
    acts = scoped_events(tables.activities, "occurred_at", as_of, states["deal_id"])
    acts = acts[acts["occurred_at"] >= q_start]
    counts = acts["type"].value_counts()
    by_type = {t.value: int(counts.get(t.value, 0)) for t in ActivityType}
    weeks = ((as_of.normalize() - q_start).days + 1) / 7
    calls = by_type[ActivityType.CALL.value] + by_type[ActivityType.MEETING.value]
    return ActivityCounts(
        first_day=q_start.date(),
        last_day=as_of.date(),
        weeks=round(weeks, 2),
        by_type=by_type,
        calls_meetings=calls,
        demos=by_type[ActivityType.DEMO.value],
        proposals_sent=by_type[ActivityType.PROPOSAL.value],
        calls_meetings_per_week=_ratio(calls, weeks),
    )


def _loss_reasons(tables: CanonicalTables, lost: pd.DataFrame) -> list[LossReasonCount]:
    reasons = tables.deals.set_index("deal_id")["loss_reason"].reindex(lost["deal_id"])
    frame = pd.DataFrame(
        {"reason": reasons.fillna("unknown").to_numpy(), "amount": lost["amount"].to_numpy()}
    )
    grouped = (
        frame.groupby("reason")["amount"]
        .agg(["count", "sum"])
        .sort_values(["count", "sum"], ascending=False)
    )
    total = len(frame)
    return [
        LossReasonCount(str(r), int(row["count"]), float(row["sum"]), int(row["count"]) / total)
        for r, row in grouped.iterrows()
    ]


def _historical_forecast(
    open_closing: pd.DataFrame,
    closed_in_window: pd.DataFrame,
    reach: pd.DataFrame,
    stages: StageConfig,
    quarter: str,
    window: Window,
) -> HistoricalForecast:
    """The seed's "EUR 2M in stage 2+, historical conversion 35% -> EUR 700K"."""
    opens = stages.open_stages
    start = opens[1] if len(opens) > 1 else opens[0]
    order = {s.key: s.order for s in opens}
    pipe = open_closing[open_closing["stage"].map(order).fillna(0) >= start.order]
    value = float(pipe["amount"].sum())
    max_order = reach["_max_order"].reindex(closed_in_window["deal_id"]).fillna(0).to_numpy()
    hist = closed_in_window[max_order >= start.order]
    won_value = float(hist.loc[hist["outcome"] == Outcome.WON.value, "amount"].sum())
    rate = _ratio(won_value, float(hist["amount"].sum()))
    forecast = None if rate is None else value * rate
    rate_txt = "n/a" if rate is None else f"{rate:.0%}"
    fc_txt = "n/a" if forecast is None else f"{forecast:,.0f}"
    text = (
        f"{value:,.0f} pipeline in {start.label}+ closing {quarter}, "
        f"historical conversion {rate_txt} -> {fc_txt}"
    )
    return HistoricalForecast(start.key, quarter, len(pipe), value, rate, window, forecast, text)


# --- entry point ----------------------------------------------------------------------------
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
    as_of = pd.Timestamp(as_of)
    quarter = quarter_of(as_of)
    q_start, q_end = quarter_bounds(quarter)
    states = scoped_states(tables, stages, as_of, team=team, owner=owner)
    win = _window(as_of, window_days)
    prev = _window(as_of, window_days, back=1)
    win_info, prev_info = _window_info(win, window_days), _window_info(prev, window_days)

    open_deals = states[states["is_open"]]
    closing = open_deals[
        (open_deals["expected_close_date"] >= q_start)
        & (open_deals["expected_close_date"] <= q_end)
    ]
    closing_value = float(closing["amount"].sum())

    # coverage against target
    target, scope = _target(tables.targets, quarter, team, owner)
    won_q = states[(states["outcome"] == Outcome.WON.value) & (states["closed_at"] >= q_start)]
    won_q_value = float(won_q["amount"].sum())
    ratio = _ratio(closing_value, target) if target else None
    remaining = None if target is None else max(target - won_q_value, 0.0)
    healthy = stages.hygiene.coverage_healthy
    coverage = Coverage(
        quarter=quarter,
        target=target,
        target_scope=scope,
        pipeline_closing=closing_value,
        ratio=ratio,
        band=_coverage_band(ratio, stages),
        healthy_range=(healthy.min, healthy.max),
        won_this_quarter=won_q_value,
        remaining_target=remaining,
        ratio_to_remaining=_ratio(closing_value, remaining) if remaining else None,
    )

    # weighted pipeline
    prob = {s.key: s.win_probability for s in stages.stages}
    w_open = open_deals["amount"] * open_deals["stage"].map(prob)
    w_closing = closing["amount"] * closing["stage"].map(prob)
    w_ratio = _ratio(float(w_closing.sum()), target) if target else None
    weighted = Weighted(
        all_open=float(w_open.sum()),
        closing_this_quarter=float(w_closing.sum()),
        ratio_to_target=w_ratio,
        band=_weighted_band(w_ratio),
        target_range=WEIGHTED_TARGET_RANGE,
        unknown_stage_count=int((~open_deals["stage_known"]).sum()),
    )

    created_q = states[states["created_at"] >= q_start]

    # closed deals in the window and the one before
    closed = states[~states["is_open"]]
    cycle_days = (closed["closed_at"].dt.normalize() - closed["created_at"].dt.normalize()).dt.days
    in_win, in_prev = _in(closed["closed_at"], win), _in(closed["closed_at"], prev)
    mean_now, mean_prev = _stats(cycle_days[in_win])[1], _stats(cycle_days[in_prev])[1]
    change = None if mean_now is None or mean_prev is None else mean_now - mean_prev
    trend = None
    if change is not None and mean_prev is not None:
        if abs(change) <= TREND_TOLERANCE * mean_prev:
            trend = "stable"
        else:
            trend = "shortening" if change < 0 else "lengthening"
    velocity = Velocity(
        win_info,
        int(in_win.sum()),
        mean_now,
        prev_info,
        int(in_prev.sum()),
        mean_prev,
        change,
        trend,
    )

    closed_win = closed[in_win]
    is_won = closed_win["outcome"] == Outcome.WON.value
    won_win = closed_win[is_won]
    win_rate = Rate(
        int(is_won.sum()), len(closed_win), _ratio(int(is_won.sum()), len(closed_win)), win_info
    )

    cohort = states[_in(states["created_at"], win)]
    n_won = int((cohort["outcome"] == Outcome.WON.value).sum())
    opp_to_customer = Rate(
        n_won,
        len(cohort),
        _ratio(n_won, len(cohort)),
        win_info,
        note=f"deals created in the window; {int(cohort['is_open'].sum())} still open",
    )

    reach = stage_reach(tables, states, stages, as_of)
    conversion = _conversion(reach, states, stages)
    won_cycle = cycle_days[in_win][is_won.to_numpy()]
    median_c, mean_c = _stats(won_cycle)

    return PipelineMetrics(
        as_of=as_of.to_pydatetime(),
        quarter=quarter,
        team=team,
        owner=owner,
        open_pipeline=CountValue(len(open_deals), float(open_deals["amount"].sum())),
        closing_this_quarter=CountValue(len(closing), closing_value),
        coverage=coverage,
        weighted=weighted,
        new_pipeline=CountValue(len(created_q), float(created_q["amount"].sum())),
        velocity=velocity,
        win_rate=win_rate,
        opportunity_to_customer=opp_to_customer,
        stage_conversion=conversion,
        lead_to_opportunity=Unavailable(
            False, "needs leads (MQL/SQL) data, which the canonical model does not hold"
        ),
        average_deal_size=DealSize(
            win_info,
            len(won_win),
            float(won_win["amount"].sum()),
            _ratio(float(won_win["amount"].sum()), len(won_win)),
        ),
        sales_cycle=CycleLength(win_info, len(won_cycle), median_c, mean_c),
        time_in_stage=_time_in_stage(tables, states, stages, as_of, win),
        activities=_activities(tables, states, as_of, q_start),
        loss_reasons=_loss_reasons(tables, closed_win[~is_won]),
        funnel=_funnel(open_deals, conversion, stages),
        historical_forecast=_historical_forecast(
            closing, closed_win, reach, stages, quarter, win_info
        ),
    )
