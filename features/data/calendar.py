"""Fiscal calendar helpers: quarters as ``YYYYQn`` labels and their bounds (calendar quarters)."""

from __future__ import annotations

from datetime import date, datetime

import pandas as pd

TimeLike = date | datetime | pd.Timestamp | str


def to_timestamp(value: TimeLike) -> pd.Timestamp:
    """A naive UTC timestamp; a bare date (or ``YYYY-MM-DD``) means the *end* of that day.

    "As of 30 June" includes everything that happened on 30 June.
    """
    if isinstance(value, str) and len(value) == 10:
        value = date.fromisoformat(value)
    if isinstance(value, date) and not isinstance(value, datetime):
        return pd.Timestamp(value) + pd.Timedelta(days=1) - pd.Timedelta(microseconds=1)
    ts = pd.Timestamp(value)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts


def quarter_of(ts: TimeLike) -> str:
    t = pd.Timestamp(ts)
    return f"{t.year}Q{(t.month - 1) // 3 + 1}"


def quarter_labels(values: pd.Series) -> pd.Series:
    """Vectorised :func:`quarter_of` (NaT stays missing)."""
    s = pd.to_datetime(values)
    out = s.dt.year.astype("Int64").astype(str) + "Q" + s.dt.quarter.astype("Int64").astype(str)
    return out.where(s.notna())


def quarter_bounds(quarter: str) -> tuple[pd.Timestamp, pd.Timestamp]:
    """First instant and last instant of a quarter label such as ``2025Q3``."""
    year, q = int(quarter[:4]), int(quarter[5])
    start = pd.Timestamp(year=year, month=3 * (q - 1) + 1, day=1)
    end = start + pd.DateOffset(months=3) - pd.Timedelta(microseconds=1)
    return start, pd.Timestamp(end)


def quarter_end(ts: TimeLike) -> pd.Timestamp:
    return quarter_bounds(quarter_of(ts))[1]


def previous_quarter(quarter: str) -> str:
    year, q = int(quarter[:4]), int(quarter[5])
    return f"{year - 1}Q4" if q == 1 else f"{year}Q{q - 1}"
