"""Pipeline hygiene: the seed's rules that keep the pipeline honest (zombie deals), as of a date.

Only open deals are checked. Thresholds come from ``stages.hygiene``; days are whole calendar days
between the event's date and the ``as_of`` date. Rules and boundaries:

- ``no_activity_review``: no activity for >= ``no_activity_review_days`` (60) and below
  ``stale_days``; counted from the last activity on or before ``as_of``, or from creation when the
  deal has none. Fires at exactly 60 days, not at 59.
- ``stale_no_activity``: no activity for >= ``stale_days`` (90): propose closed-lost. Replaces
  the review flag (one activity flag per deal).
- ``close_date_past``: expected close date before the ``as_of`` date (today is not past).
- ``no_next_step``: next step blank or next-step date missing.
- ``quarterly_cleanup``: in the last ``cleanup_window_days`` (14) days of the quarter (quarter end
  day included), open deals whose age at the quarter's last day is *more* than
  ``cleanup_age_days`` (90) days. Flagging only near quarter end keeps it from firing on nearly
  every long-cycle deal all quarter; the quarter end is in the evidence.
- ``time_in_stage``: days in the current stage *more* than ``time_in_stage_factor`` x the stage
  norm (midpoint of its typical duration). Deals whose stage or stage entry date is unknown
  (deals-only imports) are skipped, never flagged.
- ``required_fields_missing``: for the deal's stage, each required field in the config: a deals
  column (empty), ``stakeholder:<role>`` (none with that role added by ``as_of``),
  ``activity:<type>`` (none of that type by ``as_of``), ``custom:<name>`` (column
  ``custom_<name>`` empty or absent; custom columns carry no history, so their exported value is
  used). One flag per deal lists every missing field.

Tracked fields of deals-only imports are unknown before the export (see pointintime); rules that
read them (close date, next step, tracked required fields) skip those deals.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import pandas as pd

from features.data.calendar import quarter_bounds, quarter_of
from features.data.schema import TRACKED_FIELDS, CanonicalTables
from features.data.stages import StageConfig
from features.pipeline.metrics import (
    days_between,
    jsonable,
    last_activity,
    scoped_events,
    scoped_states,
)

CLEANUP_WINDOW_DAYS = 14


class Rule(StrEnum):
    NO_ACTIVITY_REVIEW = "no_activity_review"
    STALE = "stale_no_activity"
    CLOSE_DATE_PAST = "close_date_past"
    NO_NEXT_STEP = "no_next_step"
    QUARTERLY_CLEANUP = "quarterly_cleanup"
    TIME_IN_STAGE = "time_in_stage"
    REQUIRED_FIELDS = "required_fields_missing"


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


@dataclass(frozen=True)
class HygieneFlag:
    """One rule broken by one deal, with the dates and counts that prove it."""

    deal_id: str
    owner: str
    rule: Rule
    severity: Severity
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = jsonable(self)
        return out


@dataclass(frozen=True)
class StageOutliers:
    """Per owner and stage: the seed's "5 deals in stage 2 for 10 weeks; the norm is 6"."""

    owner: str
    stage: str
    count: int
    median_weeks: float
    norm_weeks: float
    deal_ids: list[str]
    message: str


def _iso(value: Any) -> str | None:
    return None if pd.isna(value) else pd.Timestamp(value).date().isoformat()


def _blank(values: pd.Series) -> pd.Series:
    """Missing, or text that is only whitespace."""
    text = values.astype("str").str.strip()
    return values.isna() | (text == "")


def _required_missing(
    tables: CanonicalTables, open_deals: pd.DataFrame, stages: StageConfig, as_of: pd.Timestamp
) -> dict[str, list[tuple[str, str]]]:
    """deal_id -> [(field, label)] of required fields missing for its stage."""
    ids = open_deals["deal_id"]
    stk = scoped_events(tables.stakeholders, "added_at", as_of, ids)
    acts = scoped_events(tables.activities, "occurred_at", as_of, ids)
    deals_cur = tables.deals.set_index("deal_id")
    known = open_deals["history_known"].to_numpy(dtype=bool)
    missing: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for stage in stages.open_stages:
        in_stage = (open_deals["stage"] == stage.key).to_numpy()
        if not in_stage.any():
            continue
        sub = open_deals[in_stage]
        sub_known = known[in_stage]
        for req in stage.required_fields:
            kind, _, name = req.field.partition(":")
            if kind == "stakeholder":
                miss = ~sub["deal_id"].isin(stk.loc[stk["role"] == name, "deal_id"]).to_numpy()
            elif kind == "activity":
                miss = ~sub["deal_id"].isin(acts.loc[acts["type"] == name, "deal_id"]).to_numpy()
            else:
                col = f"custom_{name}" if kind == "custom" else req.field
                if col in sub.columns:
                    values = sub[col]
                elif col in deals_cur.columns:
                    values = deals_cur[col].reindex(sub["deal_id"])
                else:
                    values = pd.Series(np.nan, index=sub.index)
                miss = _blank(values).to_numpy(dtype=bool)
                if col in TRACKED_FIELDS:
                    miss = miss & sub_known  # unknown before a deals-only export: not "missing"
            for d in sub["deal_id"].to_numpy()[miss]:
                missing[str(d)].append((req.field, req.label))
    return missing


