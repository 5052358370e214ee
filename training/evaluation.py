"""Scores of probabilities against outcomes: a registry of metrics, groups, reliability diagrams.

Every metric takes censoring weights (see :mod:`training.datasets`): a weighted row stands for
the rows like it whose outcome was not known yet. Metrics:

- ``auc``: ranking (ROC AUC); NaN when a group holds one outcome only;
- ``brier``: mean squared error of the probability;
- ``log_loss``: probabilities clipped to [0.001, 0.999] for every method alike, so that a method
  stating a flat 0 or 1 (the rep's close date at face value) gets a large finite penalty;
- ``ece``: expected calibration error, |observed - predicted| over 10 equal-width bins, weighted
  by the bins' share of rows.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

Metric = Callable[[np.ndarray, np.ndarray, np.ndarray], float]
METRICS: dict[str, Metric] = {}
BINS = 10
CLIP = 1e-3


def metric(name: str) -> Callable[[Metric], Metric]:
    def register(fn: Metric) -> Metric:
        METRICS[name] = fn
        return fn

    return register


@metric("auc")
def auc(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> float:
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, p, sample_weight=w))


@metric("brier")
def brier(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> float:
    return float(np.average((p - y) ** 2, weights=w))


@metric("log_loss")
def log_loss(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> float:
    q = np.clip(p, CLIP, 1 - CLIP)
    return float(np.average(-(y * np.log(q) + (1 - y) * np.log(1 - q)), weights=w))


@metric("ece")
def ece(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> float:
    table = reliability_table(y, p, w)
    share = table["weight"] / table["weight"].sum()
    return float((share * (table["observed"] - table["predicted"]).abs()).sum())


def reliability_table(
    y: np.ndarray, p: np.ndarray, w: np.ndarray, bins: int = BINS
) -> pd.DataFrame:
    """Per probability bin: mean predicted, observed rate, total weight and rows."""
    which = np.minimum((np.asarray(p) * bins).astype(int), bins - 1)
    frame = pd.DataFrame({"bin": which, "p": p, "y": y, "w": w})
    frame["pw"], frame["yw"] = frame["p"] * frame["w"], frame["y"] * frame["w"]
    g = frame.groupby("bin").agg(
        pw=("pw", "sum"), yw=("yw", "sum"), weight=("w", "sum"), rows=("w", "size")
    )
    g = g[g["weight"] > 0]
    return pd.DataFrame(
        {
            "predicted": g["pw"] / g["weight"],
            "observed": g["yw"] / g["weight"],
            "weight": g["weight"],
            "rows": g["rows"],
        }
    ).reset_index()


def scores(
    y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None, names: tuple[str, ...] = ()
) -> dict[str, float]:
    """Every registered metric (or those named) of probabilities ``p`` against outcomes ``y``."""
    y = np.asarray(y, dtype="float64")
    p = np.asarray(p, dtype="float64")
    w = np.ones(len(y)) if w is None else np.asarray(w, dtype="float64")
    if len(y) == 0 or w.sum() <= 0:
        return {n: float("nan") for n in names or METRICS}
    return {n: METRICS[n](y, p, w) for n in names or METRICS}


def grouped_scores(
    y: np.ndarray,
    p: np.ndarray,
    w: np.ndarray,
    groups: pd.Series,
    names: tuple[str, ...] = (),
) -> dict[str, dict[str, float | int]]:
    """:func:`scores` per group value (e.g. per stage), with the group's row count."""
    out: dict[str, dict[str, float | int]] = {}
    keys = groups.astype(object).where(groups.notna(), "(unknown)").to_numpy()
    for key in sorted(pd.unique(keys), key=str):
        at = keys == key
        out[str(key)] = {**scores(y[at], p[at], w[at], names), "rows": int(at.sum())}
    return out


def plot_reliability(
    curves: dict[str, pd.DataFrame], path: Path, title: str = "Reliability"
) -> Path:
    """Observed against predicted per bin, one line per method; the diagonal is perfect."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfectly calibrated")
    for name, table in curves.items():
        ax.plot(table["predicted"], table["observed"], marker="o", ms=3, label=name)
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed frequency (censoring-weighted)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
