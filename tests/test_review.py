"""The weekly review pack: threshold, net changes of the week, risks, order, JSON, point in time.

As of 2025-06-15 the review week is 2025-06-09..2025-06-15 (changes stamped after the end of
8 June).
"""

import json
from datetime import date

import pytest

from features.data.calendar import to_timestamp
from features.errors import InputError, NotFoundError
from features.pipeline.hygiene import Rule
from features.pipeline.review import review_pack
from tests.factory import deal, tables

AS_OF = to_timestamp("2025-06-15")
OK = {"next_step": "call", "next_step_date": "2025-06-20", "competitor": "X"}


def build(extra_fields=(), extra_acts=(), extra_history=()):
    return tables(
        deals=[
            deal("R1", "2025-03-01", stage="proposal", amount=150_000.0,
                 expected_close_date="2025-08-31", forecast_category="best_case", **OK),
            deal("R2", "2025-05-01", amount=100_000.0, expected_close_date="2025-07-31",
                 forecast_category="commit", **OK),
            deal("R3", "2025-05-01", amount=99_999.0, expected_close_date="2025-07-31", **OK),
            deal("R4", "2025-01-01", amount=400_000.0, stage="closed_won", outcome="won",
                 closed_at="2025-06-10", forecast_category="closed", **OK),
            deal("R5", "2025-02-01", owner="bob", team="south", stage="negotiation",
                 amount=250_000.0, expected_close_date="2025-06-30", **OK),
        ],
        stage_history=[
            ("R1", "qualification", "2025-03-01"),
            ("R1", "needs_analysis", "2025-06-09"),  # two stage moves in the week
            ("R1", "proposal", "2025-06-10"),
            ("R2", "qualification", "2025-05-01"),
            ("R3", "qualification", "2025-05-01"),
            ("R4", "qualification", "2025-01-01"),
            ("R4", "closed_won", "2025-06-10"),
            ("R5", "qualification", "2025-02-01"),
            ("R5", "negotiation", "2025-03-01"),
            *extra_history,
        ],
        # stamps carry a time (one format for the whole column)
        field_history=[
            ("R1", "expected_close_date", "2025-06-30", "2025-07-31", "2025-06-05 00:00"),
            ("R1", "expected_close_date", "2025-07-31", "2025-08-31", "2025-06-14 00:00"),
            ("R1", "amount", "120000.0", "150000.0", "2025-06-12 00:00"),
            # outside the week
            ("R1", "forecast_category", "pipeline", "best_case", "2025-06-08 00:00"),
            ("R1", "forecast_category", "commit", "best_case", "2025-06-09 00:00"),
            # R1's next step changes twice and ends where it started: no net change
            ("R1", "next_step", "call", "demo", "2025-06-10 09:00"),
            ("R1", "next_step", "demo", "call", "2025-06-11 17:30"),
            # R2's next step changes three times in the week (and once before it)
            ("R2", "next_step", "kickoff", "intro", "2025-06-05 00:00"),
            ("R2", "next_step", "intro", "demo", "2025-06-10 08:00"),
            ("R2", "next_step", "demo", "pricing", "2025-06-11 10:00"),
            ("R2", "next_step", "pricing", "call", "2025-06-13 16:45"),
            *extra_fields,
        ],
        activities=[
            ("R1", "call", "2025-06-01"),
            ("R1", "call", "2025-06-09"),
            ("R1", "meeting", "2025-06-11"),
            ("R1", "call", "2025-06-13"),
            ("R2", "call", "2025-06-14"),
            ("R5", "call", "2025-04-01"),
            *extra_acts,
        ],
        stakeholders=[
            ("R2", "c1", "decision_maker", "2025-05-01"),
            ("R2", "c2", "champion", "2025-05-02"),
            ("R5", "c3", "decision_maker", "2025-02-01"),
        ],
    )  # fmt: skip


@pytest.fixture(scope="module")
def pack(cfg):
    return review_pack(build(), cfg, AS_OF)


