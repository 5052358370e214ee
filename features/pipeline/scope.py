"""The scope of a pipeline report: which deals (company, one team, one rep) and which events.

Metrics, hygiene and the review pack all start here, so "the deals of team north as of D" and
"their events up to D" mean the same in each:

- :func:`scoped_states`: every deal that existed at ``as_of``, as it stood then, limited to a team
  and/or owner;
- :func:`scoped_events`: rows of an event table stamped on or before ``as_of`` of the deals in
  scope (:func:`features.signals.pointintime.events_as_of` decides "on or before").

A team or owner is checked by name first. A name that the store has never seen (no deal, at any
date, and no target carries it) is a :class:`~features.errors.NotFoundError` naming the known
ones: a typo must not read as "this rep has no pipeline". A known name with no deal at ``as_of``
(a new rep, a date before the team's first deal) is an empty scope, and every report handles that.
"""

from __future__ import annotations

import pandas as pd

from features.data.schema import CanonicalTables, TargetScope
from features.data.stages import StageConfig
from features.errors import NotFoundError
from features.signals.events import codes
from features.signals.pointintime import deal_states_as_of, events_as_of

# Known names listed in the error message; a store may hold hundreds of reps.
_SHOWN_NAMES = 12


def _known_names(tables: CanonicalTables, column: str, scope: TargetScope) -> set[str]:
    names = set(tables.deals[column].dropna().astype(str))
    targets = tables.targets
    names |= set(targets.loc[targets["scope"] == scope.value, "scope_id"].astype(str))
    return names


def check_scope(tables: CanonicalTables, *, team: str | None, owner: str | None) -> None:
    """Raise :class:`NotFoundError` when a team or owner name is unknown to the store."""
    for option, column, scope, name in (
        ("--team", "team", TargetScope.TEAM, team),
        ("--owner", "owner", TargetScope.OWNER, owner),
    ):
        if name is None:
            continue
        known = _known_names(tables, column, scope)
        if name not in known:
            shown = sorted(known)[:_SHOWN_NAMES]
            more = f" (and {len(known) - len(shown)} more)" if len(known) > len(shown) else ""
            listed = ", ".join(shown) if shown else "none"
            raise NotFoundError(
                f"{option} {name!r}: no deal or target has this {column}; known: {listed}{more}"
            )


def scoped_states(
    tables: CanonicalTables,
    stages: StageConfig,
    as_of: pd.Timestamp,
    *,
    team: str | None = None,
    owner: str | None = None,
    open_only: bool = False,
) -> pd.DataFrame:
    """Every deal that existed at ``as_of`` (or only those open then) as it stood then, limited
    to a team and/or owner."""
    check_scope(tables, team=team, owner=owner)
    states = deal_states_as_of(tables, as_of, stages, open_only=open_only)
    if team is not None:
        states = states[states["team"] == team]
    if owner is not None:
        states = states[states["owner"] == owner]
    return states.reset_index(drop=True)


def scoped_events(
    events: pd.DataFrame, column: str, as_of: pd.Timestamp, deal_ids: pd.Series
) -> pd.DataFrame:
    """Events stamped on or before ``as_of`` of the deals in scope."""
    ev = events_as_of(events, column, as_of)
    # Arrow's own lookup (events.codes): Index.get_indexer on Arrow strings is ~10x slower.
    known = codes(ev["deal_id"], pd.Index(pd.Series(deal_ids).unique())) >= 0
    return ev[known]
