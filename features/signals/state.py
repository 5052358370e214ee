"""State columns of :func:`features.signals.pointintime.deal_states` passed through as signals."""

from __future__ import annotations

from features.data.schema import TRACKED_FIELDS
from features.signals.pointintime import known_column
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
    "1 if every tracked field (amount, dates, category, next step) is known as of the date",
    SignalKind.FLAG,
)
for _field in TRACKED_FIELDS:
    declare(
        known_column(_field),
        f"1 if the {_field.replace('_', ' ')} as of the date is known (dated history covers it, "
        "or the date is at or after the export)",
        SignalKind.FLAG,
    )
