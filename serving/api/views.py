"""The answers the API and the web pages share, computed once per store version and cached.

Handlers and pages call these, so a page shows exactly the numbers the API returns for the same
scope, and a second request for the same thing is a cache hit.
"""

from __future__ import annotations

from datetime import date, datetime

import pandas as pd

from features.data.calendar import parse_when
from features.errors import NotFoundError
from features.pipeline.hygiene import HygieneFlag, StageOutliers, hygiene_flags, stage_outliers
from features.pipeline.metrics import PipelineMetrics, compute_metrics
from features.pipeline.review import ReviewPack, SortKey, review_pack
from serving.api.errors import ServiceUnavailable
from serving.api.state import AppState, Snapshot

AsOf = date | datetime | str | None


def resolve_as_of(as_of: AsOf, snap: Snapshot) -> pd.Timestamp:
    """The as-of timestamp of a request: as given, or the store's latest export time."""
    if as_of is None:
        end = snap.data_end
        if end is None:
            raise ServiceUnavailable("the store holds no deals yet: import data first")
        return end
    return parse_when(as_of, "as_of")


def check_scope_exists(snap: Snapshot, *, team: str | None, owner: str | None) -> None:
    """404 for a team or owner the store has never seen (a typo should not look like 'zero')."""
    deals = snap.tables.deals
    if team is not None and not (deals["team"] == team).any():
        raise NotFoundError(f"unknown team {team!r}")
    if owner is not None and not (deals["owner"] == owner).any():
        raise NotFoundError(f"unknown owner {owner!r}")


def metrics(
    state: AppState, snap: Snapshot, as_of: pd.Timestamp, *, team: str | None, owner: str | None
) -> PipelineMetrics:
    return state.results.get_or_compute(
        ("metrics", snap.version, as_of, team, owner),
        lambda: compute_metrics(snap.tables, state.stages, as_of, team=team, owner=owner),
    )


def hygiene(
    state: AppState, snap: Snapshot, as_of: pd.Timestamp, *, team: str | None, owner: str | None
) -> tuple[list[HygieneFlag], list[StageOutliers]]:
    def compute() -> tuple[list[HygieneFlag], list[StageOutliers]]:
        flags = hygiene_flags(snap.tables, state.stages, as_of, owner=owner, team=team)
        return flags, stage_outliers(flags, state.stages)

    return state.results.get_or_compute(("hygiene", snap.version, as_of, team, owner), compute)


def review(
    state: AppState,
    snap: Snapshot,
    as_of: pd.Timestamp,
    *,
    team: str | None,
    owner: str | None,
    min_amount: float | None = None,
    sort: SortKey = "amount",
) -> ReviewPack:
    return state.results.get_or_compute(
        ("review", snap.version, as_of, team, owner, min_amount, sort),
        lambda: review_pack(
            snap.tables,
            state.stages,
            as_of,
            min_amount=min_amount,
            team=team,
            owner=owner,
            sort_by=sort,
        ),
    )
