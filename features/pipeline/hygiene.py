"""Pipeline hygiene: the seed's rules that keep the pipeline honest (zombie deals), as of a date.

The rules are a registry (:data:`RULES`): one small function per rule, registered with its id,
its severity, the seed's rule in words and the evidence it records. :func:`hygiene_flags` only
builds the open deals' facts (:mod:`features.pipeline.facts`, the point-in-time signals) and
loops over the rules. Thresholds come from ``stages.hygiene``; days are whole calendar days
(:func:`features.data.calendar.days_between`). Rules and boundaries:

- ``no_activity_review``: ``days_without_activity`` >= ``no_activity_review_days`` (60) and
  below ``stale_days``; counted from the last activity on or before ``as_of``, or from creation
  when the deal has none. Fires at exactly 60 days, not at 59.
- ``stale_no_activity``: ``days_without_activity`` >= ``stale_days`` (90): propose closed-lost.
  Replaces the review flag (one activity flag per deal).
- ``close_date_past``: expected close date before the ``as_of`` date (today is not past).
- ``no_next_step``: next step blank or next-step date missing.
- ``quarterly_cleanup``: in the last ``cleanup_window_days`` (14) days of the quarter (quarter end
  day included), open deals whose age at the quarter's last day is *more* than
  ``cleanup_age_days`` (90) days. Flagging only near quarter end keeps it from firing on nearly
  every long-cycle deal all quarter; the quarter end is in the evidence.
- ``time_in_stage``: days in the current stage *more* than ``time_in_stage_factor`` x the stage
  norm (midpoint of its typical duration): :func:`features.pipeline.facts.over_stage_limit`, the
  same rule as the review pack's risk note. Deals whose stage or stage entry date is unknown
  (deals-only imports) are skipped, never flagged.
- ``required_fields_missing``: for the deal's stage, each required field in the config: a deals
  column (empty), ``stakeholder:<role>`` (none with that role added by ``as_of``),
  ``activity:<type>`` (none of that type by ``as_of``), ``custom:<name>`` (column
  ``custom_<name>`` empty or absent). Custom columns carry no history, so they are checked
  only from the deal row's ``observed_at`` on (or once the deal has closed). One flag per deal
  lists every missing field.

**Unknown is not missing.** A field the point-in-time rebuild cannot know at ``as_of``
(:mod:`features.signals.pointintime`: a tracked field without dated history before the export, a
custom column before the export, anything on a deals-only import before it) is never flagged:
each rule reads the field's own ``<field>_known`` flag (``row_known`` for columns without
history), so a close date that is known is checked even where the next step is not.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from features.data.calendar import quarter_end
from features.data.schema import TRACKED_FIELDS, CanonicalTables
from features.data.stages import StageConfig
from features.pipeline.facts import open_deal_facts
from features.pipeline.scope import scoped_events, scoped_states
from features.serialize import jsonable
from features.signals.pointintime import STATIC_COLUMNS, known_column

CLEANUP_WINDOW_DAYS = 14


class Rule(StrEnum):
    """Rule ids, in the order flags of one deal are listed."""

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


def _opt_text(value: Any) -> str | None:
    return None if pd.isna(value) else str(value)


def _blank(values: pd.Series) -> pd.Series:
    """Missing, or text that is only whitespace."""
    text = values.astype("str").str.strip()
    return values.isna() | (text == "")


# --- registry -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RuleInput:
    """What every rule reads: the open deals' facts (sorted by deal id) and the configuration."""

    tables: CanonicalTables
    stages: StageConfig
    as_of: pd.Timestamp
    facts: pd.DataFrame
    cleanup_window_days: int = CLEANUP_WINDOW_DAYS

    def col(self, name: str) -> np.ndarray:
        """A facts column as a plain array: per-flag lookups on arrow-backed columns are slow."""
        if name not in self._columns:
            self._columns[name] = self.facts[name].to_numpy()
        return self._columns[name]

    @cached_property
    def _columns(self) -> dict[str, np.ndarray]:
        return {}

    def known(self, field: str) -> np.ndarray:
        """Whether a tracked field's value as of the date is known (``<field>_known``)."""
        return self.col(known_column(field)).astype(bool)

    @cached_property
    def labels(self) -> dict[str, str]:
        return {s.key: s.label for s in self.stages.stages}

    def flag(
        self, i: int | np.integer[Any], rule: Rule, message: str, **evidence: Any
    ) -> HygieneFlag:
        """The flag of deal ``i``; its evidence must be what the rule declares (a bug otherwise:
        the JSON output and the README promise those keys)."""
        spec = RULES[rule]
        if tuple(evidence) != spec.evidence:
            raise RuntimeError(f"rule {rule}: evidence {tuple(evidence)} != {spec.evidence}")
        return HygieneFlag(
            deal_id=str(self.col("deal_id")[i]),
            owner=str(self.col("owner")[i]),
            rule=rule,
            severity=spec.severity,
            message=message,
            evidence=evidence,
        )


