"""Point-in-time deal signals: what a model (or a rep) could know about an open deal at ``as_of``.

One module serves training (weekly snapshots over years) and serving (today's open deals), so the
two cannot drift apart. It is written Hamilton style: every signal is a function named after its
output column whose parameters are named after its inputs (state columns from
:func:`features.signals.pointintime.deal_states`, the event tables, or other signals). A
small driver, :func:`compute_signals`, resolves the functions and returns one row per (deal, as_of).

Rules that keep it honest:

- every event table is read through "stamped on or before ``as_of``" queries (``EventIndex``);
  nothing stamped later changes a signal (``tests/test_signals.py`` proves it with Hypothesis);
- rep and team statistics count only deals closed on or before ``as_of`` and are shrunk toward
  the overall rate as of that date (a beta prior), so a rep with two closes is not 0% or 100%;
- days are whole calendar days (``as_of`` 30 June 23:59 minus 30 June 08:00 is 0 days), and an
  activity window of 14 days at ``as_of`` covers ``(as_of - 14 days, as_of]``;
- on a deals-only import (``history_source == 'derived'``) the past of a deal was never exported:
  signals that need it come out missing, flagged by ``history_known`` (tracked fields as of the
  date), ``field_changes_known`` (change counts) and ``stage_entry_known`` (days in stage) —
  never invented.

Static attributes (segment, product, competitor, ``custom_*``) are the deal row's current values;
they are assumed known from creation. Custom columns are included only when the caller lists them.

Everything is set-based: sorted composite keys and ``np.searchsorted``, no loop per deal. The only
loop is one ``np.median`` per (rep or team, distinct close count), which is small.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from features.data.schema import CUSTOM_PREFIX, CanonicalTables
from features.data.stages import StageConfig
from features.signals.events import codes, flag
from features.signals.pointintime import deal_states
from features.signals.registry import SIGNALS, execute

# Family modules register their signals on import; this order is the column order.
# isort: off
from features.signals import state, stage, activity, stakeholders, deal, track_record  # noqa: F401
# isort: on

# --- driver ---------------------------------------------------------------------------------------
_STATE_INPUTS = (
    "stage",
    "stage_entered_at",
    "created_at",
    "amount",
    "expected_close_date",
    "forecast_category",
    "next_step",
    "next_step_date",
    "competitor",
    "segment",
    "product",
    "owner",
    "team",
    "history_known",
    "stage_known",
)


# Inputs that vary with the rows; every other node depends on the tables only (reusable).
ROW_INPUTS = frozenset({"as_of", "deal_code", "history_source", *_STATE_INPUTS})


def custom_column_names(deals: pd.DataFrame, custom: Iterable[str]) -> list[str]:
    """Resolve ``industry`` or ``custom_industry`` to deal columns; unknown names fail loudly."""
    names = []
    for name in custom:
        col = name if name.startswith(CUSTOM_PREFIX) else CUSTOM_PREFIX + name
        if col not in deals.columns:
            known = [c for c in deals.columns if c.startswith(CUSTOM_PREFIX)]
            raise KeyError(f"custom column {col!r} is not in deals; mapped custom columns: {known}")
        names.append(col)
    return names


def compute_signals(
    tables: CanonicalTables,
    as_of_dates: Iterable[pd.Timestamp] | pd.Timestamp,
    stages: StageConfig,
    *,
    open_only: bool = True,
    deal_ids: Iterable[str] | None = None,
    custom: Iterable[str] = (),
    cache: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Signals of every (open) deal at each date: columns deal_id, as_of, owner, team, then
    :data:`SIGNALS` in registry order, then the listed ``custom_*`` columns (static attributes).

    ``deal_ids`` restricts the rows; rep and team statistics still use every deal. ``cache``
    (an empty dict at first) keeps table-level indexes between calls on the *same* tables.
    """
    deals = tables.deals
    subset = tables
    if deal_ids is not None:
        subset = replace(tables, deals=deals[deals["deal_id"].isin(list(deal_ids))])
    dates = [as_of_dates] if isinstance(as_of_dates, pd.Timestamp) else list(as_of_dates)
    states = deal_states(subset, dates, stages, open_only=open_only)
    all_deals = deals.reset_index(drop=True)
    index = pd.Index(all_deals["deal_id"])
    code = codes(states["deal_id"], index)
    inputs: dict[str, Any] = {
        "deals": all_deals,
        "deal_index": index,
        "deal_code": code,
        "stages": stages,
        "activities": tables.activities.reset_index(drop=True),
        "stakeholders": tables.stakeholders.reset_index(drop=True),
        "field_history": tables.field_history.reset_index(drop=True),
        "as_of": states["as_of"].astype("datetime64[us]").reset_index(drop=True),
        "history_source": pd.Series(all_deals["history_source"].to_numpy()[code]),
    }
    for col in _STATE_INPUTS:
        inputs[col] = states[col].reset_index(drop=True)
    for col in ("history_known", "stage_known"):
        inputs[col] = flag(states[col].to_numpy())
    values = execute(inputs, SIGNALS, cache, row_inputs=ROW_INPUTS)
    out = pd.DataFrame(
        {
            "deal_id": states["deal_id"].to_numpy(),
            "as_of": inputs["as_of"].to_numpy(),
            "owner": states["owner"].to_numpy(),
            "team": states["team"].to_numpy(),
        }
    )
    for name in SIGNALS:
        out[name] = (
            np.asarray(values[name]) if name not in _STATE_INPUTS else values[name].to_numpy()
        )
    for col in custom_column_names(deals, custom):
        out[col] = states[col].to_numpy()
    return out


def describe_signals() -> pd.DataFrame:
    """The registry as a table (name, kind, needs_history, description)."""
    return pd.DataFrame(
        [(s.name, s.kind.value, s.needs_history, s.description) for s in SIGNALS.values()],
        columns=["name", "kind", "needs_history", "description"],
    )
