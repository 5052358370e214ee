"""The answers the API and the web pages share, computed once per store version and cached.

Handlers and pages call these, so a page shows exactly the numbers the API returns for the same
scope, and a second request for the same thing is a cache hit.
"""

from __future__ import annotations

import math
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd

from features.data.calendar import parse_when
from features.errors import NotFoundError
from features.pipeline.hygiene import HygieneFlag, StageOutliers, hygiene_flags, stage_outliers
from features.pipeline.metrics import PipelineMetrics, compute_metrics
from features.pipeline.review import ReviewPack, SortKey, review_pack
from serving.api.errors import ServiceUnavailable
from serving.api.models import Served
from serving.api.state import AppState, Snapshot
from serving.auth import Caller, ForbiddenError, Role

AsOf = date | datetime | str | None


def model_versions(state: AppState) -> list[dict[str, Any]]:
    """Every registered version with aliases, metrics, baselines and reliability curves."""
    return state.registry.list_models()


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


def scope(
    caller: Caller, snap: Snapshot, *, team: str | None, owner: str | None
) -> tuple[str | None, str | None]:
    """The (owner, team) filter of a request: 404 for a team or rep never seen, 403 for one
    outside the caller's scope (a manager asking for another team's rep too), never narrowed
    silently."""
    check_scope_exists(snap, team=team, owner=owner)
    owner, team = caller.scope(owner=owner, team=team)
    if caller.role is Role.MANAGER and owner is not None:
        deals = snap.tables.deals
        if not ((deals["owner"] == owner) & (deals["team"] == caller.team)).any():
            raise ForbiddenError(f"a manager key may only see its own team ({caller.team})")
    return owner, team


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


# --- deal scores ------------------------------------------------------------------------------
def all_scores(
    state: AppState, snap: Snapshot, served: Served, as_of: pd.Timestamp
) -> pd.DataFrame:
    """Every open deal scored and ranked company-wide (with reasons and next actions), once per
    store version, model versions and as-of; scopes are cut from it (:func:`scores`)."""
    return state.results.get_or_compute(
        ("scores", snap.version, served.key, as_of),
        lambda: served.scorer.score(snap.tables, state.stages, as_of, reasons=True),
    )


def scores(
    state: AppState,
    snap: Snapshot,
    served: Served,
    as_of: pd.Timestamp,
    *,
    team: str | None,
    owner: str | None,
) -> pd.DataFrame:
    """The open deals of one scope, ranked by expected value (rank 1 = first to work).

    A deal's probabilities do not depend on the scope (team and rep statistics read every deal),
    so a scope is a filter of the company-wide ranking, renumbered.
    """
    frame = all_scores(state, snap, served, as_of)
    keep = pd.Series(True, index=frame.index)
    if owner is not None:
        keep &= frame["owner"] == owner
    if team is not None:
        keep &= frame["team"] == team
    out = frame.loc[keep].reset_index(drop=True)
    out["rank"] = range(1, len(out) + 1)
    out.attrs = dict(frame.attrs)
    return out


def scored_method(frame: pd.DataFrame) -> str:
    return (
        str(frame["method"].iloc[0])
        if len(frame)
        else ("historical_stage_rates" if frame.attrs.get("fallback_reason") else "model")
    )


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as plain dicts, missing values as None (JSON and templates alike)."""
    clean = frame.astype(object).where(frame.notna(), None)
    return [{str(k): v for k, v in r.items()} for r in clean.to_dict(orient="records")]


# --- one deal -----------------------------------------------------------------------------------
def deal_row(snap: Snapshot, caller: Caller, deal_id: str) -> pd.Series:
    """The store's row of a deal the caller may see; 404 for unknown *and* out-of-scope deals, so
    a rep cannot even learn that another rep's deal exists."""
    deals = snap.tables.deals
    match = deals.loc[deals["deal_id"] == deal_id]
    if match.empty:
        raise NotFoundError(f"unknown deal {deal_id!r}")
    row = match.iloc[0]
    if not caller.may_see(owner=_text(row["owner"]), team=_text(row["team"])):
        raise NotFoundError(f"unknown deal {deal_id!r}")
    return row