RuleCheck = Callable[[RuleInput], Iterator[HygieneFlag]]


@dataclass(frozen=True)
class HygieneRule:
    """A registered rule: its id, how bad, the seed's words, the evidence keys and its check."""

    rule: Rule
    severity: Severity
    seed: str
    evidence: tuple[str, ...]
    check: RuleCheck


RULES: dict[Rule, HygieneRule] = {}


def hygiene_rule(
    rule: Rule, severity: Severity, seed: str, evidence: tuple[str, ...]
) -> Callable[[RuleCheck], RuleCheck]:
    """Register ``fn`` as the check of ``rule`` (one function per rule)."""

    def wrap(fn: RuleCheck) -> RuleCheck:
        RULES[rule] = HygieneRule(rule, severity, seed, evidence, fn)
        return fn

    return wrap


# --- the rules ------------------------------------------------------------------------------------
_IDLE_EVIDENCE = ("threshold_days", "last_activity", "created_at", "days_without_activity")


def _idle(x: RuleInput, i: int | np.integer[Any]) -> tuple[str, dict[str, Any]]:
    """(how long, since when) of a deal without activity, and its evidence."""
    last = x.col("last_activity_on")[i]
    days = int(x.col("days_without_activity")[i])
    ev = {
        "last_activity": _iso(last),
        "created_at": _iso(x.col("created_at")[i]),
        "days_without_activity": days,
    }
    what = "since creation" if pd.isna(last) else f"since {ev['last_activity']}"
    return f"no activity for {days} days ({what})", ev


@hygiene_rule(
    Rule.NO_ACTIVITY_REVIEW,
    Severity.WARNING,
    "no activity in 60 days: review the deal with the manager",
    _IDLE_EVIDENCE,
)
def no_activity_review(x: RuleInput) -> Iterator[HygieneFlag]:
    cfg = x.stages.hygiene
    idle = x.col("days_without_activity")
    for i in np.flatnonzero((idle >= cfg.no_activity_review_days) & ~_stale(x)):
        text, ev = _idle(x, i)
        yield x.flag(
            i,
            Rule.NO_ACTIVITY_REVIEW,
            f"{text}: review with manager",
            threshold_days=cfg.no_activity_review_days,
            **ev,
        )


def _stale(x: RuleInput) -> np.ndarray:
    cfg = x.stages.hygiene
    # Stale is past review too: a config with stale_days below the review days flags neither early.
    return x.col("days_without_activity") >= max(cfg.stale_days, cfg.no_activity_review_days)


@hygiene_rule(
    Rule.STALE,
    Severity.CRITICAL,
    "no activity in 90 days: the deal is stale, propose closed-lost",
    _IDLE_EVIDENCE,
)
def stale_no_activity(x: RuleInput) -> Iterator[HygieneFlag]:
    for i in np.flatnonzero(_stale(x)):
        text, ev = _idle(x, i)
        yield x.flag(
            i,
            Rule.STALE,
            f"{text}: stale, propose closed-lost",
            threshold_days=x.stages.hygiene.stale_days,
            **ev,
        )


@hygiene_rule(
    Rule.CLOSE_DATE_PAST,
    Severity.WARNING,
    "close date in the past: update it or close the deal",
    ("expected_close_date", "days_overdue"),
)
def close_date_past(x: RuleInput) -> Iterator[HygieneFlag]:
    passed = x.col("close_date_passed") & x.known("expected_close_date")
    overdue = -x.col("days_to_expected_close")
    for i in np.flatnonzero(passed):
        close = _iso(x.col("expected_close_date")[i])
        yield x.flag(
            i,
            Rule.CLOSE_DATE_PAST,
            f"expected close date {close} is {int(overdue[i])} days past: update it or close",
            expected_close_date=close,
            days_overdue=int(overdue[i]),
        )


