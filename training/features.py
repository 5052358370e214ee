"""Which snapshot columns are model features, and how they are encoded for LightGBM.

Features are the point-in-time signals of :data:`features.signals.SIGNALS` and the custom columns
mapped in at import, minus identifiers (never features) and two signals that count closes since
the start of the data (``owner_n_closed``, ``team_n_closed``): they grow with the calendar, so a
tree model reads them as a clock and extrapolates badly to later quarters. The absolute win rates
and median cycles of reps and teams drift the same way (in the first year only quick closes are
in: on 20k generated deals the mean rep win rate went from 0.17 to 0.37 and the median cycle from
39 to 82 days over the first six quarters), so the models read a rep's and a team's standing
against the company's as of the date instead (``*_win_rate_vs_company``, ``*_cycle_vs_company``).

:class:`SnapshotEncoder` fixes everything learned from data at fit time (the categories of each
categorical column, which custom columns hold dates), so training and serving encode alike:

- categorical signals and text custom columns become pandas ``category`` columns with the
  categories seen at fit (rare ones, and values first seen later, become ``(other)``);
- a custom column holding dates (a "contract sent date") becomes days since that date, and is
  missing while the date is still after as-of: the export's value would tell the future;
- a custom column the stage configuration requires in stage *k* (``custom:decision_criteria``)
  is missing on rows still before stage *k*: it is filled when the deal gets there, so its
  exported value on an earlier row says the deal got there;
- missing numbers stay missing (NaN): LightGBM learns at each split where unknowns go, and the
  ``*_known`` flags tell it *why* a value is missing (a deals-only import), instead of a guess.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from features.data.schema import CUSTOM_PREFIX
from features.data.stages import StageConfig
from features.signals import SIGNALS, SignalKind
from training.datasets import check_feature_columns

# Counts of closes since the data began: a clock, not a property of the deal; and the absolute
# track-record levels, which drift with the calendar (module docstring).
NON_STATIONARY = frozenset(
    {
        "owner_n_closed",
        "team_n_closed",
        "owner_win_rate",
        "team_win_rate",
        "owner_median_cycle_days",
        "team_median_cycle_days",
    }
)
OTHER = "(other)"


def candidate_features(columns: list[str], exclude: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Signals (registry order) and custom columns present in ``columns``, minus exclusions."""
    present = set(columns)
    names = [s for s in SIGNALS if s in present and s not in NON_STATIONARY]
    names += [c for c in columns if c.startswith(CUSTOM_PREFIX) and c not in names]
    return [n for n in names if n not in set(exclude)]


def custom_stage_orders(stages: StageConfig) -> dict[str, float]:
    """``custom_<name>`` -> order of the first stage whose required fields ask for it."""
    out: dict[str, float] = {}
    for stage in sorted(stages.stages, key=lambda s: s.order):
        for req in stage.required_fields:
            if req.field.startswith("custom:"):
                out.setdefault(CUSTOM_PREFIX + req.field.split(":", 1)[1], float(stage.order))
    return out


def _is_categorical(name: str, values: pd.Series) -> bool:
    spec = SIGNALS.get(name)
    if spec is not None:
        return spec.kind is SignalKind.CATEGORY
    return not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)


def _looks_like_dates(values: pd.Series) -> bool:
    text = values.dropna().astype(str)
    if text.empty:
        return False
    parsed = pd.to_datetime(text, errors="coerce", format="mixed")
    return bool(parsed.notna().mean() >= 0.9) and bool(text.str.contains(r"\d{4}").mean() >= 0.9)


@functools.lru_cache(maxsize=256)
def _category_dtype(cats: tuple[str, ...]) -> pd.CategoricalDtype:
    return pd.CategoricalDtype(list(cats))


@functools.lru_cache(maxsize=256)
def _category_codes(cats: tuple[str, ...]) -> dict[str, int]:
    """Code of each known category (not ``(other)``, the last: a value spelled so is other)."""
    return {c: i for i, c in enumerate(cats[:-1])}


