"""A training run: measure a recipe on the latest quarters, then fit it on everything to serve.

1. Snapshots of every open deal, weekly, from the warm-up to ``as_of`` (default: the end of the
   data), built once.
2. **Backtest**: the recipe is fitted as it would have been at the start of the evaluation window
   (labels known then; :func:`training.fitting.fit_on_rows`) and scored on the window's rows,
   whose labels are read at ``as_of``, beside the baselines (fitted at the same cut-off) and, on
   generated data, the oracle. These are the figures a version is judged by.
3. **Serving fit**: the same recipe fitted at ``as_of`` on all snapshots: the model registered.
   It has seen the evaluation rows, so it is never judged on them; the promotion gate compares
   recipes on the same rows by refitting the champion's recipe at the same cut-off
   (:meth:`TrainingResult.evaluate_recipe`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.data.schema import CanonicalTables
from features.data.stages import StageConfig
from features.signals.snapshots import data_end
from training.baselines import NaiveBayesPeer, StageDefault, StageHistorical
from training.calibration import base_model
from training.config import TrainingConfig, make_config
from training.datasets import (
    Progress,
    Window,
    check_feature_values,
    check_minimum_data,
    evaluation_window,
    first_snapshot_date,
    labels_at,
    snapshot_rows,
)
from training.evaluation import grouped_scores, reliability_table, scores
from training.features import custom_stage_orders
from training.fitting import FittedModels, fit_on_rows, resolve_custom
from training.oracle import Oracle

WIN_METRICS = ("auc", "brier", "log_loss", "ece")
SLIP_METRICS = ("log_loss", "brier", "auc")


@dataclass
class EvalRows:
    """The evaluation window's rows and their labels as known at the end of the data."""

    window: Window
    rows: pd.DataFrame
    labels: pd.DataFrame

    @property
    def win_mask(self) -> np.ndarray:
        return self.labels["weight"].to_numpy() > 0

    @property
    def quarter_mask(self) -> np.ndarray:
        return self.labels["won_by_quarter_end"].notna().to_numpy()

    @cached_property
    def fingerprint(self) -> str:
        """Identifies the rows and labels a version was judged on (same rows, same hash)."""
        keyed = pd.concat([self.rows[["deal_id", "as_of"]], self.labels], axis=1)
        hashes = pd.util.hash_pandas_object(keyed, index=False).to_numpy()
        return hashlib.sha256(hashes.tobytes()).hexdigest()[:16]


def win_scores(ev: EvalRows, p: np.ndarray) -> dict[str, Any]:
    """Overall, per-stage and per-segment scores of win probabilities on the labelled rows."""
    m = ev.win_mask
    y, w = ev.labels["won_h"].to_numpy()[m], ev.labels["weight"].to_numpy()[m]
    rows = ev.rows.loc[m]
    return {
        **scores(y, p[m], w, WIN_METRICS),
        "by_stage": grouped_scores(y, p[m], w, rows["stage"], WIN_METRICS),
        "by_segment": grouped_scores(y, p[m], w, rows["segment"], WIN_METRICS),
    }


def slip_scores(ev: EvalRows, p: np.ndarray) -> dict[str, Any]:
    """Scores of P(closes won this quarter) on rows whose quarter ended by the end of the data."""
    m = ev.quarter_mask
    y = ev.labels["won_by_quarter_end"].to_numpy()[m]
    rows = ev.rows.loc[m]
    return {
        **scores(y, p[m], None, SLIP_METRICS),
        "by_stage": grouped_scores(y, p[m], np.ones(m.sum()), rows["stage"], SLIP_METRICS),
    }


def rep_close_date(rows: pd.DataFrame, p_win: np.ndarray) -> np.ndarray:
    """The rep's expected close date at face value: P(win) if it falls in the quarter, else 0."""
    days = pd.to_numeric(rows["days_to_expected_close"], errors="coerce")
    left = pd.to_numeric(rows["days_left_in_quarter"], errors="coerce")
    return np.where((days <= left).to_numpy(), p_win, 0.0)


@dataclass
class TrainingResult:
    """Everything a training run measured and fitted (MLflow logging is separate)."""

    config: TrainingConfig
    as_of: pd.Timestamp
    backtest: FittedModels
    serving: FittedModels
    evaluation: EvalRows
    win: dict[str, Any]
    slip: dict[str, Any]
    curves: dict[str, pd.DataFrame]
    notes: tuple[str, ...]
    # kept so other recipes can be judged on the same rows
    snapshot_rows: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)
    tables: Any = field(repr=False, default=None)
    stages: Any = field(repr=False, default=None)

    @property
    def eval_cutoff(self) -> pd.Timestamp:
        return self.evaluation.window.start

    def evaluate_recipe(self, config: TrainingConfig) -> dict[str, dict[str, Any]]:
        """Fit another recipe at the evaluation cut-off and score it on the same rows."""
        models = fit_on_rows(
            self.snapshot_rows, self.tables, self.stages, cutoff=self.eval_cutoff, config=config
        )
        p_win = models.predict_win(self.evaluation.rows)
        return {
            "win": win_scores(self.evaluation, p_win),
            "slip": slip_scores(
                self.evaluation, models.predict_quarter(self.evaluation.rows, p_win)
            ),
        }

    def data_summary(self) -> dict[str, Any]:
        w = self.evaluation.window
        tr = self.backtest.train_rows
        return {
            "train_rows": tr["fit"],
            "eval_rows": int(self.evaluation.win_mask.sum()),
            "eval_window": [f"{w.start:%Y-%m-%d}", f"{w.end:%Y-%m-%d}"],
            "slip_eval_rows": int(self.evaluation.quarter_mask.sum()),
            "backtest_cutoff": f"{self.eval_cutoff:%Y-%m-%d}",
            "serving_cutoff": f"{self.as_of:%Y-%m-%d}",
            "serving_train_rows": self.serving.train_rows["fit"],
            "windows": {
                "backtest": _windows(self.backtest),
                "serving": _windows(self.serving),
                "evaluation": w.as_dict(),
            },
            "features": list(base_model(self.serving.win).feature_names_),
            "notes": list(self.notes),
        }


