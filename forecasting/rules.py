"""The rule-based forecasts managers use today, and the actual they are scored against.

Each rule is a small registered function of the same inputs (the pipeline metrics as of a date and
the open deals then), so the forecast and the backtest show every method on the same pipeline.
Every rule forecasts the quarter's total: what is already won this quarter plus its view of the
open pipeline. The facts come from :func:`features.pipeline.metrics.compute_metrics` (won so far,
weighted pipeline closing this quarter, historical conversion); none is computed a second time.

The actual of a quarter is what ``compute_metrics`` calls "won this quarter" as of the quarter's
last instant: the amount (as of close) of the deals closed won within the quarter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from features.data.calendar import quarter_bounds
from features.data.schema import CanonicalTables, ForecastCategory
from features.data.stages import StageConfig
from features.pipeline.metrics import PipelineMetrics, compute_metrics
from features.signals.snapshots import data_end


@dataclass(frozen=True)
class RuleInputs:
    """What every rule may read: the metrics as of the date and the open deals then."""

    metrics: PipelineMetrics
    open_deals: pd.DataFrame

    @property
    def won_so_far(self) -> float:
        return float(self.metrics.coverage.won_this_quarter)

    def closing(self) -> pd.DataFrame:
        """Open deals whose expected close date falls in the quarter (as the metrics count them)."""
        start, end = quarter_bounds(self.metrics.quarter)
        ecd = pd.to_datetime(self.open_deals["expected_close_date"])
        return self.open_deals[(ecd >= start) & (ecd <= end)]

    def category_value(self, *categories: ForecastCategory) -> float:
        deals = self.closing()
        keep = deals["forecast_category"].isin([c.value for c in categories])
        return float(deals.loc[keep, "amount"].fillna(0.0).sum())


Rule = Callable[[RuleInputs], float | None]
RULES: dict[str, Rule] = {}


def rule(name: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        RULES[name] = fn
        return fn

    return register


@rule("stage_weighted")
def stage_weighted(x: RuleInputs) -> float | None:
    """Won so far + open pipeline closing this quarter x the stage's win probability."""
    return x.won_so_far + float(x.metrics.weighted.closing_this_quarter)


@rule("commit")
def commit(x: RuleInputs) -> float | None:
    """Won so far + the deals the reps commit for this quarter."""
    return x.won_so_far + x.category_value(ForecastCategory.COMMIT)


@rule("best_case")
def best_case(x: RuleInputs) -> float | None:
    """Won so far + commit + best case closing this quarter."""
    return x.won_so_far + x.category_value(ForecastCategory.COMMIT, ForecastCategory.BEST_CASE)


@rule("historical_conversion")
def historical_conversion(x: RuleInputs) -> float | None:
    """Won so far + stage 2+ pipeline closing this quarter x last year's value conversion."""
    fc = x.metrics.historical_forecast.forecast
    return None if fc is None else x.won_so_far + float(fc)


def rule_forecasts(metrics: PipelineMetrics, open_deals: pd.DataFrame) -> dict[str, float | None]:
    """Every registered rule's forecast of the quarter's total."""
    inputs = RuleInputs(metrics, open_deals)
    return {name: fn(inputs) for name, fn in RULES.items()}


def actual(
    tables: CanonicalTables,
    stages: StageConfig,
    quarter: str,
    *,
    team: str | None = None,
    owner: str | None = None,
) -> float | None:
    """What the quarter closed won (None while the data does not cover its end)."""
    end = quarter_bounds(quarter)[1]
    if end > data_end(tables):
        return None
    metrics = compute_metrics(tables, stages, end, team=team, owner=owner)
    return float(metrics.coverage.won_this_quarter)


def week_as_of(quarter: str, week: int) -> pd.Timestamp:
    """The end of the ``week``-th week of a quarter (week 1 ends on the quarter's 7th day)."""
    start = quarter_bounds(quarter)[0]
    return start + pd.Timedelta(days=7 * week) - pd.Timedelta(microseconds=1)


def week_of_quarter(as_of: pd.Timestamp) -> int:
    """Which week of its quarter ``as_of`` falls in (1-based)."""
    start = pd.Timestamp(as_of).to_period("Q").start_time
    return int((pd.Timestamp(as_of) - start).days // 7) + 1