@hygiene_rule(
    Rule.NO_NEXT_STEP,
    Severity.CRITICAL,
    "no next step or no next-step date: not allowed",
    ("next_step", "next_step_date"),
)
def no_next_step(x: RuleInput) -> Iterator[HygieneFlag]:
    no_step = (x.col("next_step_defined") == 0) & x.known("next_step")  # NaN is not "no step"
    no_date = pd.isna(x.col("days_to_next_step")) & x.known("next_step_date")
    for i in np.flatnonzero(no_step | no_date):
        gaps = [n for n, m in (("next step", no_step[i]), ("next-step date", no_date[i])) if m]
        yield x.flag(
            i,
            Rule.NO_NEXT_STEP,
            f"no {' and no '.join(gaps)}: every deal needs both",
            next_step=None if no_step[i] else _opt_text(x.col("next_step")[i]),
            next_step_date=_iso(x.col("next_step_date")[i]),
        )


@hygiene_rule(
    Rule.QUARTERLY_CLEANUP,
    Severity.INFO,
    "quarterly cleanup: deals older than 90 days are reactivated with evidence or closed",
    ("created_at", "quarter_end", "age_at_quarter_end", "threshold_days"),
)
def quarterly_cleanup(x: RuleInput) -> Iterator[HygieneFlag]:
    cfg = x.stages.hygiene
    near_end = x.col("days_left_in_quarter") < x.cleanup_window_days
    age = x.col("age_at_quarter_end")
    q_end = quarter_end(x.as_of).date()
    for i in np.flatnonzero(near_end & (age > cfg.cleanup_age_days)):
        yield x.flag(
            i,
            Rule.QUARTERLY_CLEANUP,
            f"{int(age[i])} days old at quarter end {q_end}: "
            "reactivate with evidence or close as lost",
            created_at=_iso(x.col("created_at")[i]),
            quarter_end=q_end.isoformat(),
            age_at_quarter_end=int(age[i]),
            threshold_days=cfg.cleanup_age_days,
        )


@hygiene_rule(
    Rule.TIME_IN_STAGE,
    Severity.WARNING,
    "time in stage far above the stage norm: flag the deal",
    ("stage", "stage_entered_at", "days_in_stage", "norm_days", "limit_days"),
)
def time_in_stage(x: RuleInput) -> Iterator[HygieneFlag]:
    days, ratio = x.col("days_in_stage"), x.col("stage_norm_ratio")
    norm, limit = x.col("stage_norm_days"), x.col("stage_limit_days")
    for i in np.flatnonzero(x.col("over_stage_norm")):
        stage = str(x.col("stage")[i])
        yield x.flag(
            i,
            Rule.TIME_IN_STAGE,
            f"{int(days[i])} days in {x.labels[stage]}: {ratio[i]:.1f}x the {norm[i]:.0f}-day norm",
            stage=stage,
            stage_entered_at=_iso(x.col("stage_entered_at")[i]),
            days_in_stage=int(days[i]),
            norm_days=float(norm[i]),
            limit_days=float(limit[i]),
        )


@hygiene_rule(
    Rule.REQUIRED_FIELDS,
    Severity.WARNING,
    "every stage has required CRM fields (amount, decision maker, proposal sent, ...)",
    ("stage", "missing", "labels"),
)
def required_fields_missing(x: RuleInput) -> Iterator[HygieneFlag]:
    missing = _required_missing(x.tables, x.facts, x.stages, x.as_of)
    pos = {str(d): i for i, d in enumerate(x.col("deal_id"))}
    for deal_id, items in missing.items():
        i = pos[deal_id]
        stage = str(x.col("stage")[i])
        yield x.flag(
            i,
            Rule.REQUIRED_FIELDS,
            f"missing for {x.labels[stage]}: " + ", ".join(label for _, label in items),
            stage=stage,
            missing=[f for f, _ in items],
            labels=[lab for _, lab in items],
        )