class SnapshotEncoder(TransformerMixin, BaseEstimator):
    """Select and encode feature columns of snapshot rows (see the module docstring).

    Parameters
    ----------
    features : list of str or None
        Columns to use; None takes :func:`candidate_features` of the frame given to ``fit``.
    exclude : list of str
        Columns never to use.
    known_from_stage : dict or None
        ``custom_<name>`` -> stage order from which its value is known (see
        :func:`custom_stage_orders`).
    min_category_count : int
        Categories seen fewer times at fit become ``(other)``.
    """

    def __init__(
        self,
        *,
        features: list[str] | None = None,
        exclude: list[str] | tuple[str, ...] = (),
        known_from_stage: dict[str, float] | None = None,
        min_category_count: int = 20,
    ) -> None:
        self.features = features
        self.exclude = exclude
        self.known_from_stage = known_from_stage
        self.min_category_count = min_category_count

    def fit(self, X: pd.DataFrame, y: Any = None) -> SnapshotEncoder:
        cols = list(self.features) if self.features is not None else None
        names = cols if cols is not None else candidate_features(list(X.columns), self.exclude)
        check_feature_columns(names)
        missing = [n for n in names if n not in X.columns]
        if missing:
            raise KeyError(f"feature column(s) {missing} are not in the snapshot rows")
        self.date_columns_ = [
            n for n in names if n.startswith(CUSTOM_PREFIX) and _looks_like_dates(X[n])
        ]
        self.categories_: dict[str, list[str]] = {}
        for n in names:
            if n in self.date_columns_ or not _is_categorical(n, X[n]):
                continue
            counts = X[n].dropna().astype(str).value_counts()
            keep = sorted(counts[counts >= self.min_category_count].index.tolist())
            self.categories_[n] = [*keep, OTHER]
        self.feature_names_ = names
        self.n_features_in_ = len(names)
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        return self.transform_columns(X, self.feature_names_)

    def transform_columns(self, X: pd.DataFrame, names: list[str]) -> pd.DataFrame:
        """:meth:`transform`'s columns ``names`` only (features all)."""
        check_is_fitted(self, "feature_names_")
        out: dict[str, Any] = {}
        for n, values in self._columns(X, names):
            out[n] = (
                pd.Categorical.from_codes(values, dtype=_category_dtype(tuple(self.categories_[n])))
                if n in self.categories_
                else values
            )
        frame = pd.DataFrame(out, index=X.index)
        for col, known in self._stage_masks(X, names):
            frame[col] = frame[col].where(known)
        return frame

    def transform_matrix(self, X: pd.DataFrame) -> np.ndarray:
        """:meth:`transform` as the float64 matrix LightGBM reads from that frame: a category is
        its code, missing values (and unknown categories' code -1) NaN. The same numbers without
        building the frame LightGBM would convert, which is most of scoring a single deal."""
        check_is_fitted(self, "feature_names_")
        out = np.empty((len(X), len(self.feature_names_)), dtype="float64")
        for j, (n, values) in enumerate(self._columns(X, self.feature_names_)):
            if n in self.categories_:
                codes = np.asarray(values)
                out[:, j] = np.where(codes < 0, np.nan, codes)
            else:
                out[:, j] = np.asarray(values, dtype="float64")
        for col, known in self._stage_masks(X, self.feature_names_):
            j = self.feature_names_.index(col)
            out[~known, j] = np.nan
        return out

    def _columns(self, X: pd.DataFrame, names: list[str]) -> Iterator[tuple[str, Any]]:
        """Each feature's encoded values before the stage mask: category codes (-1: missing)
        for categorical columns, float64 values for the others."""
        as_of = pd.to_datetime(X["as_of"]) if "as_of" in X.columns else None
        for n in names:
            values = X[n] if n in X.columns else pd.Series(np.nan, index=X.index)
            if n in self.date_columns_:
                yield n, self._days_since(values, as_of)
            elif n in self.categories_:
                yield n, self._category_codes(n, values)
            elif values.dtype == np.float64:  # most signals already are: skip the parse
                yield n, values
            else:
                yield n, pd.to_numeric(values, errors="coerce").astype("float64")

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        check_is_fitted(self, "feature_names_")
        return np.asarray(self.feature_names_, dtype=object)

    # --- encodings ---------------------------------------------------------------------------
    def _category_codes(self, name: str, values: pd.Series) -> np.ndarray:
        """Values as text, coded by the categories seen at fit (-1: missing); unseen ones as
        ``(other)``.

        Coded by hand rather than with ``pd.Categorical(values, categories=...)``: that built
        and checked the categories on every call, a third of scoring one deal."""
        cats = self.categories_[name]
        code = _category_codes(tuple(cats))
        other = len(cats) - 1
        raw = values.to_numpy(dtype=object)
        missing = pd.isna(raw)
        return np.array(
            [-1 if m else code.get(str(v), other) for v, m in zip(raw, missing, strict=True)],
            dtype=np.int64,
        )

    @staticmethod
    def _days_since(values: pd.Series, as_of: pd.Series | None) -> pd.Series:
        if as_of is None:
            raise KeyError("date-valued custom columns need the snapshot's as_of column")
        when = pd.to_datetime(values.astype(object), errors="coerce", format="mixed")
        days = (as_of.dt.normalize() - when.dt.normalize()).dt.days.astype("float64")
        return days.where(days >= 0)  # a date after as-of had not happened yet

    def _stage_masks(self, X: pd.DataFrame, names: list[str]) -> Iterator[tuple[str, np.ndarray]]:
        """Per custom column required from a stage on: which rows are at that stage or later
        (an unknown stage, a deals-only import, leaves the value's age unknown too)."""
        orders = self.known_from_stage or {}
        if not orders or "stage_order" not in X.columns:
            return
        stage = pd.to_numeric(X["stage_order"], errors="coerce").to_numpy(dtype="float64")
        for col, order in orders.items():
            if col in names:
                yield col, stage >= order
