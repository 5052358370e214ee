"""Deal scorers as the forecast sees them, and the stage-history scorer that stands in for ML.

The forecast needs, for every deal open at ``as_of``, P(eventually won) and P(won by the end of
``as_of``'s quarter). The win and slip models of ``training`` provide them; this module names the
contract (:class:`Scorer`, :data:`ScorerFactory`) so the forecast, simulator and backtest do not
depend on how a scorer was built, and ships :class:`StageHistoryScorer`, an honest baseline:

- P(win | stage) = the share won among deals seen open in that stage on past snapshot dates whose
  outcome was known at the cut-off (shrunk toward the stage's configured probability);
- P(closes in the quarter | win, stage, close-date bucket) = among won deals seen in that stage,
  the share that closed by the end of the snapshot's quarter, for deals whose expected close
  date pointed into that quarter (or before) and for those whose date pointed later.

Everything it learns is from deals closed on or before the cut-off, so a scorer fitted at a date
never knows an outcome that came after it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

from features.data.calendar import quarter_end
from features.data.schema import CanonicalTables, Outcome
from features.data.stages import StageConfig
from features.errors import NotEnoughDataError
from features.signals.pointintime import deal_states

SCORE_COLUMNS = [
    "deal_id",
    "owner",
    "team",
    "segment",
    "product",
    "stage",
    "amount",
    "expected_close_date",
    "forecast_category",
    "p_win",
    "p_won_this_quarter",
    "expected_value",
]
# Fewer closed deals than this before the cut-off: no stage rate is worth fitting.
MIN_CLOSED_DEALS = 30
# Pseudo-count of the shrinkage toward the configured stage probability.
PRIOR_WEIGHT = 20.0
# How far back and how often the stand-in looks at the pipeline.
LOOKBACK_DAYS = 730
SNAPSHOT_EVERY = "14D"
# Close-date buckets: the deal's expected close date is in (or before) the quarter, or after it.
IN_QUARTER, LATER = "in_quarter", "later"


class Scorer(Protocol):
    """Scores the deals open at ``as_of``: one row per deal with :data:`SCORE_COLUMNS`."""

    def score(
        self, tables: CanonicalTables, stages: StageConfig, as_of: pd.Timestamp
    ) -> pd.DataFrame: ...


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
    return StageHistoryScorer(cutoff, win_rate, close_share, n_closed)


def _buckets(snaps: pd.DataFrame) -> np.ndarray:
    q_end = snaps["as_of"].dt.to_period("Q").dt.end_time
    ecd = pd.to_datetime(snaps["expected_close_date"])
    return np.where((ecd > q_end).fillna(False).to_numpy(dtype=bool), LATER, IN_QUARTER)