def _required_missing(
    tables: CanonicalTables, open_deals: pd.DataFrame, stages: StageConfig, as_of: pd.Timestamp
) -> dict[str, list[tuple[str, str]]]:
    """deal_id -> [(field, label)] of required fields missing for its stage."""
    ids = open_deals["deal_id"]
    stk = scoped_events(tables.stakeholders, "added_at", as_of, ids)
    acts = scoped_events(tables.activities, "occurred_at", as_of, ids)
    deals_cur = tables.deals.set_index("deal_id")
    missing: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for stage in stages.open_stages:
        in_stage = (open_deals["stage"] == stage.key).to_numpy(dtype=bool, na_value=False)
        if not in_stage.any():
            continue
        sub = open_deals[in_stage]
        for req in stage.required_fields:
            kind, _, name = req.field.partition(":")
            if kind == "stakeholder":
                miss = ~sub["deal_id"].isin(stk.loc[stk["role"] == name, "deal_id"]).to_numpy()
            elif kind == "activity":
                miss = ~sub["deal_id"].isin(acts.loc[acts["type"] == name, "deal_id"]).to_numpy()
            else:
                col = f"custom_{name}" if kind == "custom" else req.field
                miss = _blank(_column(sub, deals_cur, col)).to_numpy(dtype=bool)
                miss = miss & _column_known(sub, col)  # unknown at as_of: not "missing"
            for d in sub["deal_id"].to_numpy()[miss]:
                missing[str(d)].append((req.field, req.label))
    return missing


def _column(deals: pd.DataFrame, deals_cur: pd.DataFrame, col: str) -> pd.Series:
    """A deal column's values for ``deals`` (their states; the deal row for a column the states
    lack); all missing when the export has no such column."""
    if col in deals.columns:
        return deals[col]
    if col in deals_cur.columns:
        return deals_cur[col].reindex(deals["deal_id"]).set_axis(deals.index)
    return pd.Series(np.nan, index=deals.index)


def _column_known(deals: pd.DataFrame, col: str) -> np.ndarray:
    """Whether a required deal column can be known at the date: a tracked field by its
    ``<field>_known``, a column fixed at creation always, any other column (custom columns,
    or one the export lacks) only where the deal row's values hold (``row_known``)."""
    if col in TRACKED_FIELDS:
        return deals[known_column(col)].to_numpy(dtype=bool)
    if col in STATIC_COLUMNS:
        return np.ones(len(deals), dtype=bool)
    return deals["row_known"].to_numpy(dtype=bool)


# --- entry points ---------------------------------------------------------------------------------
def hygiene_flags(
    tables: CanonicalTables,
    stages: StageConfig,
    as_of: pd.Timestamp,
    *,
    owner: str | None = None,
    team: str | None = None,
    cleanup_window_days: int = CLEANUP_WINDOW_DAYS,
) -> list[HygieneFlag]:
    """Every hygiene rule broken by an open deal at ``as_of``, in deal then rule order.

    An unknown ``owner`` or ``team`` is a :class:`~features.errors.NotFoundError` (see
    :mod:`features.pipeline.scope`).
    """
    as_of = pd.Timestamp(as_of)
    states = scoped_states(tables, stages, as_of, team=team, owner=owner, open_only=True)
    facts = open_deal_facts(tables, stages, as_of, states)
    return flags_for_facts(tables, stages, as_of, facts, cleanup_window_days=cleanup_window_days)


def flags_for_facts(
    tables: CanonicalTables,
    stages: StageConfig,
    as_of: pd.Timestamp,
    facts: pd.DataFrame,
    *,
    cleanup_window_days: int = CLEANUP_WINDOW_DAYS,
) -> list[HygieneFlag]:
    """:func:`hygiene_flags` for open deals' facts already built as of ``as_of`` (a subset is
    fine): every registered rule, in deal then rule order."""
    deals = facts.sort_values("deal_id").reset_index(drop=True)
    x = RuleInput(tables, stages, pd.Timestamp(as_of), deals, cleanup_window_days)
    flags = [f for spec in RULES.values() for f in spec.check(x)]
    order = {r: k for k, r in enumerate(Rule)}
    flags.sort(key=lambda f: (f.deal_id, order[f.rule]))
    return flags


def describe_rules() -> list[dict[str, Any]]:
    """The registry as rows (rule, severity, seed, evidence), in listing order."""
    return [
        {"rule": r.rule.value, "severity": r.severity.value, "seed": r.seed, "evidence": r.evidence}
        for r in sorted(RULES.values(), key=lambda r: list(Rule).index(r.rule))
    ]


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
