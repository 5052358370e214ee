"""Training snapshots: every open deal at many past dates, with its signals and what happened later.

A model learns "given what we knew at ``as_of``, did the deal win (this quarter)?". So the rows are
point-in-time signals from :mod:`features.signals` (which never read past ``as_of``), and the
labels are joined on afterwards by :func:`outcome_labels`, the only code here that reads the
future. Keeping them apart lets a test swap the future and show the signals do not move.

A deal entered in the CRM after it closed (``deals.entered_after_close``) has no rows: it was
never open there, so no model could have scored it.

Censoring: a deal still open at the end of the data (its ``observed_at``, the export time) has no
outcome yet. Its labels are missing and ``censored`` is 1; it is never counted as a loss.

A won or lost deal without ``closed_at`` (a deals-only export lacking close dates) closed at an
unknown time by its ``observed_at`` (:func:`features.signals.pointintime.closing_time`): its
``days_to_close`` is missing, and a won one is ``closed_won_by_quarter_end`` 1 only for quarters
ending at or after ``observed_at`` (missing for earlier ones: it may or may not have closed by
then).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import date
from typing import Any

import numpy as np
import pandas as pd

from features.data.calendar import TimeLike, to_timestamp
from features.data.schema import CanonicalTables, Outcome, entered_after_close
from features.data.stages import StageConfig
from features.signals.driver import compute_signals

LABELS: dict[str, str] = {
    "won": "1 if the deal was won, 0 if lost, missing if still open at the end of the data",
    "closed_won_by_quarter_end": "1 if won by the end of the snapshot's quarter, 0 if not, "
    "missing if still open at the end of the data and the quarter ends after it",
    "days_to_close": "days from the snapshot to the close (won or lost), missing if censored",
    "censored": "1 if the deal was still open at the end of the data",
}

Progress = Callable[[int, int], None]


def data_end(tables: CanonicalTables) -> pd.Timestamp:
    """The last moment the data speaks for: the latest export time of any deal."""
    return pd.Timestamp(pd.to_datetime(tables.deals["observed_at"]).max())


def snapshot_dates(start: TimeLike, end: TimeLike, freq: str = "W-MON") -> list[pd.Timestamp]:
    """The snapshot instants: each date of ``freq`` in [start, end], taken at the end of its day
    (like ``--as-of``: everything stamped that day is known)."""
    first, last = pd.Timestamp(to_timestamp(start)).normalize(), to_timestamp(end)
    days = pd.date_range(first, last.normalize(), freq=freq)
    return [to_timestamp(date(d.year, d.month, d.day)) for d in days]


def outcome_labels(keys: pd.DataFrame, deals: pd.DataFrame) -> pd.DataFrame:
    """Labels for (deal_id, as_of) rows from each deal's final outcome: the only future read.

    Returns won, closed_won_by_quarter_end, days_to_close and censored, aligned with ``keys``.
    """
    cur = deals.set_index("deal_id")
    ids = keys["deal_id"]
    as_of = pd.to_datetime(keys["as_of"]).astype("datetime64[us]").reset_index(drop=True)
    outcome = cur["outcome"].reindex(ids).to_numpy()
    closed_at = pd.Series(pd.to_datetime(cur["closed_at"].reindex(ids).to_numpy()))
    closed_at = closed_at.astype("datetime64[us]")
    horizon = pd.Series(pd.to_datetime(cur["observed_at"].reindex(ids).to_numpy()))
    horizon = horizon.astype("datetime64[us]")

    won = outcome == Outcome.WON.value
    lost = outcome == Outcome.LOST.value
    censored = ~(won | lost)
    quarter_end = as_of.dt.to_period("Q").dt.end_time.astype("datetime64[us]")

    won_label = np.where(censored, np.nan, won.astype("float64"))
    # a won deal without a close date closed by its observed_at, when is unknown
    won_by = closed_at.fillna(horizon).where(won)
    by_quarter = np.where((won_by <= quarter_end).to_numpy(), 1.0, 0.0)
    # Still open at the end of the data: we only know it missed quarters that ended by then.
    unknown = censored & (quarter_end > horizon).to_numpy()
    unknown |= won & closed_at.isna().to_numpy() & (quarter_end < horizon).to_numpy()
    by_quarter = np.where(unknown, np.nan, by_quarter)
    day = np.timedelta64(1, "D")
    days = (closed_at.dt.normalize() - as_of.dt.normalize()).to_numpy() / day
    days_to_close = np.where(censored, np.nan, days)
    return pd.DataFrame(
        {
            "won": won_label,
            "closed_won_by_quarter_end": by_quarter,
            "days_to_close": days_to_close.astype("float64"),
            "censored": censored.astype("float64"),
        }
    )


def _never_open_dropped(signals: pd.DataFrame, tables: CanonicalTables) -> pd.DataFrame:
    """Rows of deals entered after they closed removed (the module docstring says why)."""
    never_open = entered_after_close(tables.deals, signals["deal_id"])
    return signals.loc[~never_open].reset_index(drop=True) if never_open.any() else signals


def _chunks(dates: list[pd.Timestamp], size: int) -> Iterable[list[pd.Timestamp]]:
    for i in range(0, len(dates), size):
        yield dates[i : i + size]


def build_snapshots(
    tables: CanonicalTables,
    stages: StageConfig,
    *,
    start: TimeLike,
    end: TimeLike,
    freq: str = "W-MON",
    custom: Iterable[str] = (),
    chunk_dates: int = 26,
    progress: Progress | None = None,
    static_custom: Iterable[str] = (),
) -> pd.DataFrame:
    """One row per deal open at each snapshot date in [start, end]: signals, then the labels.

    Dates after the end of the data are dropped (nothing is known there yet). Dates are processed
    ``chunk_dates`` at a time to bound memory; ``progress(done, total)`` is called per chunk.
    ``custom`` and ``static_custom`` are passed to
    :func:`~features.signals.driver.compute_signals` (custom columns are missing before the
    export unless declared fixed at creation).
    """
    horizon = data_end(tables)
    dates = [d for d in snapshot_dates(start, end, freq) if d <= horizon]
    custom = list(custom)
    static_custom = list(static_custom)
    parts: list[pd.DataFrame] = []
    cache: dict[str, Any] = {}  # event indexes, built once for all chunks
    done = 0
    for chunk in _chunks(dates, max(chunk_dates, 1)):
        signals = compute_signals(
            tables,
            chunk,
            stages,
            open_only=True,
            custom=custom,
            static_custom=static_custom,
            cache=cache,
        )
        signals = _never_open_dropped(signals, tables)
        labels = outcome_labels(signals[["deal_id", "as_of"]], tables.deals)
        parts.append(pd.concat([signals, labels], axis=1))
        done += len(chunk)
        if progress is not None:
            progress(done, len(dates))
    if not parts:
        empty = compute_signals(tables, [], stages, custom=custom, static_custom=static_custom)
        return pd.concat([empty, outcome_labels(empty[["deal_id", "as_of"]], tables.deals)], axis=1)
    return pd.concat(parts, ignore_index=True)
