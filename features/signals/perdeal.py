"""Signals of a few deals from their own rows and events, with what they read of the others given.

:func:`~features.signals.driver.compute_signals` rebuilds a deal's state from the store's history
tables; for one deal that costs as much as scanning them (a tenth of a second at a few thousand
deals), which a what-if answered many times a second cannot afford. Nearly every signal reads the
deal's own rows and events only (event indexes are keyed by deal), so a deal's signals can be
computed from tables cut down to that deal — except for three facts of the whole store:

- when each tracked field's history starts (:func:`~features.signals.pointintime.tracked_since`):
  a field counts as tracked from its first logged change *anywhere* in the export, which decides
  whether the deal's value at as_of is known (``deal_states``) and whether its change counts are
  (``field_tracked_since``);
- the rep's and the team's track record (``owner_record``, ``team_record``): every deal of the
  rep or team closed by as_of;
- the stage exits of every deal (``stage_exits``), read by the rep's and team's stage-to-stage
  conversion (``owner_advance_skill``, ``team_advance_skill``): open deals' too, so a what-if
  that moves a deal's stage moves its rep's figure, as it would in the store.

:class:`StoreFacts` computes these once per (tables, as_of) with the registry's own node functions
(no formula is written twice) and finds each deal's rows in every table; :func:`deal_signals`
computes the signals of tables holding a few deals' rows — optionally with rows added, as a
what-if adds the changes it asks about — with the store-wide facts given. The answer equals
:func:`compute_signals` on the whole store with the same rows added, because:

- the tracking start is recomputed as the earlier of the store's and the part's (so an added
  field change moves it exactly as it would in the store);
- the stage exits are the store's, recomputed with the part's stage rows in place of the store's
  rows of its deals when the part adds any (a part is the store's rows plus added ones, so the
  same count means the same rows);
- a track record reads closed deals only (outcome, close time, creation time, owner, team): rows
  added to the part must leave those columns of its deals as the store has them (a what-if changes
  amounts, dates, categories, next steps, stages and adds events, never those).

``tests/test_perdeal.py`` checks the equality over every open deal, and the what-if test checks it
through the API against the full path.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import pandas as pd

from features.data.schema import CanonicalTables
from features.data.stages import StageConfig
from features.signals.driver import signals_and_nodes
from features.signals.events import codes
from features.signals.pointintime import custom_column_names, deal_states, tracked_since
from features.signals.registry import execute, same_value

# Registry nodes that read other deals, and the state column that selects whose figures a row gets.
RECORD_NODES: dict[str, str] = {"owner_record": "owner", "team_record": "team"}
TRACKING_NODE = "field_tracked_since"
EXITS_NODE = "stage_exits"


def _earliest(*sources: dict[str, pd.Timestamp]) -> dict[str, pd.Timestamp]:
    out: dict[str, pd.Timestamp] = {}
    for since in sources:
        for name, when in since.items():
            out[name] = min(out.get(name, when), when)
    return out


@dataclass(frozen=True)
class DealRows:
    """Where each deal's rows are in every table of one store, found once: a part for a few deals
    is then a ``take`` per table instead of a scan."""

    tables: CanonicalTables
    positions: dict[str, dict[str, np.ndarray]]  # table -> deal_id -> row positions, ascending

    @classmethod
    def of(cls, tables: CanonicalTables) -> DealRows:
        positions = {
            name: {
                str(k): np.sort(v)
                for k, v in frame.groupby("deal_id", sort=False, observed=True).indices.items()
            }
            for name, frame in tables.items()
            if "deal_id" in frame.columns
        }
        return cls(tables, positions)

    def part(self, deal_ids: Iterable[str]) -> CanonicalTables:
        """The tables with only the rows of ``deal_ids`` (in the store's order); tables without
        a deal (targets, exchange rates) whole."""
        ids = list(dict.fromkeys(deal_ids))
        cut: dict[str, pd.DataFrame] = {}
        for f in fields(self.tables):
            frame = getattr(self.tables, f.name)
            where = self.positions.get(f.name)
            if where is None:
                continue
            found = [where[i] for i in ids if i in where]
            rows = np.sort(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)
            cut[f.name] = frame.take(rows)
        return replace(self.tables, **cut)


@dataclass(frozen=True)
class StoreFacts:
    """What a deal's signals at ``as_of`` read of other deals (module docstring), for one store."""

    as_of: pd.Timestamp
    tracked_since: dict[str, pd.Timestamp]
    records: dict[str, pd.DataFrame]  # node -> its columns, one row per owner (team) of the store
    deals: pd.DataFrame  # the store's deals: a record of a value not seen above is computed
    stages: StageConfig
    stage_history: pd.DataFrame  # the store's, for the exits of a part that adds stage rows
    exits: pd.DataFrame  # the store's stage exits (registry node ``stage_exits``)

    @classmethod
    def of(cls, tables: CanonicalTables, as_of: pd.Timestamp, stages: StageConfig) -> StoreFacts:
        as_of = pd.Timestamp(as_of)
        deals = tables.deals.reset_index(drop=True)
        records = {}
        for node, column in RECORD_NODES.items():
            who = deals[column].drop_duplicates().dropna().reset_index(drop=True)
            records[node] = _record(deals, node, column, who, as_of)
        history = tables.stage_history.reset_index(drop=True)
        exits = _exits(history, deals, stages)
        return cls(
            as_of, tracked_since(tables.field_history), records, deals, stages, history, exits
        )

    def tracking(self, part: CanonicalTables) -> dict[str, pd.Timestamp]:
        """Each field's tracking start in the store with ``part``'s rows (added ones too)."""
        return _earliest(self.tracked_since, tracked_since(part.field_history))

    def _stored_rows(self, part: CanonicalTables) -> pd.Series:
        """Which of the store's stage rows belong to ``part``'s deals."""
        return self.stage_history["deal_id"].isin(part.deals["deal_id"].unique())

    def adds_stage_rows(self, part: CanonicalTables) -> bool:
        """Whether ``part`` holds stage rows the store does not (a what-if's stage change)."""
        return int(self._stored_rows(part).sum()) != len(part.stage_history)

    def stage_exits(self, part: CanonicalTables) -> pd.DataFrame:
        """Every deal's stage exits in the store with ``part``'s stage rows in place of the
        store's rows of its deals."""
        mine = self._stored_rows(part)
        if int(mine.sum()) == len(part.stage_history):  # no stage row added: the store's
            return self.exits
        history = pd.concat(
            [self.stage_history[~mine], part.stage_history], ignore_index=True
        ).astype(self.stage_history.dtypes.to_dict())
        return _exits(history, self.deals, self.stages)

    def given(
        self, states: pd.DataFrame, since: dict[str, pd.Timestamp], part: CanonicalTables
    ) -> dict[str, Any]:
        """The store-wide nodes for the rows of ``states`` (of ``part``'s deals); ``since``
        from :meth:`tracking`."""
        out: dict[str, Any] = {TRACKING_NODE: since, EXITS_NODE: self.stage_exits(part)}
        for node, column in RECORD_NODES.items():
            table = self.records[node]
            who = states[column].reset_index(drop=True)
            pos = codes(who, pd.Index(table.index)) if len(table) else np.full(len(who), -1)
            if (pos >= 0).all():
                out[node] = table.iloc[pos].reset_index(drop=True)
            else:  # a missing owner (or team): the registry's own answer for these rows
                out[node] = _record(self.deals, node, column, who, self.as_of)
        return out


def _exits(history: pd.DataFrame, deals: pd.DataFrame, stages: StageConfig) -> pd.DataFrame:
    """The registry node ``stage_exits`` of these tables."""
    inputs = {"stage_history": history, "deals": deals, "stages": stages}
    out: pd.DataFrame = execute(inputs, [EXITS_NODE])[EXITS_NODE]
    return out


def _record(
    deals: pd.DataFrame, node: str, column: str, who: pd.Series, as_of: pd.Timestamp
) -> pd.DataFrame:
    """The registry node ``node`` evaluated for the values ``who`` of ``column`` at ``as_of``."""
    when = pd.Series(np.repeat(as_of.to_datetime64(), len(who))).astype("datetime64[us]")
    frame = execute({"deals": deals, column: who, "as_of": when}, [node])[node]
    out: pd.DataFrame = frame.set_axis(pd.Index(who.to_numpy(dtype=object)), axis=0)
    return out


def deal_signals(
    part: CanonicalTables,
    facts: StoreFacts,
    stages: StageConfig,
    *,
    open_only: bool = True,
    custom: Iterable[str] = (),
    static_custom: Iterable[str] = (),
) -> pd.DataFrame:
    """:func:`~features.signals.driver.compute_signals` at ``facts.as_of`` of the deals in
    ``part`` (tables holding only their rows, see :meth:`DealRows.part`, rows added allowed as
    the module docstring says), with what they read of other deals taken from ``facts``."""
    return part_signals(
        part, facts, stages, open_only=open_only, custom=custom, static_custom=static_custom
    ).signals


@dataclass(frozen=True)
class PartSignals:
    """A part's signals (:func:`deal_signals`) with the states and registry nodes behind them:
    the ``base`` of a later call on the same deals with rows added (a what-if)."""

    part: CanonicalTables
    facts: StoreFacts
    options: tuple[Any, ...]  # open_only and the static custom columns: what states depend on
    tracking: dict[str, pd.Timestamp]
    states: pd.DataFrame
    nodes: dict[str, Any]
    signals: pd.DataFrame

    def same_states(
        self,
        part: CanonicalTables,
        facts: StoreFacts,
        options: tuple[Any, ...],
        tracking: dict[str, pd.Timestamp],
    ) -> bool:
        """Whether ``part`` rebuilds to this part's states: the same date, options, tracking
        starts and rows of every table the states read."""
        return (
            facts is self.facts
            and options == self.options
            and tracking == self.tracking
            and all(
                same_value(getattr(part, name), getattr(self.part, name)) for name in STATE_TABLES
            )
        )


# The tables deal_states reads (activities and stakeholders reach signals only).
STATE_TABLES = ("deals", "stage_history", "field_history", "exchange_rates")


def part_signals(
    part: CanonicalTables,
    facts: StoreFacts,
    stages: StageConfig,
    *,
    open_only: bool = True,
    custom: Iterable[str] = (),
    static_custom: Iterable[str] = (),
    base: PartSignals | None = None,
) -> PartSignals:
    """:func:`deal_signals`, kept with what produced it. With a ``base`` (this function's answer
    for the same deals, typically without the rows a what-if adds), the states are reused when
    the tables they read hold the same rows, and the registry recomputes only the nodes whose
    inputs changed (:func:`~features.signals.registry.evaluate`): equal to computing afresh."""
    fixed = custom_column_names(part.deals, static_custom)
    options = (open_only, tuple(fixed))
    since = facts.tracking(part)
    if base is not None and base.same_states(part, facts, options, since):
        states = base.states
    else:
        states = deal_states(
            part, facts.as_of, stages, open_only=open_only, static_custom=fixed, tracked=since
        )
    signals, nodes = signals_and_nodes(
        part,
        states,
        stages,
        custom=custom,
        static_custom=fixed,
        given=facts.given(states, since, part),
        previous=None if base is None else base.nodes,
    )
    return PartSignals(part, facts, options, since, states, nodes, signals)
