"""What a store holds, at a glance: deals per stage and the open pipeline at the export time.

``pipecast summary`` prints it; it reads the current deal rows (the state at ``observed_at``), not
a point-in-time rebuild. Works on any store: empty, or from a deals-only export without amounts
(values are then unknown, not zero).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from features.data.schema import Outcome
from features.data.stages import StageConfig


@dataclass(frozen=True)
class StageCount:
    """Deals whose current row is in one stage; ``value`` is None when no amount is known."""

    stage: str
    label: str
    order: int | None
    deals: int
    value: float | None
    with_amount: int


@dataclass(frozen=True)
class StoreSummary:
    """Deals by stage in process order (stages the configuration lacks come last)."""

    stages: list[StageCount]
    deals: int
    open_deals: int
    open_value: float | None
    open_with_amount: int
    as_of: pd.Timestamp | None


def _value(amounts: pd.Series) -> float | None:
    known = amounts.dropna()
    return float(known.sum()) if len(known) else None


def summarize(deals: pd.DataFrame, stages: StageConfig) -> StoreSummary:
    """Count and value the current deal rows by stage."""
    by_key = stages.by_key
    rows: list[StageCount] = []
    for key, group in deals.groupby("stage", observed=True, sort=False):
        stage = str(key)
        known = by_key.get(stage)
        rows.append(
            StageCount(
                stage=stage,
                label=known.label if known else stage,
                order=known.order if known else None,
                deals=len(group),
                value=_value(group["amount"]),
                with_amount=int(group["amount"].notna().sum()),
            )
        )
    last = len(by_key) + 1
    rows.sort(key=lambda r: (r.order if r.order is not None else last, r.stage))
    open_deals = deals[deals["outcome"] == Outcome.OPEN.value]
    observed = deals["observed_at"].max() if len(deals) else None
    return StoreSummary(
        stages=rows,
        deals=len(deals),
        open_deals=len(open_deals),
        open_value=_value(open_deals["amount"]),
        open_with_amount=int(open_deals["amount"].notna().sum()),
        as_of=None if observed is None or pd.isna(observed) else pd.Timestamp(observed),
    )