def hygiene_flags(
    tables: CanonicalTables,
    stages: StageConfig,
    as_of: pd.Timestamp,
    *,
    owner: str | None = None,
    team: str | None = None,
    cleanup_window_days: int = CLEANUP_WINDOW_DAYS,
) -> list[HygieneFlag]:
    """Every hygiene rule broken by an open deal at ``as_of``, in deal then rule order."""
    as_of = pd.Timestamp(as_of)
    states = scoped_states(tables, stages, as_of, team=team, owner=owner)
    return flags_for_states(tables, stages, as_of, states, cleanup_window_days=cleanup_window_days)


def flags_for_states(
    tables: CanonicalTables,
    stages: StageConfig,
    as_of: pd.Timestamp,
    states: pd.DataFrame,
    *,
    cleanup_window_days: int = CLEANUP_WINDOW_DAYS,
) -> list[HygieneFlag]:
    """:func:`hygiene_flags` for deal states already rebuilt as of ``as_of`` (a subset is fine)."""
    cfg = stages.hygiene
    deals = states[states["is_open"]].sort_values("deal_id").reset_index(drop=True)
    flags: list[HygieneFlag] = []
    if deals.empty:
        return flags
    known = deals["history_known"].to_numpy(dtype=bool)
    ids, owners = deals["deal_id"].to_numpy(), deals["owner"].to_numpy()
    # Plain arrays: per-flag lookups on arrow-backed columns are slow.
    col = {
        c: deals[c].to_numpy()
        for c in (
            "created_at",
            "expected_close_date",
            "next_step",
            "next_step_date",
            "stage",
            "stage_entered_at",
        )
    }
    labels = {s.key: s.label for s in stages.stages}

    def add(i: int | np.integer[Any], rule: Rule, sev: Severity, msg: str, **evidence: Any) -> None:
        flags.append(HygieneFlag(str(ids[i]), str(owners[i]), rule, sev, msg, evidence))

    # --- activity --------------------------------------------------------------------------
    last = last_activity(tables, as_of, deals["deal_id"]).reindex(deals["deal_id"])
    last = pd.Series(last.to_numpy(), index=deals.index)
    since = last.fillna(deals["created_at"])
    last_at = last.to_numpy()
    idle = days_between(since, as_of).to_numpy()
    for i in np.flatnonzero(idle >= cfg.no_activity_review_days):
        ev = {
            "last_activity": _iso(last_at[i]),
            "created_at": _iso(col["created_at"][i]),
            "days_without_activity": int(idle[i]),
        }
        what = "since creation" if pd.isna(last_at[i]) else f"since {ev['last_activity']}"
        if idle[i] >= cfg.stale_days:
            msg = f"no activity for {idle[i]} days ({what}): stale, propose closed-lost"
            add(i, Rule.STALE, Severity.CRITICAL, msg, threshold_days=cfg.stale_days, **ev)
        else:
            msg = f"no activity for {idle[i]} days ({what}): review with manager"
            add(
                i,
                Rule.NO_ACTIVITY_REVIEW,
                Severity.WARNING,
                msg,
                threshold_days=cfg.no_activity_review_days,
                **ev,
            )

    # --- close date in the past ------------------------------------------------------------
    overdue = days_between(deals["expected_close_date"], as_of).to_numpy()
    for i in np.flatnonzero((overdue > 0) & known):
        close = _iso(col["expected_close_date"][i])
        msg = f"expected close date {close} is {overdue[i]} days past: update it or close"
        add(
            i,
            Rule.CLOSE_DATE_PAST,
            Severity.WARNING,
            msg,
            expected_close_date=close,
            days_overdue=int(overdue[i]),
        )

    # --- next step -------------------------------------------------------------------------
    no_step = _blank(deals["next_step"]).to_numpy(dtype=bool)
    no_date = deals["next_step_date"].isna().to_numpy()
    for i in np.flatnonzero((no_step | no_date) & known):
        gaps = [n for n, m in (("next step", no_step[i]), ("next-step date", no_date[i])) if m]
        add(
            i,
            Rule.NO_NEXT_STEP,
            Severity.CRITICAL,
            f"no {' and no '.join(gaps)}: every deal needs both",
            next_step=None if no_step[i] else str(col["next_step"][i]),
            next_step_date=_iso(col["next_step_date"][i]),
        )

    # --- quarterly cleanup -----------------------------------------------------------------
    q_end = quarter_bounds(quarter_of(as_of))[1]
    to_end = (q_end.normalize() - as_of.normalize()).days
    if to_end < cleanup_window_days:
        age = days_between(deals["created_at"], q_end).to_numpy()
        for i in np.flatnonzero(age > cfg.cleanup_age_days):
            msg = (
                f"{age[i]} days old at quarter end {q_end.date()}: "
                "reactivate with evidence or close as lost"
            )
            add(
                i,
                Rule.QUARTERLY_CLEANUP,
                Severity.INFO,
                msg,
                created_at=_iso(col["created_at"][i]),
                quarter_end=q_end.date().isoformat(),
                age_at_quarter_end=int(age[i]),
                threshold_days=cfg.cleanup_age_days,
            )

    # --- time in stage ---------------------------------------------------------------------
    norms = {s.key: stages.norm_days(s.key) for s in stages.open_stages}
    norm = deals["stage"].map(norms).astype("float64").to_numpy()
    in_stage = days_between(deals["stage_entered_at"], as_of).astype("float64").to_numpy()
    limit = norm * cfg.time_in_stage_factor
    with np.errstate(invalid="ignore"):
        slow = in_stage > limit  # NaN (unknown stage or entry) compares False: skipped
    for i in np.flatnonzero(slow):
        stage = str(col["stage"][i])
        msg = (
            f"{int(in_stage[i])} days in {labels[stage]}: "
            f"{in_stage[i] / norm[i]:.1f}x the {norm[i]:.0f}-day norm"
        )
        add(
            i,
            Rule.TIME_IN_STAGE,
            Severity.WARNING,
            msg,
            stage=stage,
            stage_entered_at=_iso(col["stage_entered_at"][i]),
            days_in_stage=int(in_stage[i]),
            norm_days=float(norm[i]),
            limit_days=float(limit[i]),
        )

    # --- required fields -------------------------------------------------------------------
    missing = _required_missing(tables, deals, stages, as_of)
    pos = {str(d): i for i, d in enumerate(ids)}
    for deal_id, items in missing.items():
        j = pos[deal_id]
        stage = str(col["stage"][j])
        msg = f"missing for {labels[stage]}: " + ", ".join(label for _, label in items)
        add(
            j,
            Rule.REQUIRED_FIELDS,
            Severity.WARNING,
            msg,
            stage=stage,
            missing=[f for f, _ in items],
            labels=[lab for _, lab in items],
        )

    order = {r: k for k, r in enumerate(Rule)}
    flags.sort(key=lambda f: (f.deal_id, order[f.rule]))
    return flags


def stage_outliers(flags: list[HygieneFlag], stages: StageConfig) -> list[StageOutliers]:
    """Aggregate time-in-stage flags per owner and stage, for the manager's coaching question."""
    groups: dict[tuple[str, str], list[HygieneFlag]] = defaultdict(list)
    for f in flags:
        if f.rule is Rule.TIME_IN_STAGE:
            groups[(f.owner, f.evidence["stage"])].append(f)
    out = []
    order = {s.key: s.order for s in stages.stages}
    for (owner, stage), items in sorted(groups.items(), key=lambda kv: (kv[0][0], order[kv[0][1]])):
        weeks = float(np.median([f.evidence["days_in_stage"] for f in items])) / 7
        norm_weeks = float(items[0].evidence["norm_days"]) / 7
        n = len(items)
        msg = (
            f"{owner} has {n} deal{'s' if n != 1 else ''} in {stages.stage(stage).label} "
            f"for {weeks:.0f} weeks (median); the norm is {norm_weeks:.0f} weeks. "
            "What is the blocker?"
        )
        out.append(
            StageOutliers(
                owner,
                stage,
                n,
                round(weeks, 1),
                round(norm_weeks, 1),
                [f.deal_id for f in items],
                msg,
            )
        )
    return out
