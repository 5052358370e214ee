"""Small helpers for assertions that several test modules share."""

from __future__ import annotations

from typing import Any, cast

import pandas as pd


def missing(cell: object) -> bool:
    """``pd.isna`` of one cell (pandas-stubs types a ``.loc`` cell wider than ``pd.isna``
    accepts, so a cell read from a frame is checked through here)."""
    return bool(pd.isna(cast(Any, cell)))
