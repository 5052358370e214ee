"""Each hygiene rule fires at its threshold and not a day before; later events change nothing."""

import json

import pytest

from features.data.calendar import to_timestamp
from features.errors import NotFoundError
from features.pipeline.hygiene import (
    RULES,
    Rule,
    Severity,
    describe_rules,
    hygiene_flags,
    stage_outliers,
)
from tests.factory import deal, tables

# A clean qualification deal: every required field, a next step, a decision maker, recent work.
CLEAN = {
    "expected_close_date": "2025-12-31",
    "next_step": "site visit",
    "next_step_date": "2025-12-01",
    "competitor": "Rival GmbH",
}


def one_deal(
    created="2025-01-01",
    stage="qualification",
    entered=None,
    acts=(("call", "2025-03-01"),),
    stk=(("c1", "decision_maker", "2025-01-01"),),
    derived=False,
    **over,
):
    row = deal("D", created, stage=stage, **{**CLEAN, **over})
    hist = [("D", stage, entered or created)]
    if derived:
        row["history_source"] = "derived"
        hist = [("D", None, created), ("D", stage, row["observed_at"])]
    return tables(
        deals=[row],
        stage_history=hist,
        activities=[("D", k, t) for k, t in acts],
        stakeholders=[("D", c, r, t) for c, r, t in stk],
        derived=derived,
    )


@pytest.fixture
def rules(cfg):
    def flags_by_rule(data, as_of, **kw):
        return {f.rule: f for f in hygiene_flags(data, cfg, to_timestamp(as_of), **kw)}

    return flags_by_rule


def test_clean_deal_has_no_flags(rules):
    assert rules(one_deal(), "2025-01-20") == {}


@pytest.mark.parametrize(
    ("as_of", "expected"),
    [
        ("2025-04-29", None),  # 59 days after the last call
        ("2025-04-30", Rule.NO_ACTIVITY_REVIEW),  # 60: inclusive
        ("2025-05-29", Rule.NO_ACTIVITY_REVIEW),  # 89
        ("2025-05-30", Rule.STALE),  # 90: stale replaces review
    ],
)
def test_no_activity_thresholds(as_of, expected, rules):
    found = set(rules(one_deal(), as_of)) & {Rule.NO_ACTIVITY_REVIEW, Rule.STALE}
    assert found == ({expected} if expected else set())
    if expected:
        flag = rules(one_deal(), as_of)[expected]
        assert flag.evidence["last_activity"] == "2025-03-01"
        assert flag.severity is (Severity.CRITICAL if expected is Rule.STALE else Severity.WARNING)


def test_no_activity_counts_from_creation_when_none(rules):
    data = one_deal(created="2025-03-01", acts=())
    assert Rule.NO_ACTIVITY_REVIEW not in rules(data, "2025-04-29")
    flag = rules(data, "2025-04-30")[Rule.NO_ACTIVITY_REVIEW]
    assert flag.evidence["last_activity"] is None and flag.evidence["days_without_activity"] == 60
    assert "since creation" in flag.message


def test_close_date_past(rules):
    data = one_deal(expected_close_date="2025-05-31", acts=(("call", "2025-05-30"),))
    assert Rule.CLOSE_DATE_PAST not in rules(data, "2025-05-31")  # today is not past
    flag = rules(data, "2025-06-01")[Rule.CLOSE_DATE_PAST]
    assert flag.evidence == {"expected_close_date": "2025-05-31", "days_overdue": 1}
    assert flag.deal_id == "D" and flag.owner == "alice"


@pytest.mark.parametrize(
    ("over", "fires"),
    [
        ({}, False),
        ({"next_step": None}, True),
        ({"next_step": "   "}, True),
        ({"next_step_date": None}, True),
    ],
)
def test_no_next_step(over, fires, rules):
    assert (Rule.NO_NEXT_STEP in rules(one_deal(**over), "2025-01-20")) is fires


@pytest.mark.parametrize(
    ("created", "as_of", "fires"),
    [
        ("2025-04-01", "2025-06-30", False),  # 90 days old at 30 June: not *older* than 90
        ("2025-03-31", "2025-06-30", True),  # 91
        ("2025-03-31", "2025-06-17", True),  # 13 days before quarter end: in the window
        ("2025-03-31", "2025-06-16", False),  # 14 days before: not yet
    ],
)
def test_quarterly_cleanup(created, as_of, fires, rules):
    data = one_deal(created=created, acts=(("call", "2025-06-15"),), expected_close_date=None)
    flag = rules(data, as_of).get(Rule.QUARTERLY_CLEANUP)
    assert (flag is not None) is fires
    if flag:
        assert flag.evidence["quarter_end"] == "2025-06-30"
        assert flag.evidence["age_at_quarter_end"] == 91


