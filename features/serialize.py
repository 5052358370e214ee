"""Result objects as plain JSON values: one converter for every report (metrics, hygiene, review).

Frozen dataclasses, dates, enums and numpy scalars become dicts, ISO strings, values and Python
numbers; NaN, NaT and NA become ``None`` so ``json.dumps(..., allow_nan=False)`` always works.

:data:`UtcDatetime` is the one rule for timestamps in JSON answers: the store holds naive UTC
times (``features.data.schema``), so a report's timestamp is naive in Python and carries its
``Z`` offset only when serialized to JSON (RFC 3339 ``date-time`` requires one). Calendar dates
(an expected close date) are ``date`` fields, never midnight timestamps.
"""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, date, datetime
from enum import Enum
from typing import Annotated, Any

import numpy as np
import pandas as pd
from pydantic import PlainSerializer


def as_utc(value: datetime) -> datetime:
    """A stored (naive UTC) timestamp as an aware UTC one; an aware one converted to UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Naive UTC in Python (feature code compares it with store timestamps), ``...Z`` in JSON.
UtcDatetime = Annotated[datetime, PlainSerializer(as_utc, return_type=datetime, when_used="json")]


def jsonable(obj: Any) -> Any:
    """Dataclasses, dates, enums and numpy scalars as plain JSON values (NaN -> None)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, pd.Timestamp):
        return None if pd.isna(obj) else obj.isoformat()
    if isinstance(obj, datetime | date):
        return obj.isoformat()
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is pd.NaT or obj is pd.NA:
        return None
    return obj
