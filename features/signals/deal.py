"""Deal-field signals: amount and its changes, competition, close date and its pushes, next step."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.data.schema import HistorySource
from features.data.stages import StageConfig
from features.signals.events import (
    EventIndex,
    codes,
    day_number,
    days_between,
    flag,
    nan_where,
    parse_number,
)
from features.signals.pointintime import states_a_value, tracked_since
from features.signals.registry import SignalKind, node, signal


@signal("1 if a competitor is known (current value, assumed known from creation)", SignalKind.FLAG)
def competitor_present(competitor: pd.Series) -> pd.Series:
    named = competitor.notna() & (competitor.astype(object).astype(str).str.strip() != "")
    return flag(named.to_numpy())


@signal("log(1 + amount): deal size on the scale models need", needs_history=True)
def amount_log1p(amount: pd.Series) -> pd.Series:
    return pd.Series(np.log1p(amount.astype("float64").clip(lower=0).to_numpy()))


@signal("1 if the deal's change history was exported (0 on deals-only imports)", SignalKind.FLAG)
def field_changes_known(history_source: pd.Series) -> pd.Series:
    return flag(history_source.to_numpy() != HistorySource.DERIVED.value)


@node
def field_tracked_since(field_history: pd.DataFrame) -> dict[str, pd.Timestamp]:
    return tracked_since(field_history)


def _changes_known(
    field: str,
    since: dict[str, pd.Timestamp],
    created_at: pd.Series,
    field_changes_known: pd.Series,
) -> np.ndarray:
    """A field's changes since creation are countable only if it was tracked from the deal's
    creation on: a count over a partly logged life would pass a guess off as a fact."""
    first = since.get(field)
    if first is None:
        return np.zeros(len(created_at), dtype=bool)
    created = created_at.astype("datetime64[us]").to_numpy()
    return (field_changes_known.to_numpy() == 1) & (created >= np.datetime64(first, "us"))


@node
def amount_changes_known(
    field_tracked_since: dict[str, pd.Timestamp],
    created_at: pd.Series,
    field_changes_known: pd.Series,
) -> np.ndarray:
    return _changes_known("amount", field_tracked_since, created_at, field_changes_known)


@node
def close_date_changes_known(
    field_tracked_since: dict[str, pd.Timestamp],
    created_at: pd.Series,
    field_changes_known: pd.Series,
) -> np.ndarray:
    return _changes_known(
        "expected_close_date", field_tracked_since, created_at, field_changes_known
    )


@node
def amount_changes(field_history: pd.DataFrame) -> pd.DataFrame:
    return field_history[field_history["field"] == "amount"].reset_index(drop=True)


@node
def amount_index(amount_changes: pd.DataFrame, deal_index: pd.Index) -> EventIndex:
    return EventIndex(codes(amount_changes["deal_id"], deal_index), amount_changes["changed_at"])


@signal("times the amount was changed from one amount to another", needs_history=True)
def amount_change_count(
    amount_changes: pd.DataFrame,
    amount_index: EventIndex,
    deal_code: np.ndarray,
    as_of: pd.Series,
    amount_changes_known: np.ndarray,
) -> pd.Series:
    """A row without an old value states an amount (the creation row of a snapshot history, a
    first amount): it changes none, and :func:`amount_change_since_creation` reads it as the
    creation amount."""
    changed = ~states_a_value(amount_changes)
    n = amount_index.total(changed, deal_code, as_of)
    return nan_where(n, ~amount_changes_known)


@signal("relative change of the amount since creation (0.1 = 10% up)", needs_history=True)
def amount_change_since_creation(
    amount_original: pd.Series,
    amount_changes: pd.DataFrame,
    amount_index: EventIndex,
    deal_code: np.ndarray,
    as_of: pd.Series,
    amount_changes_known: np.ndarray,
) -> pd.Series:
    """The creation amount is the old value of the first change, if one happened by as_of;
    otherwise the amount never changed and the current (as-of) amount is the creation amount.
    Both in the deal's own currency (the history's): a change of exchange rate is no change of
    the deal."""
    idx = amount_index
    start, end = idx.start(deal_code), idx.end(deal_code, as_of)
    old = parse_number(amount_changes["old_value"])
    new = parse_number(amount_changes["new_value"])
    # A change that sets a first amount (old missing) states the creation amount itself.
    first_values = np.append(np.where(np.isnan(old), new, old)[idx.rows], np.nan)
    now = amount_original.astype("float64").to_numpy()
    first = np.where(end > start, first_values[np.minimum(start, len(idx))], now)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(first > 0, now / first - 1.0, np.nan)
    return nan_where(rel, ~amount_changes_known)


# --- close date -----------------------------------------------------------------------------------
@node
def close_date_changes(field_history: pd.DataFrame) -> pd.DataFrame:
    fh = field_history[field_history["field"] == "expected_close_date"].reset_index(drop=True)
    old = day_number(pd.to_datetime(fh["old_value"], errors="coerce"))
    new = day_number(pd.to_datetime(fh["new_value"], errors="coerce"))
    push = new > old  # NaN compares False: setting a first date is not a push
    return fh.assign(push=push, slip_days=np.where(push, new - old, 0.0))


@node
def close_date_index(close_date_changes: pd.DataFrame, deal_index: pd.Index) -> EventIndex:
    cc = close_date_changes
    return EventIndex(codes(cc["deal_id"], deal_index), cc["changed_at"])


@signal("times the expected close date was moved later", needs_history=True)
def close_date_push_count(
    close_date_changes: pd.DataFrame,
    close_date_index: EventIndex,
    deal_code: np.ndarray,
    as_of: pd.Series,
    close_date_changes_known: np.ndarray,
) -> pd.Series:
    n = close_date_index.total(close_date_changes["push"].to_numpy(), deal_code, as_of)
    return nan_where(n, ~close_date_changes_known)


@signal("total days the expected close date was moved later", needs_history=True)
def close_date_slip_days(
    close_date_changes: pd.DataFrame,
    close_date_index: EventIndex,
    deal_code: np.ndarray,
    as_of: pd.Series,
    close_date_changes_known: np.ndarray,
) -> pd.Series:
    days = close_date_index.total(close_date_changes["slip_days"].to_numpy(), deal_code, as_of)
    return nan_where(days, ~close_date_changes_known)


@signal("days until the expected close date (negative: it is in the past)", needs_history=True)
def days_to_expected_close(as_of: pd.Series, expected_close_date: pd.Series) -> pd.Series:
    return days_between(expected_close_date, as_of)


@signal("days left in the calendar quarter of the date (0 on its last day)")
def days_left_in_quarter(as_of: pd.Series) -> pd.Series:
    last_day = as_of.dt.to_period("Q").dt.end_time.dt.normalize()
    return days_between(last_day, as_of)


# --- next step ------------------------------------------------------------------------------------
@signal("1 if a next step is written down", SignalKind.FLAG, needs_history=True)
def next_step_defined(next_step: pd.Series, next_step_known: pd.Series) -> pd.Series:
    text = next_step.astype(object).where(next_step.notna(), "").astype(str).str.strip()
    unknown = ~next_step_known.to_numpy(dtype=bool)
    return nan_where((text != "").astype("float64").to_numpy(), unknown)


@signal("days until the next-step date (negative: overdue; missing: no date)", needs_history=True)
def days_to_next_step(as_of: pd.Series, next_step_date: pd.Series) -> pd.Series:
    return days_between(next_step_date, as_of)


# --- forecast category ----------------------------------------------------------------------------
@node
def forecast_category_changes(field_history: pd.DataFrame) -> pd.DataFrame:
    return field_history[field_history["field"] == "forecast_category"].reset_index(drop=True)


@node
def forecast_category_index(
    forecast_category_changes: pd.DataFrame, deal_index: pd.Index
) -> EventIndex:
    fc = forecast_category_changes
    return EventIndex(codes(fc["deal_id"], deal_index), fc["changed_at"])


@node
def forecast_category_changes_known(
    field_tracked_since: dict[str, pd.Timestamp],
    created_at: pd.Series,
    field_changes_known: pd.Series,
) -> np.ndarray:
    return _changes_known("forecast_category", field_tracked_since, created_at, field_changes_known)


def _category_levels(values: pd.Series, stages: StageConfig) -> np.ndarray:
    """A forecast category as its configured minimum probability (commit 0.9, best case 0.5,
    pipeline 0); a category the configuration does not grade (omitted, closed) is missing."""
    levels = {name: c.min_probability for name, c in stages.forecast_categories.items()}
    return pd.Series(values.astype(object).map(levels), dtype="float64").to_numpy()


@signal(
    "average of every forecast category the deal was given up to the date, each as its "
    "configured minimum probability (pipeline 0, best case 0.5, commit 0.9)",
    needs_history=True,
)
def forecast_category_mean(
    forecast_category: pd.Series,
    forecast_category_changes: pd.DataFrame,
    forecast_category_index: EventIndex,
    deal_code: np.ndarray,
    as_of: pd.Series,
    forecast_category_changes_known: np.ndarray,
    stages: StageConfig,
) -> pd.Series:
    """The rep re-judges a deal at each step, each time with fresh noise: the average of those
    judgements says more than the latest alone. The values are the first change's old value (the
    category at creation) and the new value of every change up to as_of; with no change yet, the
    category as of the date is the only one."""
    idx = forecast_category_index
    start, end = idx.start(deal_code), idx.end(deal_code, as_of)
    new = _category_levels(forecast_category_changes["new_value"], stages)
    old = _category_levels(forecast_category_changes["old_value"], stages)
    graded = ~np.isnan(new)
    total = idx.total(np.nan_to_num(new), deal_code, as_of)
    count = idx.total(graded, deal_code, as_of)
    first_old = np.append(old[idx.rows], np.nan)[np.minimum(start, len(idx))]
    first = np.where(end > start, first_old, _category_levels(forecast_category, stages))
    has_first = ~np.isnan(first)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = (total + np.nan_to_num(first)) / (count + has_first)
    return nan_where(mean, ~forecast_category_changes_known)