@pytest.mark.parametrize(("as_of", "fires"), [("2025-04-05", False), ("2025-04-06", True)])
def test_time_in_stage(as_of, fires, rules):
    # needs analysis norm 42 days x 1.5 = 63; entered 1 Feb: 63 days on 5 April, 64 on 6 April.
    data = one_deal(
        stage="needs_analysis",
        entered="2025-02-01",
        acts=(("call", "2025-04-01"),),
        custom_decision_criteria="uptime",
        custom_buying_process="board",
        stk=(("c1", "champion", "2025-01-01"),),
    )
    flag = rules(data, as_of).get(Rule.TIME_IN_STAGE)
    assert (flag is not None) is fires
    if flag:
        assert flag.evidence["days_in_stage"] == 64 and flag.evidence["limit_days"] == 63


def test_unknown_stage_never_flagged_for_time_in_stage(rules, cfg):
    # Deals-only import: seen in proposal at the export; entry date unknown.
    data = one_deal(created="2024-01-01", stage="proposal", derived=True)
    flags = hygiene_flags(data, cfg, to_timestamp("2025-12-31"))
    assert all(f.rule is not Rule.TIME_IN_STAGE for f in flags)
    # Before the export the stage and tracked fields are unknown: no close-date/next-step flags.
    early = rules(data, "2025-06-01")
    assert Rule.TIME_IN_STAGE not in early and Rule.NO_NEXT_STEP not in early
    assert Rule.CLOSE_DATE_PAST not in early and Rule.REQUIRED_FIELDS not in early


def test_required_deals_column_and_stakeholder(rules):
    data = one_deal(competitor=None, stk=(("c1", "decision_maker", "2025-02-01"),))
    flag = rules(data, "2025-01-31")[Rule.REQUIRED_FIELDS]
    assert flag.evidence["missing"] == ["stakeholder:decision_maker", "competitor"]
    assert flag.evidence["stage"] == "qualification"
    # the decision maker added on the as_of day counts; the competitor is still missing
    assert rules(data, "2025-02-01")[Rule.REQUIRED_FIELDS].evidence["missing"] == ["competitor"]


def test_required_activity_form(rules):
    data = one_deal(stage="proposal", acts=(("call", "2025-01-02"), ("proposal", "2025-01-10")))
    assert rules(data, "2025-01-09")[Rule.REQUIRED_FIELDS].evidence["missing"] == [
        "activity:proposal"
    ]
    assert Rule.REQUIRED_FIELDS not in rules(data, "2025-01-10")


@pytest.mark.parametrize(
    ("custom", "missing"),
    [
        ({"custom_decision_criteria": "uptime", "custom_buying_process": "board"}, []),
        ({"custom_decision_criteria": "", "custom_buying_process": "board"}, ["decision_criteria"]),
        ({"custom_buying_process": "board"}, ["decision_criteria"]),  # column absent
        ({}, ["decision_criteria", "buying_process"]),
    ],
)
def test_required_custom_form(custom, missing, rules):
    # Custom columns carry no history: the export (taken on the as_of day) is what says them.
    data = one_deal(
        stage="needs_analysis",
        stk=(("c1", "champion", "2025-01-01"),),
        observed_at="2025-01-20",
        **custom,
    )
    flag = rules(data, "2025-01-20").get(Rule.REQUIRED_FIELDS)
    got = [] if flag is None else flag.evidence["missing"]
    assert got == [f"custom:{m}" for m in missing]


def test_stage_outliers_aggregate_per_owner(cfg):
    deals = [deal(f"N{i}", "2025-01-01", stage="needs_analysis", **CLEAN) for i in range(5)] + [
        deal("B1", "2025-01-01", owner="bob", stage="needs_analysis", **CLEAN)
    ]
    data = tables(
        deals=deals,
        stage_history=[(d["deal_id"], "needs_analysis", "2025-01-01") for d in deals],
        activities=[(d["deal_id"], "call", "2025-03-05") for d in deals],
    )
    flags = hygiene_flags(data, cfg, to_timestamp("2025-03-12"))  # 70 days = 10 weeks
    out = stage_outliers(flags, cfg)
    assert [(o.owner, o.count) for o in out] == [("alice", 5), ("bob", 1)]
    assert out[0].message.startswith(
        "alice has 5 deals in 2 Needs Analysis for 10 weeks (median); the norm is 6 weeks"
    )


def test_scope_closed_deals_and_json(cfg):
    data = tables(
        deals=[
            deal("A", "2025-01-01", next_step_date=None),
            deal("B", "2025-01-01", owner="bob", team="south", next_step_date=None),
            deal("C", "2025-01-01", next_step_date=None, outcome="lost", stage="closed_lost",
                 closed_at="2025-01-10", loss_reason="fit"),
        ],
    )  # fmt: skip
    ids = {f.deal_id for f in hygiene_flags(data, cfg, to_timestamp("2025-01-20"))}
    assert ids == {"A", "B"}  # closed deals are not checked
    assert {
        f.deal_id for f in hygiene_flags(data, cfg, to_timestamp("2025-01-20"), owner="bob")
    } == {"B"}
    assert {
        f.deal_id for f in hygiene_flags(data, cfg, to_timestamp("2025-01-20"), team="north")
    } == {"A"}
    flags = hygiene_flags(data, cfg, to_timestamp("2025-01-20"))
    json.dumps([f.to_dict() for f in flags], allow_nan=False)


