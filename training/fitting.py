"""Fit the win and slip models at a cut-off, in memory (no MLflow): :func:`fit_models`.

Used by ``pipecast train`` (twice: once at the start of the evaluation window to measure, once
at the end of the data to serve) and by the quarter forecast's backtests, which refit at every
past quarter. Inside, time is split (:func:`training.datasets.split_before`). The win model is
fitted on every snapshot up to the cut-off (labels known then) and calibrated on the later
window's scores by models fitted before each of its folds (:mod:`training.calibration`); the slip
model likewise, on (snapshot, horizon) pairs, calibrated on the rows whose quarter had ended.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from features.data.schema import CanonicalTables
from features.data.stages import StageConfig
from features.errors import NotEnoughDataError
from features.signals.driver import custom_column_names
from training.calibration import Recalibrated, base_model, calibrate_log_odds
from training.config import GbmParams, TrainingConfig, make_config
from training.datasets import (
    Progress,
    TimeSplit,
    check_feature_values,
    check_minimum_data,
    first_snapshot_date,
    labels_at,
    snapshot_rows,
    split_before,
)
from training.features import custom_stage_orders
from training.models import HORIZON, SlipModel, WinModel, cumulative, with_horizon


@dataclass
class FittedModels:
    """A calibrated win model and slip model fitted at ``cutoff``, ready to score deals."""

    win: Any  # Recalibrated(WinModel, calibrator of its out-of-time log-odds)
    slip: Any  # Recalibrated(SlipModel, calibrator of its out-of-time log-odds)
    config: TrainingConfig
    cutoff: pd.Timestamp
    split: TimeSplit | None = None
    train_rows: dict[str, int] = field(default_factory=dict)
    # Registered versions when loaded from MLflow; None for a model fitted in memory.
    versions: dict[str, str | None] = field(
        default_factory=lambda: {"win_probability": None, "slip": None}
    )

    @property
    def custom(self) -> list[str]:
        """Custom columns the models read (the signals must compute them)."""
        names = base_model(self.win).encoder_.feature_names_
        return [n for n in names if n.startswith("custom_")]

    @property
    def notes(self) -> tuple[str, ...]:
        return self.split.notes if self.split else ()

    def predict_win(self, rows: pd.DataFrame) -> np.ndarray:
        """Calibrated P(won within the horizon) of snapshot rows."""
        if len(rows) == 0:
            return np.zeros(0)
        return np.asarray(self.win.predict_proba(rows)[:, 1], dtype="float64")

    def predict_quarter(self, rows: pd.DataFrame, p_win: np.ndarray | None = None) -> np.ndarray:
        """P(closes won by the end of the row's quarter), never above P(win)."""
        if len(rows) == 0:
            return np.zeros(0)
        days_left = pd.to_numeric(rows["days_left_in_quarter"], errors="coerce").to_numpy()
        p = self.slip.predict_proba(with_horizon(rows, days_left))[:, 1]
        p_win = self.predict_win(rows) if p_win is None else p_win
        return np.minimum(p, p_win)

    def won_within(
        self, tables: CanonicalTables, stages: StageConfig, as_of: pd.Timestamp, days: np.ndarray
    ) -> pd.DataFrame:
        """P(won within each of ``days`` days of ``as_of``) of every deal open at ``as_of``:
        one row per deal (index ``deal_id``), one column per day count, never above P(win)."""
        from training.scoring import open_deal_rows

        rows = open_deal_rows(
            tables, stages, as_of, custom=self.custom, static_custom=self.config.static_custom
        )
        p = cumulative(self.slip, rows, days)
        p = np.minimum(p, self.predict_win(rows)[:, None])
        return pd.DataFrame(p, index=pd.Index(rows["deal_id"], name="deal_id"), columns=days)

    def close_week_cdf(self, rows: pd.DataFrame, weeks: int = 26) -> np.ndarray:
        """P(won within w weeks) for w = 1..weeks: shape (rows, weeks), non-decreasing."""
        return cumulative(self.slip, rows, 7 * np.arange(1, weeks + 1))

    def score(
        self,
        tables: CanonicalTables,
        stages: StageConfig,
        as_of: pd.Timestamp,
        *,
        reasons: bool = False,
        owner: str | None = None,
        team: str | None = None,
        deal_ids: list[str] | None = None,
        progress: Progress | None = None,
    ) -> pd.DataFrame:
        """One row per deal open at ``as_of``, ranked by expected value this quarter (see
        :func:`training.scoring.score_deals`)."""
        from training.scoring import score_deals

        return score_deals(
            self,
            tables,
            stages,
            as_of,
            reasons=reasons,
            owner=owner,
            team=team,
            deal_ids=deal_ids,
            progress=progress,
        )


def fit_models(
    tables: CanonicalTables,
    stages: StageConfig,
    *,
    cutoff: pd.Timestamp,
    progress: Progress | None = None,
    **config: Any,
) -> FittedModels:
    """Train the win and slip models on snapshots labelled as known at ``cutoff``.

    Raises :class:`~features.errors.NotEnoughDataError` below the configured minimum of closed
    deals; keyword arguments override :class:`~training.config.TrainingConfig` fields.
    """
    cfg = make_config(**config)
    cutoff = pd.Timestamp(cutoff)
    check_minimum_data(tables.deals, cutoff, cfg)
    first = first_snapshot_date(tables, cfg)
    custom = resolve_custom(tables, cfg)
    rows = snapshot_rows(
        tables, stages, start=first, end=cutoff, config=cfg, custom=custom, progress=progress
    )
    return fit_on_rows(rows, tables, stages, cutoff=cutoff, config=cfg, progress=progress)


def resolve_custom(tables: CanonicalTables, config: TrainingConfig) -> list[str]:
    """The custom columns to use: those listed, or every mapped one."""
    if config.custom is None:
        return [c for c in tables.deals.columns if c.startswith("custom_")]
    try:
        return custom_column_names(tables.deals, config.custom)
    except KeyError as err:
        from features.errors import InputError

        raise InputError(str(err.args[0])) from None


# Rows a fold model scores for calibration: features, labels, weights (None: equal).
_Scored = tuple[pd.DataFrame, np.ndarray, np.ndarray | None]
_Fit = Callable[[pd.DataFrame, pd.DataFrame], Any]
_Rows = Callable[[pd.DataFrame, pd.DataFrame], _Scored]


def fit_on_rows(
    rows: pd.DataFrame,
    tables: CanonicalTables,
    stages: StageConfig,
    *,
    cutoff: pd.Timestamp,
    config: TrainingConfig,
    progress: Progress | None = None,
) -> FittedModels:
    """:func:`fit_models` on snapshot rows already built (those after ``cutoff`` are ignored)."""
    rows = rows.loc[rows["as_of"] <= cutoff].reset_index(drop=True)
    if rows.empty:
        raise NotEnoughDataError(f"no snapshot rows on or before {cutoff:%Y-%m-%d}")
    check_feature_values(rows, stages)
    split = split_before(pd.Timestamp(rows["as_of"].min()), cutoff, config)
    deals = tables.deals

    def labelled(part: pd.DataFrame, at: pd.Timestamp) -> pd.DataFrame:
        return labels_at(
            part,
            deals,
            at,
            horizon_days=config.horizon_days,
            min_survival=config.min_censoring_survival,
        )

    steps = 2 * (len(split.folds) + 1)
    done = 0

    def tick() -> None:
        nonlocal done
        if progress is not None:
            progress("fitting", done, steps)
        done += 1

    tick()
    params: dict[str, Any] = {
        "exclude": list(config.exclude_features),
        "known_from_stage": custom_stage_orders(stages),
        "random_state": config.random_state,
        "n_jobs": config.n_jobs,
    }
    first = split.base.start

    def fit_win(before: pd.DataFrame, labels: pd.DataFrame) -> WinModel:
        keep = labels["weight"].to_numpy() > 0
        y = labels["won_h"].to_numpy()[keep]
        end = pd.Timestamp(before["as_of"].max())
        _require_both(y, "snapshots to fit the win model on", first, end)
        return WinModel(**_gbm(config.win), **params).fit(
            before.loc[keep], y, sample_weight=labels["weight"].to_numpy()[keep]
        )

    def win_rows(part: pd.DataFrame, labels: pd.DataFrame) -> _Scored:
        keep = labels["weight"].to_numpy() > 0
        return part.loc[keep], labels["won_h"].to_numpy()[keep], labels["weight"].to_numpy()[keep]

    def fit_slip(before: pd.DataFrame, labels: pd.DataFrame) -> SlipModel:
        rng = np.random.default_rng(config.random_state)
        x_pairs, y_pairs = slip_pairs(before, labels, config, rng)
        return SlipModel(**_gbm(config.slip), **params).fit(x_pairs, y_pairs)

    def quarter_rows(part: pd.DataFrame, labels: pd.DataFrame) -> _Scored:
        ended = labels["won_by_quarter_end"].notna().to_numpy()
        x = with_horizon(part.loc[ended], part.loc[ended, "days_left_in_quarter"].to_numpy())
        return x, labels["won_by_quarter_end"].to_numpy()[ended], None

    def out_of_time(fit: _Fit, scored: _Rows, what: str) -> tuple[Recalibrated, int, int]:
        """``fit`` on every row up to the cut-off (labels then), its log-odds calibrated on the
        calibration folds, each scored by ``fit`` on the snapshots before it (labels then)."""
        log_odds, ys, ws = [], [], []
        for fold in split.folds:
            part = fold.select(rows)
            x, y, w = scored(part, labelled(part, cutoff))
            if len(x):  # none where no quarter of the fold has ended yet
                before = rows.loc[rows["as_of"] < fold.start].reset_index(drop=True)
                model = fit(before, labelled(before, fold.start))
                log_odds.append(model.decision_function(x))
                ys.append(y)
                ws.append(np.ones(len(y)) if w is None else w)
            tick()
        y_oot = np.concatenate(ys) if ys else np.zeros(0)
        _require_both(y_oot, what, split.calibration.start, cutoff)
        every = labelled(rows, cutoff)
        calibration = calibrate_log_odds(
            np.concatenate(log_odds), y_oot, sample_weight=np.concatenate(ws),
            method=config.calibration,
        )  # fmt: skip
        model = Recalibrated(fit(rows, every), calibration)
        tick()
        return model, int((every["weight"].to_numpy() > 0).sum()), len(y_oot)

    win, n_fit, n_cal = out_of_time(fit_win, win_rows, "calibration window's snapshots")
    slip, _, n_quarter = out_of_time(
        fit_slip, quarter_rows, "calibration window's snapshots whose quarter ended"
    )
    return FittedModels(
        win=win,
        slip=slip,
        config=config,
        cutoff=cutoff,
        split=split,
        train_rows={"fit": n_fit, "calibration": n_cal, "slip_calibration": n_quarter},
    )


def _gbm(params: GbmParams) -> dict[str, Any]:
    return params.model_dump()


def _require_both(y: np.ndarray, what: str, start: pd.Timestamp, end: pd.Timestamp) -> None:
    won, lost = int((y == 1).sum()), int((y == 0).sum())
    if min(won, lost) < 10:
        raise NotEnoughDataError(
            f"the {what} ({start:%Y-%m-%d}..{end:%Y-%m-%d}) have {won} won and {lost} lost "
            "labelled rows; at least 10 of each are needed"
        )


def slip_pairs(
    rows: pd.DataFrame, labels: pd.DataFrame, config: TrainingConfig, rng: np.random.Generator
) -> tuple[pd.DataFrame, np.ndarray]:
    """(snapshot, horizon) rows for the slip model, labelled "won within the horizon".

    Horizons: the days left in the snapshot's quarter (the question asked most) and
    ``slip_extra_horizons`` random ones up to ``slip_horizon_days`` (the shape of the close-week
    distribution). A pair is kept only if the cut-off is at least the horizon after as-of; whether
    it is kept then depends on the calendar alone, not on how the deal ended, so no weighting.
    """
    n = len(rows)
    left = pd.to_numeric(rows["days_left_in_quarter"], errors="coerce").to_numpy()
    extra = rng.integers(1, config.slip_horizon_days + 1, size=(n, config.slip_extra_horizons))
    horizons = np.column_stack([left, extra]).astype("float64")
    follow = labels["follow_up_days"].to_numpy()[:, None]
    keep = (horizons <= follow) & ~np.isnan(horizons)
    row_idx, col_idx = np.nonzero(keep)
    h = horizons[row_idx, col_idx]
    closed = labels["closed_days"].to_numpy()[row_idx]
    won = labels["won_by_cutoff"].to_numpy()[row_idx] == 1.0
    y = (won & (closed <= h)).astype("float64")
    pairs = rows.iloc[row_idx].reset_index(drop=True)
    pairs[HORIZON] = h
    return pairs, y
