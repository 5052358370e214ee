"""Calendar helpers: "as of" timestamps, quarters as ``YYYYQn`` labels and their bounds (calendar
quarters), and the one day arithmetic every fact uses.

Days are whole calendar days between the *dates* of two timestamps: ``as_of`` 30 June 23:59 minus
30 June 08:00 is 0 days, minus 29 June 23:59 is 1 day. Signals, metrics, hygiene and the review
pack all count days with :func:`days_between`, so a threshold such as "60 days without activity"
means the same thing everywhere.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd

from features.errors import InputError

TimeLike = date | datetime | pd.Timestamp | str

# Years pipecast accepts anywhere (imports, as-of dates, API queries): far enough for any CRM
# history and any plan, inside what pandas can represent (up to 2262) with room for the quarter
# and year windows computed around a date.
YEAR_RANGE = (1900, 2199)
FIRST_DATE = pd.Timestamp(f"{YEAR_RANGE[0]}-01-01")
LAST_DATE = pd.Timestamp(f"{YEAR_RANGE[1]}-12-31 23:59:59.999999")

US_PER_DAY = 86_400_000_000
# int64 microseconds of a missing timestamp (numpy's NaT).
NAT = np.iinfo(np.int64).min


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


def parse_when(value: TimeLike, what: str) -> pd.Timestamp:
    """A user's date or timestamp (``YYYY-MM-DD``: the end of that day), checked.

    ``what`` names the option or field in the :class:`~features.errors.InputError` raised for
    an empty value, a value that is not a date, or one outside ``FIRST_DATE..LAST_DATE``.
    """
    if isinstance(value, str) and not value.strip():
        raise InputError(f"{what}: empty; give a date such as 2025-06-30", field=what)
    shown = repr(value.isoformat() if isinstance(value, date) else value)
    out_of_range = InputError(
        f"{what}: {shown} is outside the supported range "
        f"{FIRST_DATE:%Y-%m-%d}..{LAST_DATE:%Y-%m-%d}",
        field=what,
    )
    try:
        ts = to_timestamp(value.strip() if isinstance(value, str) else value)
    except (pd.errors.OutOfBoundsDatetime, OverflowError):
        raise out_of_range from None
    except ValueError as err:
        raise InputError(
            f"{what}: cannot read {value!r} as a date (YYYY-MM-DD or ISO timestamp): {err}",
            field=what,
        ) from None
    if pd.isna(ts):
        raise InputError(f"{what}: cannot read {value!r} as a date", field=what)
    if not FIRST_DATE <= ts <= LAST_DATE:
        raise out_of_range
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


# --- day arithmetic -------------------------------------------------------------------------------
def micros(values: Any) -> np.ndarray:
    """Timestamps (a scalar, a sequence or a Series) as int64 microseconds (NaT -> :data:`NAT`)."""
    if isinstance(values, pd.Series | np.ndarray) and values.ndim == 1 and values.dtype == _US:
        # Already microseconds (what the signals pass): the parse below costs ~1 ms a call,
        # which a one-deal what-if pays hundreds of times.
        return np.array(values, dtype=_US).view("int64")
    arr = pd.to_datetime(pd.Series(values)).astype("datetime64[us]").to_numpy()
    return arr.view("int64")


_US = np.dtype("datetime64[us]")


def day_number(values: Any) -> np.ndarray:
    """Calendar day number (days since 1970-01-01) of each timestamp as float, NaN for missing."""
    us = micros(values)
    out = np.floor_divide(us, US_PER_DAY).astype("float64")
    out[us == NAT] = np.nan
    return out


def days_between(later: Any, earlier: Any) -> pd.Series:
    """Whole calendar days from ``earlier`` to ``later``, element-wise (NaN where one is missing).

    Either side may be a scalar. The result is positional (a fresh 0..n-1 index): pass
    ``.to_numpy()`` or re-index it to line it up with a frame.
    """
    return pd.Series(day_number(later) - day_number(earlier))
