"""Backtest: every method, every past quarter, several weeks into it, scored against the actual.

For each quarter and week of quarter the pipeline is rebuilt as it stood then, scored by a scorer
fitted before the quarter began (retrained per quarter), the Bayesian layer is fitted on earlier
quarters with outcomes known at that date only, and every method forecasts the quarter's total.
Point forecasts are scored by absolute % error; distributions by CRPS, pinball loss (mean over
P10, P50, P90) and whether P10-P90 held the actual. A point forecast's CRPS is its absolute error
(the CRPS of a distribution with all its mass on one value), so all methods share one scale.

Eight quarters make a noisy median: pipecast is also compared with each rule quarter by quarter
(:func:`versus_rules`), with a paired bootstrap interval on the gap between their medians, so a
table that reads "11.6% against 10.2%" says too whether that gap is more than the quarters' luck.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.data.calendar import quarter_bounds
from features.data.schema import CanonicalTables
from features.data.stages import StageConfig
from features.errors import InputError
from features.pipeline.metrics import jsonable
from features.signals.snapshots import data_end
from forecasting.forecast import Forecast, ForecastEngine, run_forecast
from forecasting.history import ScorerCache
from forecasting.model import ModelConfig
from forecasting.rules import RULES, actual, week_as_of
from forecasting.scoring import ScorerFactory
from forecasting.simulate import SimOptions

DISTRIBUTIONS = ("pipecast", "independent_stage_sim")
# pipecast's model simulated without the quarter effect and parameter uncertainty (--ablation)
ABLATED = "pipecast_no_quarter_effect"
PINBALL_LEVELS = (0.1, 0.5, 0.9)
GAP_LEVEL = 0.9  # the paired bootstrap interval of pipecast's median error minus a rule's
GAP_RESAMPLES = 4000
# Under six quarters the resampled medians take too few values for an interval to mean much
# (four quarters: 35 distinct resamples); the gap is then given without one.
GAP_MIN_QUARTERS = 6
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class BacktestRow:
    quarter: str
    week: int
    as_of: str
    method: str
    point: float | None
    p10: float | None
    p90: float | None
    actual: float
    abs_pct_error: float | None
    crps: float | None
    pinball: float | None
    covered: bool | None


@dataclass(frozen=True)
class BacktestResult:
    rows: list[BacktestRow]
    summary: dict[str, Any]
    forecasts: list[Forecast]

    def to_dict(self) -> dict[str, Any]:
        return {"rows": jsonable(self.rows), "summary": jsonable(self.summary)}

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame([r.__dict__ for r in self.rows])


def quarter_range(spec: str) -> list[str]:
    """``2024Q1..2025Q3`` -> every quarter from the first to the last (or one quarter)."""
    first, _, last = spec.partition("..")
    last = last or first
    for part in (first, last):
        if not re.fullmatch(r"\d{4}Q[1-4]", part.strip()):
            raise InputError(f"--quarters: {part!r} is not a quarter like 2025Q1 (use A..B)")
    try:
        periods = pd.period_range(pd.Period(first, "Q"), pd.Period(last, "Q"), freq="Q")
    except ValueError as err:
        raise InputError(f"--quarters: cannot read {spec!r} as A..B quarters: {err}") from None
    if len(periods) == 0:
        raise InputError(f"--quarters: {spec!r} is empty (is the first after the last?)")
    return [f"{p.year}Q{p.quarter}" for p in periods]


def default_quarters(tables: CanonicalTables, n: int = 8) -> list[str]:
    """The last ``n`` quarters whose end the data covers."""
    end = pd.Period(data_end(tables), "Q")
    if end.end_time > data_end(tables):
        end -= 1
    return [f"{p.year}Q{p.quarter}" for p in pd.period_range(end - (n - 1), end, freq="Q")]


def _crps(values: np.ndarray, obs: float) -> float:
    import scoringrules as sr

    return float(sr.crps_ensemble(obs, values))


def _pinball(values: np.ndarray, obs: float) -> float:
    import scoringrules as sr

    qs = np.quantile(values, PINBALL_LEVELS)
    return float(
        np.mean([sr.quantile_score(obs, q, a) for q, a in zip(qs, PINBALL_LEVELS, strict=True)])
    )


def _ape(point: float | None, obs: float) -> float | None:
    if point is None or obs == 0:
        return None
    return abs(point - obs) / abs(obs)


def score_forecast(fc: Forecast, week: int, obs: float) -> list[BacktestRow]:
    """One row per method of one forecast."""
    rows = []
    dists = [("pipecast", fc.scenarios), ("independent_stage_sim", fc.independent_scenarios)]
    if fc.ablated_scenarios is not None:
        dists.append((ABLATED, fc.ablated_scenarios))
    for method, values in dists:
        p10, p50, p90 = (float(v) for v in np.quantile(values, (0.1, 0.5, 0.9)))
        rows.append(
            BacktestRow(
                fc.quarter, week, fc.as_of, method, p50, p10, p90, obs, _ape(p50, obs),
                _crps(values, obs), _pinball(values, obs), bool(p10 <= obs <= p90),
            )
        )  # fmt: skip
    for method, point in fc.rules.items():
        err = None if point is None else abs(point - obs)
        rows.append(
            BacktestRow(
                fc.quarter, week, fc.as_of, method, point, None, None, obs, _ape(point, obs),
                err, err, None,
            )
        )  # fmt: skip
    return rows


def summarise(rows: list[BacktestRow]) -> dict[str, Any]:
    frame = pd.DataFrame([r.__dict__ for r in rows])
    methods = [*DISTRIBUTIONS, *RULES]
    if (frame["method"] == ABLATED).any():
        methods.append(ABLATED)
    pc = frame[frame["method"] == "pipecast"]
    ind = frame[frame["method"] == "independent_stage_sim"]
    abl = frame[frame["method"] == ABLATED]
    mape: dict[str, dict[str, float | None]] = {}
    crps_by_week: dict[str, dict[str, float | None]] = {}
    for week, group in frame.groupby("week"):
        by_method = {m: group.loc[group["method"] == m] for m in methods}
        mape[str(week)] = {m: _median(g["abs_pct_error"]) for m, g in by_method.items()}
        crps_by_week[str(week)] = {m: _mean(g["crps"]) for m, g in by_method.items()}
    crps = {m: _mean(frame.loc[frame["method"] == m, "crps"]) for m in methods}
    return {
        "quarters": int(frame["quarter"].nunique()),
        "weeks": sorted(int(w) for w in frame["week"].unique()),
        "quarter_weeks": len(pc),
        "coverage_p10_p90": _mean(pc["covered"].astype(float)),
        "coverage_p10_p90_independent": _mean(ind["covered"].astype(float)),
        "coverage_p10_p90_no_quarter_effect": _mean(abl["covered"].astype(float)),
        "median_abs_pct_error": mape,
        "mean_crps": crps,
        "mean_crps_by_week": crps_by_week,
        "mean_pinball": {m: _mean(frame.loc[frame["method"] == m, "pinball"]) for m in methods},
        "crps_vs_independent": _relative(crps.get("pipecast"), crps.get("independent_stage_sim")),
        "vs_rules": versus_rules(frame),
    }


def versus_rules(frame: pd.DataFrame) -> dict[str, dict[str, dict[str, Any]]]:
    """Week -> rule -> pipecast against the rule on the quarters both forecast: ``gap``, the
    median of pipecast's absolute % errors minus the rule's (negative: pipecast lower);
    ``gap_low``/``gap_high``, its paired bootstrap interval (quarters resampled with their two
    errors together, level :data:`GAP_LEVEL`; None under :data:`GAP_MIN_QUARTERS` quarters);
    ``better``, the quarters where pipecast's error was lower; ``sign_p``, the two-sided sign
    test of that count; and ``verdict``: ``lower`` or ``higher`` when the interval excludes zero,
    ``tie`` when it holds it, ``too few quarters`` without one."""
    from scipy import stats

    errors = frame.pivot_table(
        index=["week", "quarter"], columns="method", values="abs_pct_error", aggfunc="first"
    )
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for week, table in errors.groupby(level="week"):
        by_rule: dict[str, dict[str, Any]] = {}
        for rule in RULES:
            if "pipecast" not in table or rule not in table:
                continue
            both = table[["pipecast", rule]].dropna()
            if both.empty:
                continue
            ours, theirs = both["pipecast"].to_numpy(), both[rule].to_numpy()
            gap = float(np.median(ours) - np.median(theirs))
            low = high = None
            if len(both) >= GAP_MIN_QUARTERS:
                ci = stats.bootstrap(
                    (ours, theirs),
                    _median_gap,
                    paired=True,
                    vectorized=True,
                    confidence_level=GAP_LEVEL,
                    method="percentile",
                    n_resamples=GAP_RESAMPLES,
                    rng=np.random.default_rng(0),
                ).confidence_interval
                low, high = float(ci.low), float(ci.high)
            better, worse = int((ours < theirs).sum()), int((ours > theirs).sum())
            if low is None or high is None:
                verdict = "too few quarters"
            else:
                verdict = "lower" if high < 0 else "higher" if low > 0 else "tie"
            by_rule[rule] = {
                "quarters": len(both),
                "gap": gap,
                "gap_low": low,
                "gap_high": high,
                "better": better,
                "sign_p": float(stats.binomtest(better, better + worse).pvalue)
                if better + worse
                else None,
                "verdict": verdict,
            }
        out[str(week)] = by_rule
    return out


def _median_gap(ours: np.ndarray, theirs: np.ndarray, axis: int = -1) -> np.ndarray:
    out: np.ndarray = np.median(ours, axis=axis) - np.median(theirs, axis=axis)
    return out


def _relative(a: float | None, b: float | None) -> float | None:
    """a / b - 1 (how much lower or higher a is than b)."""
    return None if a is None or not b else a / b - 1.0


def _median(s: pd.Series) -> float | None:
    s = s.dropna()
    return None if s.empty else float(s.median())


def _mean(s: pd.Series) -> float | None:
    s = s.dropna()
    return None if s.empty else float(s.mean())


def run_backtest(
    tables: CanonicalTables,
    stages: StageConfig,
    *,
    quarters: list[str],
    weeks: list[int],
    factory: ScorerFactory,
    config: ModelConfig | None = None,
    options: SimOptions | None = None,
    progress: Progress | None = None,
    ablation: bool = False,
) -> BacktestResult:
    """Forecast each quarter at each week with models fitted strictly before, and score."""
    end = data_end(tables)
    late = [q for q in quarters if quarter_bounds(q)[1] > end]
    if late:
        raise InputError(
            f"--quarters: {', '.join(late)} not over by the end of the data ({end:%Y-%m-%d}); "
            "a backtest needs each quarter's actual"
        )
    bad = [w for w in weeks if not 1 <= w <= 13]
    if bad:
        raise InputError(f"--weeks: {bad} outside 1..13")
    engine = ForecastEngine(
        tables, stages, ScorerCache(factory), config or ModelConfig(), options or SimOptions()
    )
    rows: list[BacktestRow] = []
    forecasts: list[Forecast] = []
    total, done = len(quarters) * len(weeks), 0
    for quarter in quarters:
        obs = actual(tables, stages, quarter)
        assert obs is not None  # checked above: the data covers the quarter's end
        for week in weeks:
            if progress is not None:
                progress(done, total, f"{quarter} week {week}")
            fc = run_forecast(
                engine, week_as_of(quarter, week), with_actual=False, ablation=ablation
            )
            forecasts.append(fc)
            rows.extend(score_forecast(fc, week, obs))
            done += 1
    if progress is not None:
        progress(done, total, "done")
    return BacktestResult(rows, summarise(rows), forecasts)
