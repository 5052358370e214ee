"""The win and slip models: LightGBM classifiers on snapshot rows, as scikit-learn estimators.

Both follow the estimator contract (``__init__`` stores parameters, ``_parameter_constraints``
checked in ``fit``, fitted attributes end in ``_``, ``fit`` returns ``self``, prediction checks it
is fitted), so they drop into :class:`~sklearn.calibration.CalibratedClassifierCV` through
:class:`~sklearn.frozen.FrozenEstimator` (:mod:`training.calibration`).

- :class:`WinModel`: P(won within the horizon | the deal's signals at as-of).
- :class:`SlipModel`: P(won within ``horizon_days`` days of as-of | signals), one model for every
  horizon, monotone (non-decreasing) in the horizon. Asked at the days left in the quarter it is
  "closes won this quarter"; asked week by week it gives the close-week distribution. This is the
  direct binomial regression of a cumulative incidence (Scheike, Zhang & Gerds 2008) rather than
  a discrete-time hazard: one row per (snapshot, horizon) instead of one per (snapshot, week at
  risk), no product of many hazards to compound errors, and censoring handled exactly because a
  pair is used only when the cut-off is at least the horizon after as-of (see
  :func:`training.datasets.labels_at`): whether a pair is seen never depends on how the deal ended.

Inputs are snapshot frames (signals as columns); :class:`training.features.SnapshotEncoder` picks
and encodes the features. ``contributions`` gives per-prediction SHAP values (LightGBM
``pred_contrib``) per feature for the reasons shown to reps.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any, ClassVar

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from features.errors import InputError
from training.features import SnapshotEncoder

HORIZON = "horizon_days"


class _Gbm(ClassifierMixin, BaseEstimator):
    """LightGBM binary classifier on encoded snapshot rows (shared by the win and slip models)."""

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "n_estimators": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, 1, closed="right")],
        "num_leaves": [Interval(Integral, 2, None, closed="left")],
        "min_child_samples": [Interval(Integral, 1, None, closed="left")],
        "subsample": [Interval(Real, 0, 1, closed="right")],
        "colsample_bytree": [Interval(Real, 0, 1, closed="right")],
        "reg_lambda": [Interval(Real, 0, None, closed="left")],
        "features": [list, None],
        "exclude": [list, tuple],
        "known_from_stage": [dict, None],
        "random_state": ["random_state"],
        # LightGBM would otherwise take every core of a shared machine.
        "n_jobs": [Interval(Integral, 1, 2, closed="both")],
    }
    _extra: ClassVar[tuple[str, ...]] = ()  # numeric model inputs that are not snapshot columns
    _monotone: ClassVar[dict[str, int]] = {}

    def __init__(
        self,
        *,
        n_estimators: int = 800,
        learning_rate: float = 0.03,
        num_leaves: int = 7,
        min_child_samples: int = 500,
        subsample: float = 0.8,
        colsample_bytree: float = 0.5,
        reg_lambda: float = 5.0,
        features: list[str] | None = None,
        exclude: list[str] | tuple[str, ...] = (),
        known_from_stage: dict[str, float] | None = None,
        random_state: int | None = 0,
        n_jobs: int = 2,
    ) -> None:
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.features = features
        self.exclude = exclude
        self.known_from_stage = known_from_stage
        self.random_state = random_state
        self.n_jobs = n_jobs

    def fit(self, X: pd.DataFrame, y: Any, sample_weight: np.ndarray | None = None) -> _Gbm:
        """Fit on snapshot rows ``X`` with binary labels ``y`` (0/1)."""
        self._validate_params()
        target = np.asarray(y, dtype="float64")
        if len(target) != len(X):
            raise InputError(f"{len(X)} rows but {len(target)} labels")
        if np.isnan(target).any() or not np.isin(target, (0.0, 1.0)).all():
            raise InputError("labels must be 0 or 1 (censored rows are dropped before fitting)")
        if len(np.unique(target)) < 2:
            raise InputError("the training rows hold a single outcome; both wins and losses needed")
        self.encoder_ = SnapshotEncoder(
            features=self.features,
            exclude=[*self.exclude, *self._extra],
            known_from_stage=self.known_from_stage,
        ).fit(X)
        encoded = self._encode(X)
        self.model_ = lgb.LGBMClassifier(**self._lgbm_params(list(encoded.columns)))
        self.model_.fit(encoded, target.astype(int), sample_weight=sample_weight)
        self.classes_ = np.array([0, 1])
        self.feature_names_ = list(encoded.columns)
        self.n_features_in_ = len(self.feature_names_)
        self.feature_importances_ = pd.Series(
            self.model_.booster_.feature_importance("gain"), index=self.feature_names_
        )
        return self

    def _lgbm_params(self, columns: list[str]) -> dict[str, Any]:
        params: dict[str, Any] = {
            "n_estimators": self.n_estimators,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_child_samples": self.min_child_samples,
            "subsample": self.subsample,
            "subsample_freq": 1,
            "colsample_bytree": self.colsample_bytree,
            "reg_lambda": self.reg_lambda,
            "random_state": self.random_state,
            "n_jobs": self.n_jobs,
            "deterministic": True,
            "force_row_wise": True,
            "verbose": -1,
        }
        if self._monotone:
            params["monotone_constraints"] = [self._monotone.get(c, 0) for c in columns]
        return params

    def _extra_columns(self, X: pd.DataFrame) -> dict[str, np.ndarray]:
        """The model's own columns beyond the encoder's (the slip model's horizon), as floats."""
        out = {}
        for col in self._extra:
            if col not in X.columns:
                raise InputError(f"{type(self).__name__} needs a {col!r} column")
            out[col] = pd.to_numeric(X[col], errors="coerce").astype("float64").to_numpy()
        return out

    def _encode(self, X: pd.DataFrame) -> pd.DataFrame:
        encoded = self.encoder_.transform(X)
        for col, values in self._extra_columns(X).items():
            encoded[col] = values
        return encoded

    def _matrix(self, X: pd.DataFrame) -> np.ndarray:
        """:meth:`_encode` as the float matrix LightGBM converts that frame to (category codes,
        NaN where missing; :meth:`SnapshotEncoder.transform_matrix`), given to the booster
        directly: the same predictions without the frame and its conversion."""
        matrix = self.encoder_.transform_matrix(X)
        extra = list(self._extra_columns(X).values())
        return np.column_stack([matrix, *extra]) if extra else matrix

    def decision_function(self, X: pd.DataFrame) -> np.ndarray:
        """Log-odds of a win (what Platt scaling calibrates)."""
        check_is_fitted(self, "model_")
        raw = self.model_.booster_.predict(self._matrix(X), raw_score=True)
        return np.asarray(raw, dtype="float64")

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        check_is_fitted(self, "model_")
        p = 1.0 / (1.0 + np.exp(-self.decision_function(X)))
        return np.column_stack([1.0 - p, p])

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)

    def contributions(self, X: pd.DataFrame) -> pd.DataFrame:
        """Per-row SHAP contributions (log-odds) per feature, plus ``bias``; rows sum to the
        log-odds of :meth:`decision_function`."""
        check_is_fitted(self, "model_")
        values = self.model_.booster_.predict(self._matrix(X), pred_contrib=True)
        return pd.DataFrame(
            np.asarray(values), columns=[*self.feature_names_, "bias"], index=X.index
        )


