"""Calibration of a fitted model on a later time window.

The model is fitted on the base window, frozen (:class:`~sklearn.frozen.FrozenEstimator`) and
calibrated on the later calibration window, so the calibration sees the drift between the two
(base rates move with the economy and the team) the way the model will meet it in use.

**Platt scaling (``sigmoid``) by default, on the model's log-odds.** LightGBM trained on log
loss is already close to calibrated on the period it was trained on; what a later window shows
is mostly a shift and a stretch of its log-odds, which is exactly the two parameters of Platt's
method. Isotonic regression can fix any monotone distortion, but with censoring weights (up to
1/``min_censoring_survival``) a few heavy rows move its steps, it turns scores into ties (reps see
different deals with the same probability and rankings lose resolution), and it needs far more
rows than two parameters do. ``calibration: isotonic`` in the recipe chooses it anyway; both
are tested on a time-shifted window.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator


def calibrate(
    model: Any,
    X: pd.DataFrame,
    y: np.ndarray,
    *,
    sample_weight: np.ndarray | None = None,
    method: Literal["sigmoid", "isotonic"] = "sigmoid",
) -> CalibratedClassifierCV:
    """Calibrate the fitted ``model`` on rows ``X`` (a later window) with labels ``y``."""
    calibrated = CalibratedClassifierCV(FrozenEstimator(model), method=method)
    with warnings.catch_warnings():
        # The frozen model is not refitted, so the weights are only for the calibrator: wanted.
        warnings.filterwarnings("ignore", message=".*FrozenEstimator does not appear to accept")
        calibrated.fit(X, np.asarray(y, dtype=int), sample_weight=sample_weight)
    return calibrated


def base_model(calibrated: Any) -> Any:
    """The fitted model inside a calibrated one (for its contributions and importances)."""
    inner = getattr(calibrated, "estimator", calibrated)
    return getattr(inner, "estimator", inner)
