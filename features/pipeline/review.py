"""The weekly pipeline review pack: the seed's "every deal above a threshold" meeting, as of a date.

For each open deal at or above ``min_amount`` (default ``stages.hygiene.review_min_amount``; a
deal of exactly the threshold is in): its status, what changed in the last week (stage and
tracked-field changes stamped in ``(as_of - 7 days, as_of]``, one net change per field: first old
value -> last new value, fields that ended where they started left out), next step, last week's
activities, hygiene flags, and rule-based risk notes. Models replace the notes in a later issue;
these rules are the seed's red flags made explicit (see :func:`_risk_notes`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Literal

import pandas as pd

from features.data.schema import CanonicalTables, StakeholderRole
from features.data.stages import StageConfig
from features.pipeline.hygiene import HygieneFlag, flags_for_states
from features.pipeline.metrics import (
    days_between,
    jsonable,
    last_activity,
    scoped_events,
    scoped_states,
)

REVIEW_DAYS = 7
# Risk-note thresholds: below the hygiene rules on purpose, so the review sees trouble coming.
IDLE_RISK_DAYS = 30
CLOSE_PUSH_RISK = 2
SortKey = Literal["amount", "expected_close"]


@dataclass(frozen=True)
class FieldChange:
    """A field's net change over the review week: value before its first change -> after its last.

    ``path`` lists the stages a deal passed through (oldest first) when the stage moved more than
    once in the week; it is empty otherwise and for other fields.
    """

    field: str
    old: str | None
    new: str | None
    changes: int
    last_at: datetime
    path: list[str | None]


@dataclass(frozen=True)
class ReviewDeal:
    deal_id: str
    account: str | None
    owner: str
    team: str | None
    stage: str | None
    stage_label: str | None
    amount: float
    expected_close_date: date | None
    forecast_category: str | None
    next_step: str | None
    next_step_date: date | None
    days_in_stage: int | None
    last_activity: date | None
    changes: list[FieldChange]
    activities_last_week: dict[str, int]
    flags: list[HygieneFlag]
    risk_notes: list[str]

    @property
    def risk_note(self) -> str:
        return "; ".join(self.risk_notes)


@dataclass(frozen=True)
class ReviewPack:
    as_of: datetime
    week_first_day: date
    week_last_day: date
    min_amount: float
    team: str | None
    owner: str | None
    sort_by: str
    deal_count: int
    total_value: float
    deals: list[ReviewDeal] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = jsonable(self)
        for d, deal in zip(out["deals"], self.deals, strict=True):
            d["risk_note"] = deal.risk_note
        return out


def _opt_str(value: Any) -> str | None:
    return None if pd.isna(value) else str(value)


def _opt_date(value: Any) -> date | None:
    return None if pd.isna(value) else pd.Timestamp(value).date()


def _week_changes(
    tables: CanonicalTables, ids: pd.Series, start: pd.Timestamp, as_of: pd.Timestamp
) -> dict[str, list[FieldChange]]:
    """Net stage and tracked-field changes stamped in ``(start, as_of]``, per deal.

    Ordered by last change, oldest first; a field whose last new value equals its first old value
    is left out.
    """
    sh = scoped_events(tables.stage_history, "entered_at", as_of, ids)
    sh = sh.sort_values(["deal_id", "entered_at"], kind="stable")
    prev = sh.groupby("deal_id")["stage"].shift(1)
    # Derived rows only say the deal was seen in a stage at export time: not a change that week.
    week = (sh["entered_at"] > start) & ~sh["derived"]
    stage_rows = pd.DataFrame(
        {
            "deal_id": sh["deal_id"],
            "at": sh["entered_at"],
            "field": "stage",
            "old": prev,
            "new": sh["stage"],
        }
    )[week]
    fh = scoped_events(tables.field_history, "changed_at", as_of, ids)
    fh = fh[fh["changed_at"] > start]
    field_rows = pd.DataFrame(
        {
            "deal_id": fh["deal_id"],
            "at": fh["changed_at"],
            "field": fh["field"],
            "old": fh["old_value"],
            "new": fh["new_value"],
        }
    )
    rows = pd.concat([stage_rows, field_rows], ignore_index=True).sort_values(
        ["deal_id", "field", "at"], kind="stable"
    )
    stamps = list(pd.to_datetime(rows["at"]).dt.to_pydatetime())
    # (deal, field) -> [(at, old, new), ...] oldest first; dicts keep first-seen order.
    runs: dict[tuple[str, str], list[tuple[datetime, str | None, str | None]]] = defaultdict(list)
    for d, at, fld, old, new in zip(
        rows["deal_id"], stamps, rows["field"], rows["old"], rows["new"], strict=True
    ):
        runs[(str(d), str(fld))].append((at, _opt_str(old), _opt_str(new)))

    out: dict[str, list[FieldChange]] = defaultdict(list)
    for (d, fld), run in runs.items():
        first_old, last_new = run[0][1], run[-1][2]
        if first_old == last_new:
            continue
        path = [first_old, *(new for _, _, new in run)] if fld == "stage" and len(run) > 1 else []
        out[d].append(FieldChange(fld, first_old, last_new, len(run), run[-1][0], path))
    for summaries in out.values():
        summaries.sort(key=lambda c: (c.last_at, c.field))
    return out


def _close_pushes(tables: CanonicalTables, ids: pd.Series, as_of: pd.Timestamp) -> pd.Series:
    """How often each deal's expected close date moved later, up to ``as_of``."""
    fh = scoped_events(tables.field_history, "changed_at", as_of, ids)
    fh = fh[fh["field"] == "expected_close_date"]
    old = pd.to_datetime(fh["old_value"], errors="coerce")
    new = pd.to_datetime(fh["new_value"], errors="coerce")
    return fh.loc[(new > old).to_numpy(), "deal_id"].value_counts()


