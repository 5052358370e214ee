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

from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from features.data.schema import TRACKED_FIELDS, CanonicalTables
from features.data.stages import StageConfig
from features.signals.events import codes, flag
from features.signals.pointintime import custom_column_names, deal_states, known_column
from features.signals.registry import SIGNALS, evaluate

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
    signals: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Signals of every (open) deal at each date: columns deal_id, as_of, owner, team, then
    :data:`SIGNALS` in registry order (only those in ``signals`` when given), then the listed
    ``custom_*`` columns.

    A custom column carries no history: it is missing before the deal row's ``observed_at``
    unless it is listed in ``static_custom`` (declared fixed at creation; listed there, it is
    included too). ``deal_ids`` restricts the rows; rep and team statistics still use every
    deal. ``cache`` (an empty dict at first) keeps table-level indexes between calls on the
    *same* tables. An unknown custom column raises :class:`~features.errors.NotFoundError`.
    """
    deals = tables.deals
    fixed = custom_column_names(deals, static_custom)
    subset = tables
    if deal_ids is not None:
        subset = replace(tables, deals=deals[deals["deal_id"].isin(list(deal_ids))])
    dates = [as_of_dates] if isinstance(as_of_dates, pd.Timestamp) else list(as_of_dates)
    states = deal_states(subset, dates, stages, open_only=open_only, static_custom=fixed)
    return signals_of_states(
        tables,
        states,
        stages,
        custom=custom,
        static_custom=fixed,
        cache=cache,
        signals=signals,
    )


def signals_of_states(
    tables: CanonicalTables,
    states: pd.DataFrame,
    stages: StageConfig,
    *,
    custom: Iterable[str] = (),
    static_custom: Iterable[str] = (),
    cache: dict[str, Any] | None = None,
    signals: Iterable[str] | None = None,
    given: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """:func:`compute_signals` for deal states already rebuilt by
    :func:`~features.signals.pointintime.deal_states` (with its ``as_of`` column, and with the
    same ``static_custom``): one row per state row, in its order. For callers that hold the
    states anyway (the pipeline reports), so the rebuild is not done twice.

    Without a ``cache``, activities and stakeholders are indexed for the deals of ``states``
    only (their signals read a deal's own events, nothing else); with one, for every deal, so
    the indexes serve later calls on other deals.

    ``given`` holds registry nodes already computed for these rows (by name), used instead of
    computing them from ``tables``: how :mod:`features.signals.perdeal` supplies what a deal
    reads of other deals when ``tables`` hold only a few deals."""
    frame, _ = signals_and_nodes(
        tables,
        states,
        stages,
        custom=custom,
        static_custom=static_custom,
        cache=cache,
        signals=signals,
        given=given,
    )
    return frame


def signals_and_nodes(
    tables: CanonicalTables,
    states: pd.DataFrame,
    stages: StageConfig,
    *,
    custom: Iterable[str] = (),
    static_custom: Iterable[str] = (),
    cache: dict[str, Any] | None = None,
    signals: Iterable[str] | None = None,
    given: dict[str, Any] | None = None,
    previous: dict[str, Any] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """:func:`signals_of_states`, and every registry node it resolved; given those of an
    earlier call as ``previous``, nodes whose inputs did not change are taken from it
    (:func:`~features.signals.registry.evaluate`)."""
    deals = tables.deals
    fixed = custom_column_names(deals, static_custom)
    wanted = list(dict.fromkeys([*custom_column_names(deals, custom), *fixed]))
    names = _wanted_signals(signals)
    all_deals = deals.reset_index(drop=True)
    index = pd.Index(all_deals["deal_id"])
    code = codes(states["deal_id"], index)
    rows_of = _events_of(None if cache is not None else states["deal_id"])
    inputs: dict[str, Any] = {
        "deals": all_deals,
        "deal_index": index,
        "deal_code": code,
        "stages": stages,
        "activities": rows_of(tables.activities),
        "stakeholders": rows_of(tables.stakeholders),
        "field_history": tables.field_history.reset_index(drop=True),
        "stage_history": tables.stage_history.reset_index(drop=True),
        "as_of": states["as_of"].astype("datetime64[us]").reset_index(drop=True),
        "history_source": pd.Series(all_deals["history_source"].to_numpy()[code]),
    }
    for col in _STATE_INPUTS:
        inputs[col] = states[col].reset_index(drop=True)
    for col in _FLAGS:
        inputs[col] = flag(states[col].to_numpy())
    inputs.update(given or {})
    values = evaluate(inputs, names, cache, row_inputs=ROW_INPUTS, previous=previous)
    out: dict[str, Any] = {
        "deal_id": states["deal_id"].to_numpy(),
        "as_of": inputs["as_of"].to_numpy(),
        "owner": states["owner"].to_numpy(),
        "team": states["team"].to_numpy(),
    }
    for name in names:
        out[name] = (
            np.asarray(values[name]) if name not in _STATE_INPUTS else values[name].to_numpy()
        )
    for col in wanted:
        out[col] = states[col].to_numpy()
    # at once: a column inserted at a time cost more for a few deals
    return pd.DataFrame(out), values


def _events_of(deal_ids: pd.Series | None) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """An event table's rows of ``deal_ids`` (all rows when ``None``), renumbered 0..n-1."""

    def rows(events: pd.DataFrame) -> pd.DataFrame:
        if deal_ids is None:
            return events.reset_index(drop=True)
        keep = codes(events["deal_id"], pd.Index(deal_ids.unique())) >= 0
        return events[keep].reset_index(drop=True)

    return rows


def _wanted_signals(signals: Iterable[str] | None) -> list[str]:
    """The registered signals asked for, in registry order (all when ``None``)."""
    if signals is None:
        return list(SIGNALS)
    asked = set(signals)
    unknown = sorted(asked - set(SIGNALS))
    if unknown:
        raise KeyError(f"no signal named {unknown}; registered: {list(SIGNALS)}")
    return [name for name in SIGNALS if name in asked]


def describe_signals() -> pd.DataFrame:
    """The registry as a table (name, kind, needs_history, description)."""
    return pd.DataFrame(
        [(s.name, s.kind.value, s.needs_history, s.description) for s in SIGNALS.values()],
        columns=["name", "kind", "needs_history", "description"],
    )
