"""State columns of :func:`features.signals.pointintime.deal_states` passed through as signals."""

from __future__ import annotations

from features.signals.registry import SignalKind, declare

declare("stage", "stage key as of the date", SignalKind.CATEGORY, needs_history=True)
declare("stage_known", "1 if the stage as of the date is known", SignalKind.FLAG)
declare("amount", "deal value as of the date", needs_history=True)
declare(
    "forecast_category",
    "rep's forecast category as of the date",
    SignalKind.CATEGORY,
    needs_history=True,
)
declare(
    "segment", "market segment (current value, assumed known from creation)", SignalKind.CATEGORY
)
declare("product", "product line (current value, assumed known from creation)", SignalKind.CATEGORY)
declare(
    "history_known",
    "1 if tracked fields (amount, dates, category, next step) could be rebuilt as of the date",
    SignalKind.FLAG,
)
