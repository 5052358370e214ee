"""Reasons in plain words: the model's per-prediction contributions, grouped by signal.

LightGBM gives each prediction's SHAP values per feature (``pred_contrib``, log-odds). Features
that speak of one thing are summed into a group (every activity count is "activity level"; days
in stage and its ratio to the norm are "time in stage"), and each group is rendered from the
deal's own signal values, in a rep's words: "no activity for 41 days", "champion identified",
"close date pushed 3 times (95 days in all)". Renderers are a registry of small functions, one
per group; a feature no group claims (a custom column) gets a generic phrase from its values.

Reasons never name people or deals: renderers read signal values only, and identifiers are never
features (:mod:`training.datasets`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.data.schema import CUSTOM_PREFIX
from features.data.stages import StageConfig
from features.signals import SIGNALS

Values = Mapping[str, Any]
Render = Callable[[Values, StageConfig], str]


@dataclass(frozen=True)
class ReasonGroup:
    name: str
    signals: tuple[str, ...]
    render: Render


GROUPS: dict[str, ReasonGroup] = {}
# Contributions smaller than this (log-odds) are not worth a reason.
MIN_EFFECT = 0.05


def reason(name: str, *signals: str) -> Callable[[Render], Render]:
    """Register the renderer of a reason group made of ``signals``."""

    def register(fn: Render) -> Render:
        GROUPS[name] = ReasonGroup(name, signals, fn)
        return fn

    return register


def _num(values: Values, key: str) -> float:
    v = values.get(key)
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
    return f


def _days(n: float) -> str:
    return f"{n:.0f} day" + ("" if round(n) == 1 else "s")


def _times(n: float) -> str:
    return "once" if round(n) == 1 else f"{n:.0f} times"


def _stage_label(values: Values, stages: StageConfig) -> str:
    key = values.get("stage")
    if isinstance(key, str) and key in stages.by_key:
        return stages.stage(key).label
    return "an unknown stage"


@reason("activity_recency", "days_since_last_activity", "days_since_last_touch")
def _recency(v: Values, stages: StageConfig) -> str:
    d, touch = _num(v, "days_since_last_activity"), _num(v, "days_since_last_touch")
    untouched = f"; nothing logged for {_days(touch)}" if touch >= 14 else ""
    if math.isnan(d):
        return f"no activity logged yet{untouched}"
    if d >= 14:
        return f"no activity for {_days(d)}{untouched}"
    return "activity today" if d < 1 else f"last activity {_days(d)} ago"


_ACTIVITY = tuple(s for s in SIGNALS if s.startswith("activities_"))


@reason("activity_level", *_ACTIVITY)
def _activity_level(v: Values, stages: StageConfig) -> str:
    n30, n90 = _num(v, "activities_total_30d"), _num(v, "activities_total_90d")
    if math.isnan(n30):
        return "activity level unknown"
    kinds = [
        t
        for t in ("meeting", "demo", "site_visit", "proposal")
        if _num(v, f"activities_{t}_30d") > 0
    ]
    extra = f", including {' and '.join(k.replace('_', ' ') for k in kinds)}" if kinds else ""
    return f"{n30:.0f} activities in the last 30 days ({n90:.0f} in 90){extra}"


@reason("time_in_stage", "days_in_stage", "stage_norm_ratio", "stage_entry_known")
def _time_in_stage(v: Values, stages: StageConfig) -> str:
    d, r = _num(v, "days_in_stage"), _num(v, "stage_norm_ratio")
    if math.isnan(d):
        return "time in stage unknown (no stage history)"
    ratio = "" if math.isnan(r) else f", {r:.1f}x the stage norm"
    return f"{_days(d)} in {_stage_label(v, stages)}{ratio}"


@reason("stage", "stage", "stage_order", "stage_win_probability", "stage_known")
def _stage(v: Values, stages: StageConfig) -> str:
    return f"in {_stage_label(v, stages)}"


@reason("deal_age", "deal_age_days")
def _age(v: Values, stages: StageConfig) -> str:
    return f"open for {_days(_num(v, 'deal_age_days'))}"


@reason("champion", "champion_identified")
def _champion(v: Values, stages: StageConfig) -> str:
    return (
        "champion identified" if _num(v, "champion_identified") == 1 else "no champion identified"
    )


@reason("decision_maker", "decision_maker_engaged")
def _decision_maker(v: Values, stages: StageConfig) -> str:
    engaged = _num(v, "decision_maker_engaged") == 1
    return "decision maker engaged" if engaged else "no decision maker engaged"


@reason("buying_committee", "n_stakeholders", "stakeholder_roles")
def _committee(v: Values, stages: StageConfig) -> str:
    n, r = _num(v, "n_stakeholders"), _num(v, "stakeholder_roles")
    return f"{n:.0f} stakeholder{'s' if n != 1 else ''} in {r:.0f} role{'s' if r != 1 else ''}"


@reason("competition", "competitor_present")
def _competition(v: Values, stages: StageConfig) -> str:
    return (
        "a competitor is in the deal"
        if _num(v, "competitor_present") == 1
        else "no competitor known"
    )


@reason("amount", "amount", "amount_log1p", "amount_change_count", "amount_change_since_creation")
def _amount(v: Values, stages: StageConfig) -> str:
    a, k, rel = (
        _num(v, "amount"),
        _num(v, "amount_change_count"),
        _num(v, "amount_change_since_creation"),
    )
    text = "amount unknown" if math.isnan(a) else f"amount {a:,.0f}"
    if k > 0 and not math.isnan(rel):
        text += f" (changed {_times(k)}, {rel:+.0%} since creation)"
    return text


@reason("close_date_pushes", "close_date_push_count", "close_date_slip_days")
def _pushes(v: Values, stages: StageConfig) -> str:
    k, d = _num(v, "close_date_push_count"), _num(v, "close_date_slip_days")
    if math.isnan(k):
        return "close-date history unknown"
    if k == 0:
        return "close date never pushed"
    return f"close date pushed {_times(k)} ({_days(d)} in all)"


@reason("expected_close", "days_to_expected_close")
def _expected_close(v: Values, stages: StageConfig) -> str:
    d = _num(v, "days_to_expected_close")
    if math.isnan(d):
        return "no expected close date"
    if d < 0:
        return f"expected close date {_days(-d)} in the past"
    return f"expected to close in {_days(d)}"


@reason("quarter_timing", "days_left_in_quarter")
def _quarter(v: Values, stages: StageConfig) -> str:
    return f"{_days(_num(v, 'days_left_in_quarter'))} left in the quarter"


@reason("next_step", "next_step_defined", "days_to_next_step")
def _next_step(v: Values, stages: StageConfig) -> str:
    defined, d = _num(v, "next_step_defined"), _num(v, "days_to_next_step")
    if math.isnan(defined):
        return "next step unknown"
    if defined != 1:
        return "no next step written down"
    if math.isnan(d):
        return "next step without a date"
    return f"next step {_days(-d)} overdue" if d < 0 else f"next step due in {_days(d)}"


@reason("forecast_category", "forecast_category", "forecast_category_mean")
def _category(v: Values, stages: StageConfig) -> str:
    c = v.get("forecast_category")
    if not isinstance(c, str):
        return "forecast category unknown"
    text = f"forecast category '{c.replace('_', ' ')}'"
    mean = _num(v, "forecast_category_mean")
    return text if math.isnan(mean) else f"{text} (its categories so far average {mean:.0%})"


@reason("pace", "stage_pace")
def _pace(v: Values, stages: StageConfig) -> str:
    p = _num(v, "stage_pace")
    if math.isnan(p):
        return "no earlier stage to measure its pace"
    return f"reached {_stage_label(v, stages)} in {p:.1f}x the norm of the stages before"


def _conversion(skill: float) -> str:
    if math.isnan(skill):
        return ""
    side = "above" if skill >= 0 else "below"
    return f", stage conversion {side} the company's"


@reason(
    "rep_record",
    "owner_win_rate",
    "owner_median_cycle_days",
    "owner_n_closed",
    "owner_advance_skill",
    "owner_win_rate_vs_company",
    "owner_cycle_vs_company",
)
def _rep(v: Values, stages: StageConfig) -> str:
    conversion = _conversion(_num(v, "owner_advance_skill"))
    return f"the rep's win rate is {_num(v, 'owner_win_rate'):.0%}{conversion}"


@reason(
    "team_record",
    "team_win_rate",
    "team_median_cycle_days",
    "team_n_closed",
    "team_advance_skill",
    "team_win_rate_vs_company",
    "team_cycle_vs_company",
)
def _team(v: Values, stages: StageConfig) -> str:
    conversion = _conversion(_num(v, "team_advance_skill"))
    return f"the team's win rate is {_num(v, 'team_win_rate'):.0%}{conversion}"


@reason("segment", "segment")
def _segment(v: Values, stages: StageConfig) -> str:
    return f"segment {v.get('segment')}"


@reason("product", "product")
def _product(v: Values, stages: StageConfig) -> str:
    return f"product {v.get('product')}"


@reason("data_coverage", "history_known", "field_changes_known")
def _coverage(v: Values, stages: StageConfig) -> str:
    if _num(v, "field_changes_known") == 0 or _num(v, "history_known") == 0:
        return "its change history was not exported"
    return "full change history"


def group_of(feature: str) -> str:
    """The reason group a feature belongs to (a custom column is its own group)."""
    for group in GROUPS.values():
        if feature in group.signals:
            return group.name
    return feature


def _generic(feature: str, values: Values, dates: frozenset[str]) -> str:
    name = feature.removeprefix(CUSTOM_PREFIX).replace("_", " ")
    value = values.get(feature)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{name} not known"
    if feature in dates:  # encoded as days since the date
        return f"{name}: {_days(float(value))} ago"
    if isinstance(value, int | float | np.floating):
        return f"{name}: {float(value):,.4g}"
    return f"{name}: {value}"


def render(
    group: str, values: Values, stages: StageConfig, dates: frozenset[str] = frozenset()
) -> str:
    """The words of one reason group for one deal; ``dates`` are date-valued custom columns."""
    spec = GROUPS.get(group)
    return spec.render(values, stages) if spec else _generic(group, values, dates)


def grouped_contributions(contrib: pd.DataFrame) -> pd.DataFrame:
    """Sum per-feature contributions into reason groups (the bias column is dropped)."""
    cols = [c for c in contrib.columns if c != "bias"]
    groups = [group_of(c) for c in cols]
    return contrib[cols].T.groupby(groups, sort=False).sum().T


def reasons(
    contrib: pd.DataFrame,
    values: pd.DataFrame,
    stages: StageConfig,
    *,
    top: int = 3,
    dates: frozenset[str] = frozenset(),
) -> tuple[list[list[str]], list[list[str]]]:
    """Top positive and negative reasons per row, strongest first.

    ``contrib`` holds per-feature contributions, ``values`` the rows' signal values (for the
    words; encoded date columns as days since).
    """
    grouped = grouped_contributions(contrib)
    names = np.asarray(grouped.columns)
    mat = grouped.to_numpy()
    records: list[dict[str, Any]] = [
        {str(k): v for k, v in r.items()} for r in values.to_dict(orient="records")
    ]
    pos: list[list[str]] = []
    neg: list[list[str]] = []
    for i, row in enumerate(mat):
        order = np.argsort(-row)
        up = [names[j] for j in order[:top] if row[j] >= MIN_EFFECT]
        down = [names[j] for j in order[::-1][:top] if row[j] <= -MIN_EFFECT]
        pos.append([render(g, records[i], stages, dates) for g in up])
        neg.append([render(g, records[i], stages, dates) for g in down])
    return pos, neg
