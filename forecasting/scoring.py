"""Deal scorers as the forecast sees them: training's win and slip models, and a stage baseline.

The forecast needs, for every deal open at ``as_of``, P(eventually won) and P(won by the end of
``as_of``'s quarter), and for a quarter's pipeline at its start P(won within d days) (what its
early pace is measured against). This module names the contract (:class:`DealScorer`,
:class:`Scorer`, :data:`ScorerFactory`) so the forecast, simulator and backtest do not depend on
how a scorer was built, and provides:

- :class:`ModelScorers`, the factory used by default: ``training``'s calibrated win and slip
  models fitted at the cut-off (a fast recipe, :data:`FAST_RECIPE`), the snapshot rows built once
  and reused for every cut-off (each fit relabels them as known at its cut-off and drops the rows
  after it), fitted models cached per cut-off; where too little had closed to train, it falls
  back to the stage-history scorer and says so (:attr:`ModelScorers.methods`);
- :class:`StageHistoryScorer` (:func:`fit_stage_history`), the baseline and fallback:

  - P(win | stage) = the share won among deals seen open in that stage on past snapshot dates
    whose outcome was known at the cut-off (shrunk toward the stage's configured probability);
  - P(closes in the quarter | win, stage, close-date bucket) = among won deals seen in that
    stage, the share that closed by the end of the snapshot's quarter, for deals whose expected
    close date pointed into that quarter (or before) and for those whose date pointed later;
  - P(won within d days | stage) = the share of deals seen in that stage won within d days of
    the snapshot, on snapshots whose next :data:`PACE_DAYS` days had passed by the cut-off
    (shrunk toward every stage pooled).

Everything either learns is from outcomes known on or before the cut-off, so a scorer fitted at a
date never knows an outcome that came after it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

from features.data.calendar import quarter_end
from features.data.schema import CanonicalTables, Outcome
from features.data.stages import StageConfig
from features.errors import NotEnoughDataError
from features.signals.pointintime import deal_states
from training.scoring import COLUMNS as SCORING_COLUMNS

# The deal scores' columns (training's list, one place) that the simulator reads.
SCORE_COLUMNS = [c for c in SCORING_COLUMNS if c != "p_close_this_quarter_given_win"]
# Fewer closed deals than this before the cut-off: no stage rate is worth fitting.
MIN_CLOSED_DEALS = 30
# Pseudo-count of the shrinkage toward the configured stage probability.
PRIOR_WEIGHT = 20.0
# How far back and how often the stand-in looks at the pipeline.
LOOKBACK_DAYS = 730
SNAPSHOT_EVERY = "14D"
# Close-date buckets: the deal's expected close date is in (or before) the quarter, or after it.
IN_QUARTER, LATER = "in_quarter", "later"
# The longest run of days a quarter's early pace is measured over (a quarter's length at most).
PACE_DAYS = 92


class DealScorer(Protocol):
    """Scores the deals open at ``as_of``: one row per deal with :data:`SCORE_COLUMNS`."""

    def score(
        self, tables: CanonicalTables, stages: StageConfig, as_of: pd.Timestamp
    ) -> pd.DataFrame: ...


class Scorer(DealScorer, Protocol):
    """A :class:`DealScorer` that also says how soon it expects the deals won: what a quarter's
    early pace is measured against."""

    def won_within(
        self, tables: CanonicalTables, stages: StageConfig, as_of: pd.Timestamp, days: np.ndarray
    ) -> pd.DataFrame:
        """P(won within each of ``days`` days of ``as_of``) of the deals open at ``as_of``: index
        ``deal_id``, one column per day count."""
        ...


ScorerFactory = Callable[[CanonicalTables, StageConfig, pd.Timestamp], Scorer]
"""Fits a scorer on what was known at a cut-off (``training.fit_models`` has this shape)."""


def close_bucket(expected_close: pd.Series, as_of: pd.Timestamp) -> pd.Series:
    """``in_quarter`` when the expected close date is by the end of ``as_of``'s quarter (or
    missing: the rep has not said it slips), else ``later``."""
    ecd = pd.to_datetime(expected_close)
    later = (ecd > quarter_end(as_of)).fillna(False).to_numpy(dtype=bool)
    return pd.Series(np.where(later, LATER, IN_QUARTER), index=expected_close.index)


@dataclass(frozen=True)
class StageHistoryScorer:
    """Stage-historical win rates and in-quarter close shares, as fitted at ``cutoff``."""

    cutoff: pd.Timestamp
    win_rate: dict[str, float]
    close_share: dict[tuple[str, str], float]
    n_closed: int
    # P(won within d days) for d = 0..PACE_DAYS by stage ("" pools every stage); empty when no
    # snapshot was old enough for its next PACE_DAYS days to be known at the cut-off
    pace: dict[str, np.ndarray] = field(default_factory=dict)

    def score(
        self, tables: CanonicalTables, stages: StageConfig, as_of: pd.Timestamp
    ) -> pd.DataFrame:
        states = deal_states(tables, pd.Timestamp(as_of), stages, open_only=True)
        states = states.drop(columns="as_of").reset_index(drop=True)
        default = {s.key: s.win_probability for s in stages.stages}
        overall = float(np.mean(list(self.win_rate.values()))) if self.win_rate else 0.3
        stage = states["stage"]
        p_win = stage.map(self.win_rate).fillna(stage.map(default)).fillna(overall)
        bucket = close_bucket(states["expected_close_date"], pd.Timestamp(as_of))
        keys = list(zip(stage.fillna(""), bucket, strict=True))
        fallback = {b: self._bucket_mean(b) for b in (IN_QUARTER, LATER)}
        share = np.array([self.close_share.get(k, fallback[k[1]]) for k in keys], dtype=np.float64)
        out = states[[c for c in SCORE_COLUMNS if c in states.columns]].copy()
        out["p_win"] = p_win.to_numpy(dtype=np.float64)
        out["p_won_this_quarter"] = out["p_win"] * share
        out["expected_value"] = out["amount"].fillna(0.0) * out["p_win"]
        return out[SCORE_COLUMNS]

    def won_within(
        self, tables: CanonicalTables, stages: StageConfig, as_of: pd.Timestamp, days: np.ndarray
    ) -> pd.DataFrame:
        """The stage's share of deals won within each day count, as seen on past snapshots;
        without such snapshots, P(won this quarter) spread evenly over the quarter's days."""
        scored = self.score(tables, stages, as_of).set_index("deal_id")
        idx = np.clip(np.asarray(days, dtype=np.int64), 0, PACE_DAYS)
        if self.pace:
            pooled = self.pace[""]
            curves = np.stack([self.pace.get(str(s), pooled) for s in scored["stage"]])
            p = curves[:, idx] if len(scored) else np.zeros((0, len(idx)))
        else:
            left = max((quarter_end(as_of) - pd.Timestamp(as_of)).days, 1)
            share = np.minimum(idx / left, 1.0)
            p = scored["p_won_this_quarter"].to_numpy(dtype=np.float64)[:, None] * share[None, :]
        p = np.minimum(p, scored["p_win"].to_numpy(dtype=np.float64)[:, None])
        return pd.DataFrame(p, index=scored.index, columns=days)

    def _bucket_mean(self, bucket: str) -> float:
        vals = [v for (_, b), v in self.close_share.items() if b == bucket]
        return float(np.mean(vals)) if vals else (0.5 if bucket == IN_QUARTER else 0.05)