def _text(value: Any) -> str | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _when(value: Any) -> str | None:
    if value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return None
    return pd.Timestamp(value).isoformat()


def _plain(value: Any) -> Any:
    """A JSON-safe scalar: numbers stay numbers, missing is None, timestamps are ISO text."""
    if value is None or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp | datetime | date):
        return pd.Timestamp(value).isoformat()
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating | float):
        return None if math.isnan(value) else float(value)
    if isinstance(value, list | tuple | dict):
        return value
    if pd.isna(value):
        return None
    return value if isinstance(value, int | str) else str(value)


def signal_rows(state: AppState, snap: Snapshot, as_of: pd.Timestamp) -> pd.DataFrame:
    """The signals of every deal open at ``as_of`` (one row each), computed once per version."""
    from training.scoring import open_deal_rows

    return state.results.get_or_compute(
        ("signals", snap.version, as_of),
        lambda: open_deal_rows(snap.tables, state.stages, as_of).set_index("deal_id"),
    )


def deal_history(snap: Snapshot, deal_id: str, as_of: pd.Timestamp) -> dict[str, list[Any]]:
    """A deal's stage path, field changes, activities and stakeholders up to ``as_of``."""
    t = snap.tables

    def of(frame: pd.DataFrame, when: str) -> pd.DataFrame:
        rows = frame.loc[(frame["deal_id"] == deal_id) & (frame[when] <= as_of)]
        return rows.sort_values(when, kind="stable")

    return {
        "stages": [
            {"at": _when(r.entered_at), "stage": _text(r.stage), "derived": bool(r.derived)}
            for r in of(t.stage_history, "entered_at").itertuples()
        ],
        "changes": [
            {
                "at": _when(r.changed_at),
                "field": str(r.field),
                "old": _text(r.old_value),
                "new": _text(r.new_value),
            }
            for r in of(t.field_history, "changed_at").itertuples()
        ],
        "activities": [
            {"at": _when(r.occurred_at), "type": _text(r.type)}
            for r in of(t.activities, "occurred_at").itertuples()
        ],
        "stakeholders": [
            {"at": _when(r.added_at), "role": _text(r.role)}
            for r in of(t.stakeholders, "added_at").itertuples()
        ],
    }


def deal_detail(
    state: AppState,
    snap: Snapshot,
    served: Served,
    caller: Caller,
    deal_id: str,
    as_of: pd.Timestamp,
) -> dict[str, Any]:
    """Everything the API and the page show about one deal the caller may see."""
    row = deal_row(snap, caller, deal_id)
    created = pd.Timestamp(row["created_at"])
    if created > as_of:
        raise NotFoundError(f"deal {deal_id!r} was created after {as_of:%Y-%m-%d}")
    frame = all_scores(state, snap, served, as_of)
    hit = frame.loc[frame["deal_id"] == deal_id]
    score = records(hit)[0] if len(hit) else None
    signals = signal_rows(state, snap, as_of)
    sig = (
        {str(k): _plain(v) for k, v in signals.loc[deal_id].items()}
        if deal_id in signals.index
        else {}
    )
    flags, _ = hygiene(state, snap, as_of, team=None, owner=_text(row["owner"]))
    closed = row["closed_at"]
    is_closed = bool(pd.notna(closed) and pd.Timestamp(closed) <= as_of)
    return {
        "deal_id": deal_id,
        "account": _text(row["account"]),
        "owner": _text(row["owner"]),
        "team": _text(row["team"]),
        "segment": _text(row["segment"]),
        "product": _text(row["product"]),
        "created_at": _when(created),
        "status": (str(row["outcome"]) if is_closed else "open"),
        "closed_at": _when(closed) if is_closed else None,
        "as_of": as_of,
        "score": score,
        "method": scored_method(frame),
        "fallback_reason": frame.attrs.get("fallback_reason"),
        "model_versions": dict(frame.attrs.get("model_versions", {})),
        "signals": sig,
        "flags": [f for f in flags if f.deal_id == deal_id],
        "history": deal_history(snap, deal_id, as_of),
    }