def test_threshold_and_order(pack, cfg):
    assert pack.min_amount == 100_000.0
    assert [d.deal_id for d in pack.deals] == ["R5", "R1", "R2"]  # 99,999 and closed R4 out
    assert pack.total_value == 500_000.0 and pack.deal_count == 3
    assert (pack.week_first_day, pack.week_last_day) == (date(2025, 6, 9), date(2025, 6, 15))
    by_close = review_pack(build(), cfg, AS_OF, sort_by="expected_close")
    assert [d.deal_id for d in by_close.deals] == ["R5", "R2", "R1"]
    big = review_pack(build(), cfg, AS_OF, min_amount=150_000)
    assert [d.deal_id for d in big.deals] == ["R5", "R1"]
    assert [d.deal_id for d in review_pack(build(), cfg, AS_OF, team="south").deals] == ["R5"]


def test_changes_in_the_last_week(pack):
    r1 = next(d for d in pack.deals if d.deal_id == "R1")
    got = [(c.last_at.isoformat(), c.field, c.old, c.new, c.changes, c.path) for c in r1.changes]
    # One net change per field, by last change; next_step went call -> demo -> call: left out.
    assert got == [
        ("2025-06-09T00:00:00", "forecast_category", "commit", "best_case", 1, []),
        (
            "2025-06-10T00:00:00",
            "stage",
            "qualification",
            "proposal",
            2,
            ["qualification", "needs_analysis", "proposal"],
        ),
        ("2025-06-12T00:00:00", "amount", "120000.0", "150000.0", 1, []),
        ("2025-06-14T00:00:00", "expected_close_date", "2025-07-31", "2025-08-31", 1, []),
    ]
    assert r1.activities_last_week == {"call": 2, "meeting": 1}
    assert r1.stage_label == "3 Proposal / Quote" and r1.days_in_stage == 5
    assert r1.last_activity == date(2025, 6, 13)
    r5 = pack.deals[0]
    assert r5.changes == [] and r5.activities_last_week == {}


def test_three_changes_net_to_first_old_and_last_new(pack):
    r2 = next(d for d in pack.deals if d.deal_id == "R2")
    assert len(r2.changes) == 1
    (c,) = r2.changes
    # The 5 June change is before the week: the week starts from "intro".
    assert (c.field, c.old, c.new, c.changes) == ("next_step", "intro", "call", 3)
    assert c.last_at.isoformat() == "2025-06-13T16:45:00" and c.path == []


def test_risk_notes_and_flags(pack):
    r1, r2, r5 = (next(d for d in pack.deals if d.deal_id == k) for k in ("R1", "R2", "R5"))
    assert r1.risk_notes == ["close date pushed 2 times", "no decision maker", "no contacts mapped"]
    assert any(f.rule is Rule.REQUIRED_FIELDS for f in r1.flags)  # no proposal activity
    # R2: 45 days in qualification (2.1x the 21-day norm), committed at a 10% stage
    assert r2.risk_notes == [
        "in 1 Qualification 2.1x norm",
        "commit at 1 Qualification (stage p(win) 10%)",
    ]
    # R5: in negotiation since 1 March (106 days, 5.0x the 21-day norm), idle since 1 April
    assert r5.risk_notes == [
        "single-threaded (1 contact)",
        "no activity 75 days",
        "in 4 Negotiation 5.0x norm",
    ]
    assert {f.rule for f in r5.flags} >= {Rule.NO_ACTIVITY_REVIEW, Rule.TIME_IN_STAGE}
    assert r5.risk_note == "; ".join(r5.risk_notes)


def test_json_parses(pack):
    payload = json.loads(json.dumps(pack.to_dict(), allow_nan=False))
    assert [d["deal_id"] for d in payload["deals"]] == ["R5", "R1", "R2"]
    r1 = payload["deals"][1]
    assert r1["expected_close_date"] == "2025-08-31"
    assert r1["changes"][1] == {
        "field": "stage",
        "old": "qualification",
        "new": "proposal",
        "changes": 2,
        "last_at": "2025-06-10T00:00:00",
        "path": ["qualification", "needs_analysis", "proposal"],
    }
    assert [c["field"] for c in r1["changes"]] == [
        "forecast_category",
        "stage",
        "amount",
        "expected_close_date",
    ]
    assert payload["deals"][2]["changes"][0]["changes"] == 3
    assert r1["risk_note"].startswith("close date pushed 2 times")
    assert payload["deals"][0]["flags"][0]["rule"] in {r.value for r in Rule}


