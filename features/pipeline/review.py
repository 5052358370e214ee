"""The weekly pipeline review pack: the seed's "every deal above a threshold" meeting, as of a date.

For each open deal at or above ``min_amount`` (default ``stages.hygiene.review_min_amount``; a
deal of exactly the threshold is in; deals whose amount is unknown at ``as_of`` cannot be
compared and are counted in ``amount_unknown``): its status, what changed in the last week
(stage and tracked-field changes stamped in ``(as_of - 7 days, as_of]``, one net change per
field: first old value -> last new value, fields that ended where they started left out, a
deal's creation not a change), next step, last week's activities, hygiene flags, and rule-based
risk notes. Models replace the notes in a later issue;
these rules are the seed's red flags made explicit (:data:`RISK_NOTES`, one small function each).

Every fact about a deal (idle days, close-date pushes, contacts, decision maker, days in stage and
its ratio to the norm, close date passed) is read from :func:`features.pipeline.facts.
open_deal_facts`, the same point-in-time signals the hygiene rules read: the review and the
hygiene flags cannot tell two stories about one deal. The time-in-stage note uses the hygiene
rule itself (strictly more than ``time_in_stage_factor`` x the norm).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd

from features.data.calendar import days_between
from features.data.schema import CanonicalTables
from features.data.stages import StageConfig
from features.errors import InputError
from features.pipeline.facts import open_deal_facts
from features.pipeline.hygiene import HygieneFlag, flags_for_facts
from features.pipeline.scope import scoped_events, scoped_states
from features.serialize import UtcDatetime, jsonable
from features.signals.pointintime import states_a_value

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
    last_at: UtcDatetime
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
    as_of: UtcDatetime
    week_first_day: date
    week_last_day: date
    min_amount: float
    team: str | None
    owner: str | None
    sort_by: str
    deal_count: int
    total_value: float
    # open deals in scope whose amount is unknown at as_of: not compared with the threshold
    amount_unknown: int
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
    is left out, and so is a deal's creation (:func:`_creations`).
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
    rows = pd.concat([stage_rows, field_rows], ignore_index=True)
    rows = rows[~_creations(rows, tables.deals)].sort_values(
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


def _creations(rows: pd.DataFrame, deals: pd.DataFrame) -> np.ndarray:
    """Rows that state a deal's values at its creation rather than change them: no old value
    (:func:`~features.signals.pointintime.states_a_value`; a stage row without an earlier one),
    stamped on the deal's creation day. A snapshot history starts with such rows; a field first
    filled in later is a change the review shows."""
    created = deals.set_index("deal_id")["created_at"].reindex(rows["deal_id"])
    on_creation_day = days_between(rows["at"], pd.Series(created.to_numpy())).to_numpy() <= 0
    stated = states_a_value(rows.rename(columns={"old": "old_value"}))
    return stated & on_creation_day


# --- risk notes: the seed's red flags, most telling first ----------------------------------------
Facts = Mapping[Hashable, Any]
RiskNote = Callable[[Facts, StageConfig], str | None]


def _close_pushed(d: Facts, stages: StageConfig) -> str | None:
    pushes = d["close_date_push_count"]  # missing on deals-only imports: no pushes known
    if pd.notna(pushes) and pushes >= CLOSE_PUSH_RISK:
        return f"close date pushed {int(pushes)} times"
    return None


def _close_passed(d: Facts, stages: StageConfig) -> str | None:
    if d["close_date_passed"]:
        return f"close date {pd.Timestamp(d['expected_close_date']).date()} has passed"
    return None


def _no_decision_maker(d: Facts, stages: StageConfig) -> str | None:
    return None if d["decision_maker_engaged"] == 1 else "no decision maker"


def _few_contacts(d: Facts, stages: StageConfig) -> str | None:
    contacts = int(d["n_stakeholders"])
    if contacts == 0:
        return "no contacts mapped"
    return "single-threaded (1 contact)" if contacts == 1 else None


def _idle(d: Facts, stages: StageConfig) -> str | None:
    idle = int(d["days_without_activity"])
    return f"no activity {idle} days" if idle >= IDLE_RISK_DAYS else None


def _over_stage_norm(d: Facts, stages: StageConfig) -> str | None:
    if d["over_stage_norm"]:
        return f"in {stages.stage(d['stage']).label} {d['stage_norm_ratio']:.1f}x norm"
    return None


def _commit_too_early(d: Facts, stages: StageConfig) -> str | None:
    stage = d["stage"]
    if d["forecast_category"] != "commit" or not (
        isinstance(stage, str) and stage in stages.by_key
    ):
        return None
    p = stages.win_probability(stage)
    return f"commit at {stages.stage(stage).label} (stage p(win) {p:.0%})" if p < 0.5 else None


RISK_NOTES: tuple[RiskNote, ...] = (
    _close_pushed,
    _close_passed,
    _no_decision_maker,
    _few_contacts,
    _idle,
    _over_stage_norm,
    _commit_too_early,
)


def _risk_notes(d: Facts, stages: StageConfig) -> list[str]:
    """The notes of every red flag a deal's facts raise, most telling first."""
    return [note for check in RISK_NOTES if (note := check(d, stages)) is not None]