def _risk_notes(
    row: Mapping[Hashable, Any],
    stages: StageConfig,
    as_of: pd.Timestamp,
    *,
    pushes: int,
    contacts: int,
    has_decision_maker: bool,
    idle_days: int,
    days_in_stage: int | None,
) -> list[str]:
    """The seed's red flags for a deal, most telling first."""
    notes: list[str] = []
    if pushes >= CLOSE_PUSH_RISK:
        notes.append(f"close date pushed {pushes} times")
    close = row["expected_close_date"]
    if not pd.isna(close) and close.normalize() < as_of.normalize():
        notes.append(f"close date {close.date()} has passed")
    if not has_decision_maker:
        notes.append("no decision maker")
    if contacts == 0:
        notes.append("no contacts mapped")
    elif contacts == 1:
        notes.append("single-threaded (1 contact)")
    if idle_days >= IDLE_RISK_DAYS:
        notes.append(f"no activity {idle_days} days")
    stage = row["stage"]
    if isinstance(stage, str) and stage in stages.by_key:
        norm = stages.norm_days(stage)
        if days_in_stage is not None and norm:
            ratio = days_in_stage / norm
            if ratio >= stages.hygiene.time_in_stage_factor:
                notes.append(f"in {stages.stage(stage).label} {ratio:.1f}x norm")
        p = stages.win_probability(stage)
        if row["forecast_category"] == "commit" and p < 0.5:
            notes.append(f"commit at {stages.stage(stage).label} (stage p(win) {p:.0%})")
    return notes


def review_pack(
    tables: CanonicalTables,
    stages: StageConfig,
    as_of: pd.Timestamp,
    *,
    min_amount: float | None = None,
    team: str | None = None,
    owner: str | None = None,
    sort_by: SortKey = "amount",
) -> ReviewPack:
    """The open deals worth the weekly review, with what changed and what is at risk."""
    as_of = pd.Timestamp(as_of)
    threshold = stages.hygiene.review_min_amount if min_amount is None else float(min_amount)
    start = as_of - pd.Timedelta(days=REVIEW_DAYS)
    states = scoped_states(tables, stages, as_of, team=team, owner=owner)
    deals = states[states["is_open"] & (states["amount"] >= threshold)]
    if sort_by == "amount":
        deals = deals.sort_values(
            ["amount", "expected_close_date", "deal_id"], ascending=[False, True, True]
        )
    else:
        deals = deals.sort_values(
            ["expected_close_date", "amount", "deal_id"], ascending=[True, False, True]
        )
    deals = deals.reset_index(drop=True)
    ids = deals["deal_id"]

    flags: dict[str, list[HygieneFlag]] = defaultdict(list)
    for f in flags_for_states(tables, stages, as_of, deals):
        flags[f.deal_id].append(f)
    changes = _week_changes(tables, ids, start, as_of)
    acts = scoped_events(tables.activities, "occurred_at", as_of, ids)
    week_acts: dict[str, dict[str, int]] = defaultdict(dict)
    counted = acts[acts["occurred_at"] > start].groupby(["deal_id", "type"]).size().reset_index()
    for d_id, kind, n in zip(counted["deal_id"], counted["type"], counted[0], strict=True):
        week_acts[str(d_id)][str(kind)] = int(n)
    stk = scoped_events(tables.stakeholders, "added_at", as_of, ids)
    contacts = stk.groupby("deal_id")["contact_id"].nunique()
    dm = set(stk.loc[stk["role"] == StakeholderRole.DECISION_MAKER.value, "deal_id"])
    pushes = _close_pushes(tables, ids, as_of)
    last = pd.Series(last_activity(tables, as_of, ids).reindex(ids).to_numpy(), index=deals.index)
    idle = days_between(last.fillna(deals["created_at"]), as_of)
    in_stage = days_between(deals["stage_entered_at"], as_of)

    out: list[ReviewDeal] = []
    last_at, idle_days, in_stage_days = last.to_numpy(), idle.to_numpy(), in_stage.to_numpy()
    for i, row in enumerate(deals.to_dict("records")):
        d = str(row["deal_id"])
        dis = None if pd.isna(in_stage_days[i]) else int(in_stage_days[i])
        stage = _opt_str(row["stage"])
        out.append(
            ReviewDeal(
                deal_id=d,
                account=_opt_str(row["account"]),
                owner=str(row["owner"]),
                team=_opt_str(row["team"]),
                stage=stage,
                stage_label=stages.stage(stage).label if stage in stages.by_key else None,
                amount=float(row["amount"]),
                expected_close_date=_opt_date(row["expected_close_date"]),
                forecast_category=_opt_str(row["forecast_category"]),
                next_step=_opt_str(row["next_step"]),
                next_step_date=_opt_date(row["next_step_date"]),
                days_in_stage=dis,
                last_activity=_opt_date(last_at[i]),
                changes=changes.get(d, []),
                activities_last_week=week_acts.get(d, {}),
                flags=flags.get(d, []),
                risk_notes=_risk_notes(
                    row,
                    stages,
                    as_of,
                    pushes=int(pushes.get(d, 0)),
                    contacts=int(contacts.get(d, 0)),
                    has_decision_maker=d in dm,
                    idle_days=int(idle_days[i]),
                    days_in_stage=dis,
                ),
            )
        )
    return ReviewPack(
        as_of=as_of.to_pydatetime(),
        week_first_day=(start + pd.Timedelta(days=1)).date(),
        week_last_day=as_of.date(),
        min_amount=threshold,
        team=team,
        owner=owner,
        sort_by=sort_by,
        deal_count=len(out),
        total_value=float(deals["amount"].sum()),
        deals=out,
    )