def test_later_events_change_nothing(pack, cfg):
    later = build(
        extra_fields=[
            ("R1", "amount", "150000.0", "90000.0", "2025-06-16 00:00"),
            ("R1", "next_step", "call", "send contract", "2025-06-16 00:00"),
            ("R2", "next_step", "call", "intro", "2025-06-17 00:00"),  # would net R2 to nil
        ],
        extra_acts=[("R5", "call", "2025-06-16"), ("R1", "demo", "2025-06-20")],
        extra_history=[("R2", "needs_analysis", "2025-06-16")],
    )
    # The deal row carries R1's newest amount; as of 15 June the history gives 150k back.
    later.deals.loc[later.deals["deal_id"] == "R1", "amount"] = 90_000.0
    assert review_pack(later, cfg, AS_OF).to_dict() == pack.to_dict()
    after = review_pack(later, cfg, to_timestamp("2025-06-16"))
    assert "R1" not in [d.deal_id for d in after.deals]


@pytest.mark.parametrize(("as_of", "over"), [("2025-04-05", False), ("2025-04-06", True)])
def test_review_and_hygiene_agree_on_time_in_stage(cfg, as_of, over):
    """One boundary: 63 days in needs analysis is exactly 1.5x its 42-day norm and not over it;
    64 days is. The risk note and the hygiene flag fire together or not at all."""
    data = tables(
        deals=[deal("T1", "2025-02-01", stage="needs_analysis", amount=200_000.0, **OK)],
        stage_history=[("T1", "needs_analysis", "2025-02-01")],
        activities=[("T1", "call", "2025-04-01")],
    )
    (d,) = review_pack(data, cfg, to_timestamp(as_of)).deals
    noted = any("x norm" in n for n in d.risk_notes)
    flagged = any(f.rule is Rule.TIME_IN_STAGE for f in d.flags)
    assert noted is flagged is over
    if over:
        assert "in 2 Needs Analysis 1.5x norm" in d.risk_notes  # 64 / 42 = 1.52


def test_idle_days_count_from_creation_as_in_hygiene(cfg):
    """No activity yet: idle since creation, the same count the hygiene rules use."""
    data = tables(
        deals=[deal("I1", "2025-05-01", amount=200_000.0, **OK)],
        stage_history=[("I1", "qualification", "2025-05-01")],
        stakeholders=[("I1", "c1", "decision_maker", "2025-05-01")],
    )
    (d,) = review_pack(data, cfg, to_timestamp("2025-06-30")).deals
    assert d.last_activity is None
    assert "no activity 60 days" in d.risk_notes
    (flag,) = [f for f in d.flags if f.rule is Rule.NO_ACTIVITY_REVIEW]
    assert flag.evidence["days_without_activity"] == 60


def test_bad_sort_and_unknown_scope_are_user_errors(cfg):
    with pytest.raises(InputError, match="sort_by"):
        review_pack(build(), cfg, AS_OF, sort_by="size")  # type: ignore[arg-type]
    with pytest.raises(NotFoundError, match="--team 'nowhere'"):
        review_pack(build(), cfg, AS_OF, team="nowhere")


def test_a_deals_creation_is_not_a_change_of_the_week(cfg):
    """A deal created in the week: the creation rows of its fields (no old value, on its
    creation day) and its first stage are how it started, not changes; a next-step date first
    set two days later is one."""
    data = tables(
        deals=[deal("C1", "2025-06-10", amount=200_000.0, **OK)],
        stage_history=[("C1", "qualification", "2025-06-10")],
        field_history=[("C1", "next_step_date", None, "2025-06-20", "2025-06-12 09:00")],
    )
    assert (data.field_history["old_value"].isna()).sum() == 6  # five creation rows + the date
    (d,) = review_pack(data, cfg, AS_OF).deals
    assert [(c.field, c.old, c.new, c.changes) for c in d.changes] == [
        ("next_step_date", None, "2025-06-20", 1)
    ]


def test_deals_with_an_unknown_amount_are_counted_not_reviewed(cfg):
    """A CRM that does not log amounts: before the export no open deal's amount is known, so
    none can be compared with the threshold; the pack says how many."""
    data = tables(
        deals=[deal("U1", "2025-05-01", amount=500_000.0, **OK)],
        stage_history=[("U1", "qualification", "2025-05-01")],
        logged_from_creation=("expected_close_date", "next_step", "next_step_date"),
    )
    pack = review_pack(data, cfg, AS_OF)
    assert pack.deals == [] and pack.amount_unknown == 1
    assert review_pack(data, cfg, to_timestamp("2025-12-31")).deal_count == 1  # the export says