def test_later_events_change_no_flag(cfg):
    base = dict(
        stage="needs_analysis",
        entered="2025-01-01",
        expected_close_date="2025-03-01",
        next_step=None,
        competitor=None,
    )
    as_of = to_timestamp("2025-04-15")
    before = hygiene_flags(one_deal(**base), cfg, as_of)
    later = tables(
        deals=[
            deal("D", "2025-01-01", **{**CLEAN, "stage": "proposal", "expected_close_date":
                 "2025-09-30", "next_step": "visit", "custom_decision_criteria": "x"}),
        ],
        stage_history=[("D", "needs_analysis", "2025-01-01"), ("D", "proposal", "2025-04-16")],
        field_history=[
            ("D", "expected_close_date", "2025-03-01", "2025-09-30", "2025-04-20"),
            ("D", "next_step", None, "visit", "2025-04-16"),
        ],
        activities=[("D", "call", "2025-03-01"), ("D", "demo", "2025-04-16")],
        stakeholders=[("D", "c1", "decision_maker", "2025-01-01"),
                      ("D", "c2", "champion", "2025-04-16")],
    )  # fmt: skip
    after = hygiene_flags(later, cfg, as_of)
    assert {f.rule for f in before} >= {Rule.CLOSE_DATE_PAST, Rule.TIME_IN_STAGE, Rule.NO_NEXT_STEP}
    # custom columns carry no history (exported value); everything else must match exactly
    strip = [f for f in after if f.rule is not Rule.REQUIRED_FIELDS]
    assert strip == [f for f in before if f.rule is not Rule.REQUIRED_FIELDS]
    req_after = next(f for f in after if f.rule is Rule.REQUIRED_FIELDS).evidence["missing"]
    assert "stakeholder:champion" in req_after
    assert hygiene_flags(later, cfg, to_timestamp("2025-04-21")) != after


def test_every_rule_is_registered_with_its_seed_words_and_evidence(rules):
    listed = describe_rules()
    assert [r["rule"] for r in listed] == [r.value for r in Rule]
    assert all(r["seed"] and r["evidence"] for r in listed)
    # A flag carries exactly the evidence its rule declares.
    data = one_deal(expected_close_date="2025-05-31", next_step=None, competitor=None, acts=())
    flags = rules(data, "2025-06-20")
    assert {Rule.STALE, Rule.CLOSE_DATE_PAST, Rule.NO_NEXT_STEP, Rule.QUARTERLY_CLEANUP} <= set(
        flags
    )
    for rule, flag in flags.items():
        assert tuple(flag.evidence) == RULES[rule].evidence


def test_unknown_owner_or_team_is_not_found(cfg):
    data = one_deal()
    with pytest.raises(NotFoundError, match=r"--owner 'alcie'.*known: alice"):
        hygiene_flags(data, cfg, to_timestamp("2025-01-20"), owner="alcie")
    with pytest.raises(NotFoundError, match=r"--team 'south'.*known: north"):
        hygiene_flags(data, cfg, to_timestamp("2025-01-20"), team="south")


def test_unknown_is_not_missing(rules):
    """A CRM that logs the expected close date only: before the export, the close date is
    known (and past), the next step, its date and the amount are unknown: never flagged as
    missing. At the export the row says them, and their gaps are flagged."""
    data = tables(
        deals=[
            deal("D", "2025-01-01", amount=None, expected_close_date="2025-05-31",
                 next_step=None, next_step_date=None, competitor="Rival GmbH")
        ],
        stage_history=[("D", "qualification", "2025-01-01")],
        field_history=[("D", "expected_close_date", "2025-04-30", "2025-05-31", "2025-03-01")],
        activities=[("D", "call", "2025-05-20")],
        stakeholders=[("D", "c1", "decision_maker", "2025-01-01")],
        logged_from_creation=("expected_close_date",),
    )  # fmt: skip
    early = rules(data, "2025-06-01")
    assert early[Rule.CLOSE_DATE_PAST].evidence["expected_close_date"] == "2025-05-31"
    assert Rule.NO_NEXT_STEP not in early and Rule.REQUIRED_FIELDS not in early
    at_export = rules(data, "2025-12-31")
    assert at_export[Rule.NO_NEXT_STEP].evidence == {"next_step": None, "next_step_date": None}
    assert at_export[Rule.REQUIRED_FIELDS].evidence["missing"] == ["amount"]