def _windows(models: FittedModels) -> dict[str, Any]:
    if models.split is None:
        return {}
    return {
        "base": models.split.base.as_dict(),
        "calibration": models.split.calibration.as_dict(),
        "calibration_folds": [f.as_dict() for f in models.split.folds],
    }


def train(
    tables: CanonicalTables,
    stages: StageConfig,
    *,
    as_of: pd.Timestamp | None = None,
    truth: str | Path | None = None,
    config: TrainingConfig | None = None,
    progress: Progress | None = None,
) -> TrainingResult:
    """Run the backtest and the serving fit of a recipe (see the module docstring)."""
    cfg = config or make_config()
    oracle = Oracle.from_dir(truth) if truth is not None else None
    end = pd.Timestamp(as_of) if as_of is not None else data_end(tables)
    first = first_snapshot_date(tables, cfg)
    window, notes = evaluation_window(first, end, cfg)
    check_minimum_data(tables.deals, end, cfg)
    check_minimum_data(tables.deals, window.start, cfg)
    custom = resolve_custom(tables, cfg)
    rows = snapshot_rows(
        tables, stages, start=first, end=end, config=cfg, custom=custom, progress=progress
    )
    check_feature_values(rows, stages)
    backtest = fit_on_rows(rows, tables, stages, cutoff=window.start, config=cfg, progress=progress)
    ev_rows = rows.loc[rows["as_of"] > window.start].reset_index(drop=True)
    labels = labels_at(
        ev_rows,
        tables.deals,
        end,
        horizon_days=cfg.horizon_days,
        min_survival=cfg.min_censoring_survival,
    )
    ev = EvalRows(window, ev_rows, labels)
    p_win = backtest.predict_win(ev_rows)
    baselines: dict[str, Any] = {}
    win: dict[str, Any] = {"eval": win_scores(ev, p_win), "baselines": baselines, "oracle": None}
    curves = {"pipecast": _curve(ev, p_win)}
    for name, p in _baseline_predictions(tables, stages, window.start, ev_rows, backtest).items():
        baselines[name] = win_scores(ev, p)
        curves[name] = _curve(ev, p)
    if oracle is not None:
        p_oracle = oracle.predict(ev_rows)
        win["oracle"] = win_scores(ev, p_oracle)
        curves["oracle"] = _curve(ev, p_oracle)
    p_quarter = backtest.predict_quarter(ev_rows, p_win)
    slip = {
        "eval": slip_scores(ev, p_quarter),
        "baselines": {"rep_close_date": slip_scores(ev, rep_close_date(ev_rows, p_win))},
        # The truth holds a P(win), not a distribution of close dates: no timing oracle.
        "oracle": None,
    }
    serving = fit_on_rows(rows, tables, stages, cutoff=end, config=cfg, progress=progress)
    return TrainingResult(
        config=cfg,
        as_of=end,
        backtest=backtest,
        serving=serving,
        evaluation=ev,
        win=win,
        slip=slip,
        curves=curves,
        notes=(*notes, *backtest.notes, *serving.notes),
        snapshot_rows=rows,
        tables=tables,
        stages=stages,
    )


def _curve(ev: EvalRows, p: np.ndarray) -> pd.DataFrame:
    m = ev.win_mask
    return reliability_table(
        ev.labels["won_h"].to_numpy()[m], p[m], ev.labels["weight"].to_numpy()[m]
    )


def _baseline_predictions(
    tables: CanonicalTables,
    stages: StageConfig,
    cutoff: pd.Timestamp,
    rows: pd.DataFrame,
    models: FittedModels,
) -> dict[str, np.ndarray]:
    """The three baselines, fitted on what was known at ``cutoff``, on the evaluation rows."""
    encoder = base_model(models.win).encoder_
    staged = custom_stage_orders(stages)
    static = [
        c
        for c in models.custom
        if c in encoder.categories_ and c not in staged and c not in encoder.date_columns_
    ]
    return {
        "stage_default": StageDefault().fit(tables, stages, cutoff).predict(rows),
        "stage_historical": StageHistorical().fit(tables, stages, cutoff).predict(rows),
        "naive_bayes": NaiveBayesPeer().fit(tables, stages, cutoff, custom=static).predict(rows),
    }