class WinModel(_Gbm):
    """P(won within the horizon) from a deal's signals at as-of (see the module docstring)."""


class SlipModel(_Gbm):
    """P(won within ``horizon_days`` of as-of); rows carry a ``horizon_days`` column.

    Monotone in the horizon (LightGBM monotone constraint), so week-by-week differences of
    :meth:`cumulative` are a close-week distribution.
    """

    _extra: ClassVar[tuple[str, ...]] = (HORIZON,)
    _monotone: ClassVar[dict[str, int]] = {HORIZON: 1}

    def cumulative(self, X: pd.DataFrame, horizons: list[int] | np.ndarray) -> np.ndarray:
        """P(won within h days) for each row and each horizon h: shape (rows, horizons)."""
        return cumulative(self, X, horizons)


def with_horizon(X: pd.DataFrame, horizon: np.ndarray | int) -> pd.DataFrame:
    """``X`` with a ``horizon_days`` column (one value, or one per row)."""
    out = X.copy()
    out[HORIZON] = np.broadcast_to(np.asarray(horizon, dtype="float64"), (len(X),))
    return out


def cumulative(model: Any, X: pd.DataFrame, horizons: list[int] | np.ndarray) -> np.ndarray:
    """P(won within h days) from any fitted slip estimator (plain or calibrated)."""
    hs = np.asarray(horizons, dtype="float64")
    if len(X) == 0:
        return np.zeros((0, len(hs)))
    stacked = pd.concat([with_horizon(X, h) for h in hs], ignore_index=True)
    p = model.predict_proba(stacked)[:, 1].reshape(len(hs), len(X)).T
    return np.maximum.accumulate(p, axis=1)  # calibration keeps order; guard float ties
