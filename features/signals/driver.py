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

Static attributes (segment, product, competitor, owner, team) are the deal row's current values,
assumed known from creation (``pointintime.STATIC_COLUMNS``; ``pipecast audit`` checks whether
they separate won from lost long before the close). Custom columns are included only when the
caller lists them, and are missing before the row's ``observed_at`` unless declared fixed at
creation (``static_custom``). Tracked fields follow the rule of :mod:`features.signals.pointintime`:
before ``observed_at`` only dated history speaks, ``<field>_known`` says whether it did.

Everything is set-based: sorted composite keys and ``np.searchsorted``, no loop per deal. The only
loop is one ``np.median`` per (rep or team, distinct close count), which is small.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from features.data.schema import TRACKED_FIELDS, CanonicalTables
from features.data.stages import StageConfig
from features.signals.events import codes, flag
from features.signals.pointintime import custom_column_names, deal_states, known_column
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
    "amount_original",
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
    *(known_column(f) for f in TRACKED_FIELDS),
)
_FLAGS = ("history_known", "stage_known", *(known_column(f) for f in TRACKED_FIELDS))


# Inputs that vary with the rows; every other node depends on the tables only (reusable).
ROW_INPUTS = frozenset({"as_of", "deal_code", "history_source", *_STATE_INPUTS})


def compute_signals(
    tables: CanonicalTables,
    as_of_dates: Iterable[pd.Timestamp] | pd.Timestamp,
    stages: StageConfig,
    *,
    open_only: bool = True,
    deal_ids: Iterable[str] | None = None,
    custom: Iterable[str] = (),
    static_custom: Iterable[str] = (),
    cache: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Signals of every (open) deal at each date: columns deal_id, as_of, owner, team, then
    :data:`SIGNALS` in registry order, then the listed ``custom_*`` columns.

    A custom column carries no history: it is missing before the deal row's ``observed_at``
    unless it is listed in ``static_custom`` (declared fixed at creation; listed there, it is
    included too). ``deal_ids`` restricts the rows; rep and team statistics still use every
    deal. ``cache`` (an empty dict at first) keeps table-level indexes between calls on the
    *same* tables. An unknown custom column raises :class:`~features.errors.NotFoundError`.
    """
    deals = tables.deals
    fixed = custom_column_names(deals, static_custom)
    wanted = list(dict.fromkeys([*custom_column_names(deals, custom), *fixed]))
    subset = tables
    if deal_ids is not None:
        subset = replace(tables, deals=deals[deals["deal_id"].isin(list(deal_ids))])
    dates = [as_of_dates] if isinstance(as_of_dates, pd.Timestamp) else list(as_of_dates)
    states = deal_states(
        subset, dates, stages, open_only=open_only, strict=True, static_custom=fixed
    )
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
    for col in _FLAGS:
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
    for col in wanted:
        out[col] = states[col].to_numpy()
    return out


def describe_signals() -> pd.DataFrame:
    """The registry as a table (name, kind, needs_history, description)."""
    return pd.DataFrame(
        [(s.name, s.kind.value, s.needs_history, s.description) for s in SIGNALS.values()],
        columns=["name", "kind", "needs_history", "description"],
    )
