"""Training rows: weekly snapshots, labels as known at a cut-off, time windows and the leak guard.

A model trained at a cut-off may only know what was known then. So the labels of a snapshot row
are read **at the cut-off**: a deal closed after it counts as still open (censored), even in rows
from long before, exactly as it would have looked when a model was trained in production. The
data-end labels that :func:`features.signals.snapshots.build_snapshots` attaches are dropped on
arrival; :func:`labels_at` is the one place here that reads outcomes.

**Censoring.** ``P(win)`` is "won within ``horizon_days`` of as-of" (practically: eventually). A
row is labelled when its deal closed by the cut-off, or when the cut-off is at least the horizon
after as-of (then "not won within the horizon" is known too). Rows near the cut-off are labelled
only if their deal closed quickly, and quick closes are mostly losses: dropping the others would
bias every window toward its fast deals. Each labelled row is therefore weighted by the inverse
probability that its label could be seen (IPCW, Graf et al. 1999): ``1 / G(t)``, where ``t`` is
its close time (capped at the horizon) and ``G(t)`` the share of the window's rows followed up for
at least ``t`` days. The follow-up of a row is fixed by the calendar (cut-off minus as-of), so
``G`` is known exactly, not estimated. It needs windows longer than the horizon; the defaults are.

**Quarter labels** ("won by the end of the snapshot's quarter", for the slip model) are used only
where the quarter ended by the cut-off, so no weighting is needed.

**The leak guard.** :func:`check_feature_columns` refuses any column known only after as-of
(outcome, close date, loss reason, final stage, labels) and raw identifiers;
:func:`check_feature_values` refuses values that only a closed deal can carry on a row whose deal
was open (a ``closed`` forecast category, a closed stage): both would teach a model the answer.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.data.calendar import to_timestamp
from features.data.schema import CanonicalTables, ForecastCategory, Outcome
from features.data.stages import StageConfig
from features.errors import NotEnoughDataError
from features.signals.snapshots import LABELS, build_snapshots
from training.config import TrainingConfig
from training.errors import LeakageError

Progress = Callable[[str, int, int], None]

KEYS = ("deal_id", "as_of")
# Never features: people enter through their point-in-time track record instead.
IDENTIFIERS = frozenset({"deal_id", "account", "owner", "team", "contact_id", "activity_id"})
# Known only once the deal is over (or written at the close in real exports).
POST_OUTCOME = frozenset(
    {
        "outcome",
        "closed_at",
        "loss_reason",
        "final_stage",
        "final_amount",
        "final_outcome",
        "stage_at_close",
        "is_open",
        "observed_at",
        *LABELS,
        # the label columns of this module
        "won_h",
        "weight",
        "won_by_quarter_end",
        "follow_up_days",
        "closed_days",
        "won_by_cutoff",
    }
)


def check_feature_columns(columns: Iterable[str]) -> None:
    """Refuse identifiers and columns known only after as-of, naming each one."""
    cols = list(columns)
    leaks = [c for c in cols if c in POST_OUTCOME or c.removeprefix("custom_") in POST_OUTCOME]
    ids = [c for c in cols if c in IDENTIFIERS]
    if leaks:
        raise LeakageError(
            f"refusing feature column(s) {leaks}: known only after as-of (the outcome, the close "
            "or a label); a model trained on them would learn the answer"
        )
    if ids:
        raise LeakageError(
            f"refusing identifier column(s) {ids} as features: people and deals enter through "
            "their point-in-time signals (track record), not their names"
        )


def check_feature_values(rows: pd.DataFrame, stages: StageConfig) -> None:
    """Refuse values only a closed deal carries, on rows of deals open at as-of.

    A real export whose history does not cover a field gives its final value to every earlier
    date: a ``closed`` forecast category before the close is the outcome itself.
    """
    problems = []
    if "forecast_category" in rows:
        closed = rows["forecast_category"].astype(object) == ForecastCategory.CLOSED.value
        if closed.any():
            first = rows.loc[closed].iloc[0]
            problems.append(
                f"{int(closed.sum()):,} row(s) of open deals have forecast_category "
                f"'{ForecastCategory.CLOSED.value}' (first: deal {first['deal_id']} as of "
                f"{first['as_of']:%Y-%m-%d})"
            )
    if "stage" in rows:
        ended = rows["stage"].astype(object).isin([stages.won_key, stages.lost_key])
        if ended.any():
            problems.append(f"{int(ended.sum()):,} row(s) of open deals are in a closed stage")
    if problems:
        raise LeakageError(
            "snapshot values known only after the close: "
            + "; ".join(problems)
            + ". The export's field history does not cover these fields, so the deals' final "
            "values were used for earlier dates; fix the history (or the mapping) first"
        )


# --- snapshots ------------------------------------------------------------------------------------
def first_snapshot_date(tables: CanonicalTables, config: TrainingConfig) -> pd.Timestamp:
    """The first snapshot: ``warmup_days`` after the first deal was created."""
    created = pd.to_datetime(tables.deals["created_at"]).min()
    if pd.isna(created):
        raise NotEnoughDataError("the store has no deals")
    return to_timestamp((created + pd.Timedelta(days=config.warmup_days)).date())


def snapshot_rows(
    tables: CanonicalTables,
    stages: StageConfig,
    *,
    start: pd.Timestamp,
    end: pd.Timestamp,
    config: TrainingConfig,
    custom: Iterable[str] = (),
    progress: Progress | None = None,
) -> pd.DataFrame:
    """Point-in-time signals of every open deal at each snapshot date in [start, end].

    The data-end labels of the snapshots are dropped here: labels depend on the cut-off.
    """

    def tick(done: int, total: int) -> None:
        if progress is not None:
            progress("snapshots", done, total)

    frame = build_snapshots(
        tables,
        stages,
        start=start,
        end=end,
        freq=config.freq,
        custom=custom,
        static_custom=config.static_custom,
        progress=tick,
    )
    return frame.drop(columns=[c for c in LABELS if c in frame.columns])


# --- labels at a cut-off --------------------------------------------------------------------------
def _day(values: pd.Series | pd.Index | np.ndarray) -> np.ndarray:
    """Whole days since the epoch (dates as integers; NaT becomes NaN)."""
    stamps = pd.to_datetime(pd.Series(values)).astype("datetime64[us]")
    days = stamps.dt.normalize().to_numpy().astype("datetime64[D]").astype("float64")
    return np.where(stamps.isna().to_numpy(), np.nan, days)


def labels_at(
    keys: pd.DataFrame,
    deals: pd.DataFrame,
    cutoff: pd.Timestamp,
    *,
    horizon_days: int,
    min_survival: float = 0.05,
) -> pd.DataFrame:
    """Labels of (deal_id, as_of) rows as known at ``cutoff``, with censoring weights.

    Columns: ``won_h`` (1 won within the horizon, 0 not, NaN unknown at the cut-off),
    ``weight`` (IPCW, 0 where unknown), ``closed_days`` (days from as-of to the close if it
    happened by the cut-off), ``follow_up_days`` (cut-off minus as-of) and
    ``won_by_cutoff`` (1 if the deal was won by the cut-off) and ``won_by_quarter_end`` (NaN
    unless the snapshot's quarter ended by the cut-off).
    """
    cur = deals.set_index("deal_id")
    ids = keys["deal_id"].to_numpy()
    closed_at = pd.to_datetime(cur["closed_at"].reindex(ids).to_numpy()).astype("datetime64[us]")
    known = np.asarray(closed_at <= cutoff)  # NaT compares False: open at the cut-off
    won = known & (cur["outcome"].reindex(ids).to_numpy() == Outcome.WON.value)
    as_of = pd.to_datetime(keys["as_of"]).astype("datetime64[us]").reset_index(drop=True)
    as_day = _day(as_of)
    follow = _day(np.repeat(np.datetime64(cutoff, "us"), len(keys))) - as_day
    closed_days = np.where(known, _day(closed_at) - as_day, np.nan)

    h = float(horizon_days)
    observed = known | (follow >= h)
    won_h = np.where(observed, (won & (closed_days <= h)).astype("float64"), np.nan)
    # Time at which the row's label became certain: its close, or the horizon.
    settled = np.where(known & (closed_days <= h), closed_days, h)
    survival = censoring_survival(follow, settled)
    weight = np.where(observed, 1.0 / np.maximum(survival, min_survival), 0.0)

    quarter_end = as_of.dt.to_period("Q").dt.end_time.astype("datetime64[us]")
    by_quarter = won & np.asarray(closed_at <= quarter_end.to_numpy())
    quarter_known = (quarter_end <= cutoff).to_numpy()
    return pd.DataFrame(
        {
            "won_h": won_h,
            "weight": weight,
            "closed_days": closed_days,
            "follow_up_days": follow,
            "won_by_cutoff": won.astype("float64"),
            "won_by_quarter_end": np.where(quarter_known, by_quarter.astype("float64"), np.nan),
        }
    )


def censoring_survival(follow_up: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``G(t)``: the share of rows whose follow-up is at least ``t`` days (per query ``t``)."""
    ordered = np.sort(follow_up[~np.isnan(follow_up)])
    if len(ordered) == 0:
        return np.ones(len(t))
    return 1.0 - np.searchsorted(ordered, t, side="left") / len(ordered)


# --- windows --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Window:
    """Snapshot dates in [start, end] whose labels are read at ``label_cutoff``."""

    name: str
    start: pd.Timestamp
    end: pd.Timestamp
    label_cutoff: pd.Timestamp

    def select(self, rows: pd.DataFrame) -> pd.DataFrame:
        mask = (rows["as_of"] >= self.start) & (rows["as_of"] <= self.end)
        return rows.loc[mask].reset_index(drop=True)

    def as_dict(self) -> dict[str, str]:
        return {
            "start": f"{self.start:%Y-%m-%d}",
            "end": f"{self.end:%Y-%m-%d}",
            "labels_known_at": f"{self.label_cutoff:%Y-%m-%d}",
        }


@dataclass(frozen=True)
class TimeSplit:
    """``base``: the snapshots before the ``calibration`` window (labels at its start);
    ``folds``: the calibration window cut in consecutive parts, each scored out of time by the
    recipe fitted on the snapshots before it (labels at the fold's start; see
    :mod:`training.calibration`), its own labels read at the cut-off."""

    base: Window
    calibration: Window
    folds: tuple[Window, ...] = ()
    notes: tuple[str, ...] = ()


def split_before(first: pd.Timestamp, cutoff: pd.Timestamp, config: TrainingConfig) -> TimeSplit:
    """Base and calibration windows for a model trained at ``cutoff``.

    The calibration window is the last ``calibration_weeks`` before the cut-off; with less
    history it shrinks (keeping ``min_base_weeks`` for the base) and says so. The base window's
    labels are read at its own end, so no deal is labelled in both windows.
    """
    span_weeks = (cutoff - first).days / 7
    if span_weeks < config.min_base_weeks + 8:
        raise NotEnoughDataError(
            f"training at {cutoff:%Y-%m-%d} needs at least {config.min_base_weeks + 8} weeks of "
            f"snapshots after {first:%Y-%m-%d}; there are {span_weeks:.0f}"
        )
    cal_weeks = min(config.calibration_weeks, int(span_weeks - config.min_base_weeks))
    notes = []
    if cal_weeks < config.calibration_weeks:
        notes.append(
            f"calibration window shortened to {cal_weeks} weeks (configured "
            f"{config.calibration_weeks}): less history than configured"
        )
    if cal_weeks * 7 <= config.horizon_days:
        notes.append(
            f"calibration window ({cal_weeks} weeks) is not longer than the {config.horizon_days}"
            "-day horizon: deals slower than the window are under-represented in calibration"
        )
    t1 = cutoff - pd.Timedelta(weeks=cal_weeks)
    base = Window("base", first, t1 - pd.Timedelta(microseconds=1), t1)
    calibration = Window("calibration", t1, cutoff, cutoff)
    # Consecutive folds of equal length, each at least 4 weeks.
    n = max(1, min(config.calibration_folds, cal_weeks // 4))
    edges = [t1 + (cutoff - t1) * j / n for j in range(n)] + [cutoff + pd.Timedelta(1, "us")]
    folds = tuple(
        Window(f"calibration fold {j + 1}", a, b - pd.Timedelta(microseconds=1), cutoff)
        for j, (a, b) in enumerate(itertools.pairwise(edges))
    )
    return TimeSplit(base=base, calibration=calibration, folds=folds, notes=tuple(notes))


def evaluation_window(
    first: pd.Timestamp, data_end: pd.Timestamp, config: TrainingConfig
) -> tuple[Window, tuple[str, ...]]:
    """The latest ``eval_weeks`` of snapshot dates, labels read at the end of the data."""
    span_weeks = (data_end - first).days / 7
    weeks = min(config.eval_weeks, int(span_weeks / 2.5))
    notes: tuple[str, ...] = ()
    if weeks < config.eval_weeks:
        notes = (
            f"evaluation window shortened to {weeks} weeks (configured {config.eval_weeks}): "
            "less history than configured",
        )
    start = data_end - pd.Timedelta(weeks=weeks)
    return Window("evaluation", start, data_end, data_end), notes


# --- minimum data ---------------------------------------------------------------------------------
def closed_counts(deals: pd.DataFrame, cutoff: pd.Timestamp) -> tuple[int, int]:
    """Deals won and lost by ``cutoff``."""
    closed = pd.to_datetime(deals["closed_at"]) <= cutoff
    outcome = deals["outcome"].astype(object)
    won = int((closed & (outcome == Outcome.WON.value)).sum())
    lost = int((closed & (outcome == Outcome.LOST.value)).sum())
    return won, lost


def check_minimum_data(deals: pd.DataFrame, cutoff: pd.Timestamp, config: TrainingConfig) -> None:
    """Refuse to train on fewer closed deals than the configured minimum."""
    won, lost = closed_counts(deals, cutoff)
    if won + lost < config.min_closed_deals or won < config.min_won or lost < config.min_lost:
        raise NotEnoughDataError(
            f"not enough closed deals to train at {cutoff:%Y-%m-%d}: {won + lost} closed "
            f"({won} won, {lost} lost); training needs at least {config.min_closed_deals} closed, "
            f"{config.min_won} won and {config.min_lost} lost. Until then `pipecast score` uses "
            "the historical stage win rates"
        )