def fit_stage_history(
    tables: CanonicalTables, stages: StageConfig, cutoff: pd.Timestamp
) -> StageHistoryScorer:
    """Fit :class:`StageHistoryScorer` on snapshots before ``cutoff`` with outcomes known by it."""
    cutoff = pd.Timestamp(cutoff)
    deals = tables.deals
    closed_at = pd.to_datetime(deals["closed_at"])
    known = (closed_at <= cutoff).fillna(False)
    n_closed = int(known.sum())
    if n_closed < MIN_CLOSED_DEALS:
        raise NotEnoughDataError(
            f"only {n_closed} deals closed by {cutoff:%Y-%m-%d}; "
            f"at least {MIN_CLOSED_DEALS} are needed to fit stage win rates"
        )
    dates = pd.date_range(end=cutoff, periods=LOOKBACK_DAYS // 14, freq=SNAPSHOT_EVERY)
    dates = dates[dates >= pd.to_datetime(deals["created_at"]).min()]
    snaps = deal_states(tables, list(dates), stages, open_only=True)
    fate = deals.set_index("deal_id")
    closed = pd.to_datetime(fate["closed_at"]).reindex(snaps["deal_id"]).to_numpy()
    outcome = fate["outcome"].reindex(snaps["deal_id"]).to_numpy()
    resolved = closed <= cutoff.to_datetime64()  # NaT compares False: unknown at the cut-off
    won = resolved & (outcome == Outcome.WON.value)
    frame = pd.DataFrame(
        {
            "stage": snaps["stage"].to_numpy(),
            "resolved": resolved,
            "won": won,
            "bucket": _buckets(snaps),
            "q_end": snaps["as_of"].dt.to_period("Q").dt.end_time.to_numpy(),
            "closed_at": closed,
        }
    )
    default = {s.key: s.win_probability for s in stages.stages}
    res = frame[frame["resolved"]].groupby("stage")["won"].agg(["sum", "count"])
    win_rate = {
        str(k): float(
            (r["sum"] + PRIOR_WEIGHT * default.get(str(k), 0.3)) / (r["count"] + PRIOR_WEIGHT)
        )
        for k, r in res.iterrows()
    }
    # Timing: won deals whose snapshot quarter had ended by the cut-off (so the answer is known).
    timed = frame[frame["won"] & (frame["q_end"] <= cutoff)]
    in_q = timed["closed_at"] <= timed["q_end"]
    grouped = in_q.groupby([timed["stage"], timed["bucket"]]).agg(["sum", "count"])
    close_share = {
        (str(key[0]), str(key[1])): float((r["sum"] + 1.0) / (r["count"] + 2.0))
        for key, r in grouped.iterrows()
        if isinstance(key, tuple)
    }
    return StageHistoryScorer(cutoff, win_rate, close_share, n_closed, _pace(frame, snaps, cutoff))


def _pace(frame: pd.DataFrame, snaps: pd.DataFrame, cutoff: pd.Timestamp) -> dict[str, np.ndarray]:
    """P(won within d days of the snapshot), d = 0..PACE_DAYS, by stage (shrunk toward every
    stage pooled, key ""), from snapshots whose next PACE_DAYS days had passed by the cut-off."""
    seen = (snaps["as_of"] + pd.Timedelta(days=PACE_DAYS) <= cutoff).to_numpy(dtype=bool)
    if not seen.any():
        return {}
    rows = frame[seen]
    days = (pd.to_datetime(rows["closed_at"]) - snaps["as_of"][seen].to_numpy()).dt.days
    won = rows["won"].to_numpy(dtype=bool)
    wait = np.where(won, days.fillna(PACE_DAYS + 1).to_numpy(dtype=np.float64), PACE_DAYS + 1)
    grid = np.arange(PACE_DAYS + 1)

    def curve(w: np.ndarray) -> np.ndarray:
        return np.searchsorted(np.sort(w), grid, side="right").astype(np.float64)

    pooled = curve(wait) / len(wait)
    out = {"": pooled}
    stage = rows["stage"].astype(str).to_numpy()
    for key in np.unique(stage):
        w = wait[stage == key]
        out[str(key)] = (curve(w) + PRIOR_WEIGHT * pooled) / (len(w) + PRIOR_WEIGHT)
    return out


def _buckets(snaps: pd.DataFrame) -> np.ndarray:
    q_end = snaps["as_of"].dt.to_period("Q").dt.end_time
    ecd = pd.to_datetime(snaps["expected_close_date"])
    return np.where((ecd > q_end).fillna(False).to_numpy(dtype=bool), LATER, IN_QUARTER)


# The forecast refits the models once per history quarter: many shallow trees at a higher rate,
# one thread (two threads on a shared 2-core machine were 5x slower), fortnightly snapshots; a
# 39-week calibration window so the models take over from stage history a half year earlier.
# No `days_left_in_quarter` feature: the trees split it at the few values fortnightly snapshots
# give, at other places in each refit, so one quarter's in-quarter sum stepped by up to 12%
# within its first week and the refits' sums spread more across quarters. The time left still
# enters as the horizon of P(won this quarter), and a quarter's own timing as the forecast
# model's quarter effect (README, "Forecast and backtest", version 11).
FAST_RECIPE: dict[str, Any] = {
    "freq": "2W-MON",
    "calibration_weeks": 39,
    "win": {"n_estimators": 100, "learning_rate": 0.12},
    "slip": {"n_estimators": 100, "learning_rate": 0.12},
    "exclude_features": ["days_left_in_quarter"],
    "n_jobs": 1,
}
MODELS, STAGE_HISTORY = "models", "stage_history"


class ModelScorers:
    """:data:`ScorerFactory` over ``training``'s fitted models, cached per cut-off.

    ``recipe`` overrides :class:`training.TrainingConfig` fields (default :data:`FAST_RECIPE`);
    ``fallback`` fits a scorer where the models cannot be trained (too few closed deals before
    the cut-off); None raises instead.
    """

    def __init__(
        self,
        recipe: dict[str, Any] | None = None,
        fallback: ScorerFactory | None = fit_stage_history,
    ) -> None:
        from training import make_config

        self.config = make_config(**(FAST_RECIPE if recipe is None else recipe))
        self.fallback = fallback
        self.methods: dict[pd.Timestamp, str] = {}
        self._fitted: dict[pd.Timestamp, Scorer] = {}
        self._rows: pd.DataFrame | None = None
        self._tables: int | None = None

    def __call__(
        self, tables: CanonicalTables, stages: StageConfig, cutoff: pd.Timestamp
    ) -> Scorer:
        cutoff = pd.Timestamp(cutoff)
        if self._tables != id(tables):  # other data: nothing cached applies
            self._fitted, self.methods, self._rows, self._tables = {}, {}, None, id(tables)
        if cutoff not in self._fitted:
            self._fitted[cutoff] = self._fit(tables, stages, cutoff)
        return self._fitted[cutoff]

    def _fit(self, tables: CanonicalTables, stages: StageConfig, cutoff: pd.Timestamp) -> Scorer:
        from training.datasets import check_minimum_data
        from training.fitting import fit_on_rows

        try:
            check_minimum_data(tables.deals, cutoff, self.config)
            rows = self._rows_until(tables, stages, cutoff)
            fitted: Scorer = fit_on_rows(rows, tables, stages, cutoff=cutoff, config=self.config)
            self.methods[cutoff] = MODELS
        except NotEnoughDataError:
            if self.fallback is None:
                raise
            fitted = self.fallback(tables, stages, cutoff)
            self.methods[cutoff] = STAGE_HISTORY
        return fitted

    def _rows_until(
        self, tables: CanonicalTables, stages: StageConfig, cutoff: pd.Timestamp
    ) -> pd.DataFrame:
        """Snapshot rows up to ``cutoff``, extending the ones built for earlier cut-offs (a row's
        signals are point in time, so rows built once serve every later cut-off)."""
        from pandas.tseries.frequencies import to_offset

        from training.datasets import first_snapshot_date, snapshot_rows
        from training.fitting import resolve_custom

        cfg = self.config
        if self._rows is not None and len(self._rows):
            start = pd.Timestamp(self._rows["as_of"].max()) + to_offset(cfg.freq)
        else:
            start = first_snapshot_date(tables, cfg)
        if start <= cutoff:
            new = snapshot_rows(
                tables,
                stages,
                start=start,
                end=cutoff,
                config=cfg,
                custom=resolve_custom(tables, cfg),
            )
            self._rows = new if self._rows is None else pd.concat([self._rows, new])
        assert self._rows is not None
        return self._rows