def _week_activities(
    tables: CanonicalTables, ids: pd.Series, start: pd.Timestamp, as_of: pd.Timestamp
) -> dict[str, dict[str, int]]:
    """Activities stamped in ``(start, as_of]`` per deal and type."""
    acts = scoped_events(tables.activities, "occurred_at", as_of, ids)
    counted = acts[acts["occurred_at"] > start].groupby(["deal_id", "type"]).size().reset_index()
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for d_id, kind, n in zip(counted["deal_id"], counted["type"], counted[0], strict=True):
        out[str(d_id)][str(kind)] = int(n)
    return out


def _sorted(deals: pd.DataFrame, sort_by: SortKey) -> pd.DataFrame:
    if sort_by == "amount":
        keys, ascending = ["amount", "expected_close_date", "deal_id"], [False, True, True]
    else:
        keys, ascending = ["expected_close_date", "amount", "deal_id"], [True, False, True]
    return deals.sort_values(keys, ascending=ascending).reset_index(drop=True)


def _review_deal(
    d: Facts,
    stages: StageConfig,
    *,
    changes: list[FieldChange],
    activities: dict[str, int],
    flags: list[HygieneFlag],
) -> ReviewDeal:
    stage = _opt_str(d["stage"])
    return ReviewDeal(
        deal_id=str(d["deal_id"]),
        account=_opt_str(d["account"]),
        owner=str(d["owner"]),
        team=_opt_str(d["team"]),
        stage=stage,
        stage_label=stages.stage(stage).label if stage in stages.by_key else None,
        amount=float(d["amount"]),
        expected_close_date=_opt_date(d["expected_close_date"]),
        forecast_category=_opt_str(d["forecast_category"]),
        next_step=_opt_str(d["next_step"]),
        next_step_date=_opt_date(d["next_step_date"]),
        days_in_stage=None if pd.isna(d["days_in_stage"]) else int(d["days_in_stage"]),
        last_activity=_opt_date(d["last_activity_on"]),
        changes=changes,
        activities_last_week=activities,
        flags=flags,
        risk_notes=_risk_notes(d, stages),
    )


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
    """The open deals worth the weekly review, with what changed and what is at risk.

    ``sort_by`` other than :data:`SortKey`'s values is an :class:`~features.errors.InputError`;
    an unknown ``team`` or ``owner`` a :class:`~features.errors.NotFoundError`.
    """
    if sort_by not in get_args(SortKey):
        raise InputError(f"sort_by: expected one of {list(get_args(SortKey))}, got {sort_by!r}")
    as_of = pd.Timestamp(as_of)
    threshold = stages.hygiene.review_min_amount if min_amount is None else float(min_amount)
    start = as_of - pd.Timedelta(days=REVIEW_DAYS)
    states = scoped_states(tables, stages, as_of, team=team, owner=owner, open_only=True)
    deals = _sorted(states[states["is_open"] & (states["amount"] >= threshold)], sort_by)
    facts = open_deal_facts(tables, stages, as_of, deals)
    ids = facts["deal_id"]

    flags: dict[str, list[HygieneFlag]] = defaultdict(list)
    for f in flags_for_facts(tables, stages, as_of, facts):
        flags[f.deal_id].append(f)
    changes = _week_changes(tables, ids, start, as_of)
    week_acts = _week_activities(tables, ids, start, as_of)
    out = [
        _review_deal(
            d,
            stages,
            changes=changes.get(str(d["deal_id"]), []),
            activities=week_acts.get(str(d["deal_id"]), {}),
            flags=flags.get(str(d["deal_id"]), []),
        )
        for d in facts.to_dict("records")
    ]
    return ReviewPack(
        as_of=as_of.to_pydatetime(),
        week_first_day=(start + pd.Timedelta(days=1)).date(),
        week_last_day=as_of.date(),
        min_amount=threshold,
        team=team,
        owner=owner,
        sort_by=sort_by,
        deal_count=len(out),
        total_value=float(facts["amount"].sum()),
        amount_unknown=int(states["amount"].isna().sum()),
        deals=out,
    )
