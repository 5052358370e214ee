"""Pipeline metrics against hand-computed values on a ten-deal fixture, and point-in-time safety.

As of 2025-06-15 (quarter 2025Q2, window 2024-06-16..2025-06-15, previous window
2023-06-17..2024-06-15). Open: O1 needs 200k, O2 proposal 300k, O3 qualification 100k (closes Q3),
O4 negotiation 500k (bob/south). Closed in window: W1 won 150k, W2 won 250k (in Q2), L1/L3 lost on
price, L2 lost to a competitor. Before: P1 won, L4 lost in negotiation.
"""

import dataclasses
import json
from datetime import date

import pandas as pd
import pytest

from features.data.calendar import to_timestamp
from features.data.schema import TRACKED_FIELDS, CanonicalTables
from features.data.stages import parse_stage_config
from features.errors import NotFoundError
from features.pipeline.hygiene import hygiene_flags
from features.pipeline.metrics import (
    METRICS,
    PipelineMetrics,
    StageConversion,
    _coverage_band,
    _funnel,
    compute_metric,
    compute_metrics,
)
from features.pipeline.review import review_pack
from features.signals.pointintime import deal_states_as_of
from tests.factory import deal, tables

AS_OF = to_timestamp("2025-06-15")


def _deals() -> list[dict]:
    won = {"outcome": "won", "stage": "closed_won", "forecast_category": "closed"}
    lost = {"outcome": "lost", "stage": "closed_lost", "forecast_category": "closed"}
    return [
        deal("O1", "2025-01-10", stage="needs_analysis", amount=200_000.0,
             expected_close_date="2025-06-20"),
        deal("O2", "2025-04-05", stage="proposal", amount=300_000.0,
             expected_close_date="2025-06-30"),
        deal("O3", "2025-03-01", amount=100_000.0, expected_close_date="2025-09-30"),
        deal("O4", "2025-05-01", owner="bob", team="south", stage="negotiation",
             amount=500_000.0, expected_close_date="2025-06-25"),
        deal("W1", "2024-09-01", amount=150_000.0, closed_at="2025-01-15", **won),
        deal("W2", "2025-02-01", amount=250_000.0, closed_at="2025-05-10", **won),
        deal("L1", "2024-08-01", amount=80_000.0, closed_at="2024-12-01", loss_reason="price",
             **lost),
        deal("L2", "2025-01-05", amount=120_000.0, closed_at="2025-03-05",
             loss_reason="competitor", **lost),
        deal("L3", "2024-11-01", amount=60_000.0, closed_at="2025-04-20", loss_reason="price",
             **lost),
        deal("P1", "2023-10-01", amount=100_000.0, closed_at="2024-03-01", **won),
        deal("L4", "2023-09-01", amount=90_000.0, closed_at="2024-01-10", loss_reason="timing",
             **lost),
    ]  # fmt: skip


HISTORY = [
    ("O1", "qualification", "2025-01-10"),
    ("O1", "needs_analysis", "2025-02-01"),
    ("O2", "qualification", "2025-04-05"),
    ("O2", "proposal", "2025-05-01"),
    ("O3", "qualification", "2025-03-01"),
    ("O4", "qualification", "2025-05-01"),
    ("O4", "needs_analysis", "2025-05-10"),
    ("O4", "proposal", "2025-05-20"),
    ("O4", "negotiation", "2025-06-01"),
    ("W1", "qualification", "2024-09-01"),
    ("W1", "needs_analysis", "2024-10-01"),
    ("W1", "proposal", "2024-11-15"),
    ("W1", "negotiation", "2024-12-15"),
    ("W1", "closed_won", "2025-01-15"),
    ("W2", "qualification", "2025-02-01"),
    ("W2", "proposal", "2025-03-15"),
    ("W2", "negotiation", "2025-04-15"),
    ("W2", "closed_won", "2025-05-10"),
    ("L1", "qualification", "2024-08-01"),
    ("L1", "needs_analysis", "2024-09-01"),
    ("L1", "closed_lost", "2024-12-01"),
    ("L2", "qualification", "2025-01-05"),
    ("L2", "closed_lost", "2025-03-05"),
    ("L3", "qualification", "2024-11-01"),
    ("L3", "needs_analysis", "2024-12-01"),
    ("L3", "proposal", "2025-02-01"),
    ("L3", "closed_lost", "2025-04-20"),
    ("P1", "qualification", "2023-10-01"),
    ("P1", "needs_analysis", "2023-11-01"),
    ("P1", "proposal", "2024-01-01"),
    ("P1", "negotiation", "2024-02-01"),
    ("P1", "closed_won", "2024-03-01"),
    ("L4", "qualification", "2023-09-01"),
    ("L4", "proposal", "2023-10-01"),
    ("L4", "negotiation", "2023-11-01"),
    ("L4", "closed_lost", "2024-01-10"),
]
ACTIVITIES = [
    ("O1", "call", "2025-03-20"),  # before the quarter
    ("O1", "meeting", "2025-04-10"),
    ("O1", "demo", "2025-05-05"),
    ("O2", "proposal", "2025-05-02"),
    ("O2", "call", "2025-06-10"),
    ("O4", "call", "2025-06-12"),
    ("O4", "email", "2025-06-14"),
    ("O3", "call", "2025-03-01"),
    ("W2", "site_visit", "2025-04-20"),
]
TARGETS = [
    ("company", "company", "2025Q2", 250_000.0),
    ("team", "north", "2025Q2", 100_000.0),
    ("owner", "alice", "2025Q2", 80_000.0),
    ("company", "company", "2025Q3", 1.0),
]


def build(extra_deals=(), extra_history=(), extra_fields=(), extra_acts=(), extra_stk=(), **kw):
    deals = _deals()
    for override in kw.pop("override", []):
        deals = [d if d["deal_id"] != override["deal_id"] else {**d, **override} for d in deals]
    return tables(
        deals=deals + list(extra_deals),
        stage_history=HISTORY + list(extra_history),
        field_history=list(extra_fields),
        activities=ACTIVITIES + list(extra_acts),
        stakeholders=list(extra_stk),
        targets=TARGETS,
    )


@pytest.fixture(scope="module")
def m(cfg):
    return compute_metrics(build(), cfg, AS_OF)


def test_open_pipeline_and_quarter(m):
    assert m.quarter == "2025Q2"
    assert (m.open_pipeline.count, m.open_pipeline.value) == (4, 1_100_000.0)
    # O3 closes in Q3: not in this quarter's pipeline.
    assert (m.closing_this_quarter.count, m.closing_this_quarter.value) == (3, 1_000_000.0)
    assert (m.new_pipeline.count, m.new_pipeline.value) == (2, 800_000.0)  # O2, O4


def test_coverage_company_team_owner(m, cfg):
    c = m.coverage
    assert c.target == 250_000.0 and c.target_scope == "company:company"
    assert c.ratio == pytest.approx(4.0) and c.band == "healthy"
    assert c.won_this_quarter == 250_000.0  # W2 won in May
    assert c.remaining_target == 0.0 and c.ratio_to_remaining is None
    north = compute_metrics(build(), cfg, AS_OF, team="north").coverage
    assert north.pipeline_closing == 500_000.0 and north.ratio == pytest.approx(5.0)
    assert north.band == "healthy"  # 5x is still inside 3-5x
    alice = compute_metrics(build(), cfg, AS_OF, owner="alice").coverage
    assert alice.ratio == pytest.approx(6.25) and alice.band == "likely_optimistic"
    bob = compute_metrics(build(), cfg, AS_OF, owner="bob").coverage
    assert bob.target is None and bob.ratio is None and bob.band == "no_target"


@pytest.mark.parametrize(
    ("ratio", "band"),
    [
        (2.99, "in_trouble"),
        (3.0, "healthy"),
        (5.0, "healthy"),
        (5.01, "buffer_check_amounts"),
        (6.0, "buffer_check_amounts"),
        (6.01, "likely_optimistic"),
        (None, "no_target"),
    ],
)
def test_coverage_bands(ratio, band, cfg):
    assert _coverage_band(ratio, cfg) == band


def test_weighted_pipeline(m):
    w = m.weighted
    # 200k*.25 + 300k*.5 + 100k*.1 + 500k*.7
    assert w.all_open == pytest.approx(560_000.0)
    assert w.closing_this_quarter == pytest.approx(550_000.0)
    assert w.ratio_to_target == pytest.approx(2.2) and w.band == "above_range"
    assert w.unknown_stage_count == 0


@pytest.mark.parametrize("team", [None, "south"])
def test_one_metric_alone_is_the_same_as_among_all(m, cfg, team):
    """``compute_metric`` (the forecast reads one metric per past quarter) gives each field
    exactly as ``compute_metrics`` does, for any scope; an unknown name is refused."""
    every = m if team is None else compute_metrics(build(), cfg, AS_OF, team=team)
    for name in METRICS:
        assert compute_metric(build(), cfg, AS_OF, name, team=team) == getattr(every, name), name
    with pytest.raises(KeyError, match="no pipeline metric 'weigthed'"):
        compute_metric(build(), cfg, AS_OF, "weigthed")


def test_win_rate_velocity_cycle_size(m):
    assert m.win_rate.window.first_day == date(2024, 6, 16)
    assert m.win_rate.window.last_day == date(2025, 6, 15)
    assert (m.win_rate.numerator, m.win_rate.denominator) == (2, 5)
    assert m.win_rate.rate == pytest.approx(0.4)
    v = m.velocity
    # W1 136, W2 98, L1 122, L2 59, L3 170 days; before: P1 152, L4 131.
    assert v.closed_count == 5 and v.mean_days == pytest.approx(117.0)
    assert v.previous_window.first_day == date(2023, 6, 17)
    assert v.previous_closed_count == 2 and v.previous_mean_days == pytest.approx(141.5)
    assert v.change_days == pytest.approx(-24.5) and v.trend == "shortening"
    assert m.sales_cycle.won_count == 2
    assert m.sales_cycle.median_days == pytest.approx(117.0)
    assert m.sales_cycle.mean_days == pytest.approx(117.0)
    assert m.average_deal_size.average == pytest.approx(200_000.0)
    # created in the window: O1-O4, W1, W2, L1, L2, L3; won W1, W2
    o2c = m.opportunity_to_customer
    assert (o2c.numerator, o2c.denominator) == (2, 9) and "4 still open" in o2c.note
    assert not m.lead_to_opportunity.available


def test_stage_conversion(m):
    conv = {c.stage: c for c in m.stage_conversion}
    q, n, p, neg = (conv[k] for k in ("qualification", "needs_analysis", "proposal", "negotiation"))
    # qualification: L2 lost there, O3 still in it; everyone else moved on.
    assert (q.reached, q.converted, q.decided, q.undecided) == (11, 9, 10, 1)
    # needs analysis: O4, W1, L3, P1 passed; L1 lost there; O1 still in it. O2/W2 skipped it.
    assert (n.reached, n.converted, n.decided, n.undecided) == (6, 4, 5, 1)
    assert n.rate == pytest.approx(0.8)
    assert (p.converted, p.decided) == (5, 6) and p.rate == pytest.approx(5 / 6)
    assert (neg.converted, neg.decided, neg.undecided) == (3, 4, 1)
    assert neg.rate == pytest.approx(0.75)


def test_funnel_projection(m):
    f = m.funnel
    flow = [s.expected_reaching for s in f.stages]
    # 1 -> 1*.9+1 -> 1.9*.8+1 -> 2.52*5/6+1 ; wins = 3.1*.75
    assert flow == pytest.approx([1.0, 1.9, 2.52, 3.1])
    assert f.expected_wins == pytest.approx(2.325)
    assert f.expected_won_value == pytest.approx(707_500.0)
    assert [s.p_win_from_stage for s in f.stages] == pytest.approx([0.45, 0.5, 0.625, 0.75])


def test_funnel_projection_seed_example(cfg):
    """The seed: 100 in stage 1 -> 60 -> 42 -> 17 won at 60%, 70%, 40%."""
    data = cfg.model_dump()
    data["stages"] = [s for s in data["stages"] if s["key"] != "negotiation"]
    three = parse_stage_config(data)
    open_deals = pd.DataFrame({"stage": ["qualification"] * 100, "amount": [10_000.0] * 100})
    conv = [
        StageConversion(k, k, 0, 0, 0, 0, r)
        for k, r in (("qualification", 0.6), ("needs_analysis", 0.7), ("proposal", 0.4))
    ]
    f = _funnel(open_deals, conv, three)
    assert [s.expected_reaching for s in f.stages] == pytest.approx([100, 60, 42])
    assert f.expected_wins == pytest.approx(16.8)
    assert f.text.startswith("100 -> 60 -> 42 -> 17 won")


def test_historical_conversion_forecast(m):
    h = m.historical_forecast
    assert h.from_stage == "needs_analysis"
    # O1 + O2 + O4 close this quarter in stage 2+; W1, W2 won 400k of 540k (L1, L3; L2 never
    # reached stage 2).
    assert (h.pipeline_count, h.pipeline_value) == (3, 1_000_000.0)
    assert h.conversion_rate == pytest.approx(400 / 540)
    assert h.forecast == pytest.approx(1_000_000.0 * 400 / 540)


def test_time_in_stage(m):
    t = {s.stage: s for s in m.time_in_stage}
    assert t["qualification"].open_median_days == 106  # O3 since 1 March
    assert t["qualification"].open_outliers == 1  # 106 > 1.5 * 21
    assert t["needs_analysis"].open_median_days == 134 and t["needs_analysis"].open_outliers == 1
    assert t["proposal"].open_median_days == 45 and t["proposal"].open_outliers == 0  # < 47.25
    assert t["negotiation"].open_median_days == 14
    # completed stays that ended in the window
    assert t["qualification"].completed_count == 8
    assert t["qualification"].completed_median_days == 30
    assert t["needs_analysis"].completed_median_days == 53.5  # 10, 45, 62, 91
    assert t["proposal"].completed_median_days == 30.5  # 12, 30, 31, 78
    assert t["negotiation"].completed_median_days == 28  # 25, 31


def test_activities_and_loss_reasons(m):
    a = m.activities
    assert a.first_day == date(2025, 4, 1) and a.last_day == date(2025, 6, 15)
    assert a.by_type == {
        "call": 2,
        "meeting": 1,
        "email": 1,
        "demo": 1,
        "site_visit": 1,
        "proposal": 1,
    }
    assert (a.calls_meetings, a.demos, a.proposals_sent) == (3, 1, 1)
    assert a.calls_meetings_per_week == pytest.approx(3 / (76 / 7))
    reasons = {r.reason: r for r in m.loss_reasons}
    assert set(reasons) == {"price", "competitor"}  # L4 (timing) closed before the window
    assert (reasons["price"].count, reasons["price"].value) == (2, 140_000.0)
    assert reasons["competitor"].share == pytest.approx(1 / 3)


def test_team_scope_filters_everything(cfg):
    m = compute_metrics(build(), cfg, AS_OF, team="south")
    assert m.open_pipeline.count == 1 and m.win_rate.denominator == 0
    assert m.win_rate.rate is None and m.sales_cycle.median_days is None


def test_json_round_trip(m):
    payload = json.loads(json.dumps(m.to_dict(), allow_nan=False))
    assert payload["coverage"]["band"] == "healthy"
    assert payload["win_rate"]["window"]["first_day"] == "2024-06-16"
    assert payload["lead_to_opportunity"]["available"] is False


def test_later_events_change_nothing(m, cfg):
    """A later close, stage change, amount change, activity, stakeholder or deal: same metrics."""
    later = build(
        override=[
            {"deal_id": "O1", "outcome": "won", "stage": "closed_won", "closed_at": "2025-07-01"},
            {"deal_id": "O2", "amount": 350_000.0, "expected_close_date": "2025-08-31"},
            {"deal_id": "O3", "stage": "needs_analysis"},
        ],
        extra_deals=[deal("N1", "2025-06-16", amount=999_000.0, expected_close_date="2025-06-30")],
        extra_history=[
            ("O1", "closed_won", "2025-07-01"),
            ("O3", "needs_analysis", "2025-06-20"),
            ("N1", "qualification", "2025-06-16"),
        ],
        extra_fields=[
            ("O2", "amount", "300000.0", "350000.0", "2025-06-20"),
            ("O2", "expected_close_date", "2025-06-30", "2025-08-31", "2025-06-16"),
        ],
        extra_acts=[("O3", "call", "2025-06-16"), ("O1", "demo", "2025-06-18")],
        extra_stk=[("O1", "c1", "decision_maker", "2025-06-16")],
    )
    assert compute_metrics(later, cfg, AS_OF).to_dict() == m.to_dict()
    # ...while as of a later date they do show.
    after = compute_metrics(later, cfg, to_timestamp("2025-07-02"))
    assert after.win_rate.numerator == 3


def _export_at(data, as_of, cfg):
    """The dataset with everything after ``as_of`` cut off: deals created later dropped, closes
    after it undone, history after it removed, tracked fields and stage rolled back to their
    values at ``as_of``. The rows keep their ``observed_at`` (the store's export time): custom
    columns carry no history, so what they held at ``as_of`` cannot be rebuilt; unknown before
    the export in both datasets, they are left as they are."""
    states = deal_states_as_of(data, as_of, cfg).set_index("deal_id")
    deals = data.deals[data.deals["created_at"] <= as_of].copy()
    later = (deals["closed_at"] > as_of).to_numpy()
    deals.loc[later, "outcome"] = "open"
    deals.loc[later, ["closed_at", "loss_reason"]] = None
    for col in (*TRACKED_FIELDS, "stage"):
        deals[col] = states[col].reindex(deals["deal_id"]).to_numpy()

    def upto(frame, column):
        return frame[frame[column] <= as_of].reset_index(drop=True)

    return CanonicalTables(
        deals=deals.reset_index(drop=True),
        stage_history=upto(data.stage_history, "entered_at"),
        field_history=upto(data.field_history, "changed_at"),
        activities=upto(data.activities, "occurred_at"),
        stakeholders=upto(data.stakeholders, "added_at"),
        targets=data.targets,
    )


@pytest.mark.parametrize("day", ["2023-06-20", "2024-12-24"])
def test_generated_data_later_events_change_nothing(day, cfg, generated_tables):
    """Everything after as_of removed (a past export): metrics, flags and review pack identical."""
    data = generated_tables
    as_of = to_timestamp(day)
    past = _export_at(data, as_of, cfg)
    assert len(past.activities) < len(data.activities)
    assert (
        compute_metrics(past, cfg, as_of).to_dict() == compute_metrics(data, cfg, as_of).to_dict()
    )
    assert hygiene_flags(past, cfg, as_of) == hygiene_flags(data, cfg, as_of)
    got = review_pack(past, cfg, as_of, min_amount=0).to_dict()
    assert got == review_pack(data, cfg, as_of, min_amount=0).to_dict()
    assert got["deal_count"] > 10


def test_empty_dataset_and_no_history(cfg):
    """No deals yet, or a deal without stage history: zeros and unknowns, never a crash."""
    as_of = to_timestamp("2025-02-01")
    empty = compute_metrics(tables(deals=[]), cfg, as_of)
    assert empty.open_pipeline.count == 0 and empty.win_rate.rate is None
    json.dumps(empty.to_dict(), allow_nan=False)
    bare = compute_metrics(tables(deals=[deal("A", "2025-01-01")]), cfg, as_of)
    assert bare.open_pipeline.count == 1 and bare.weighted.unknown_stage_count == 1
    assert bare.weighted.all_open == 0.0 and bare.funnel.expected_wins is None


def test_every_field_has_one_registered_metric():
    header = {"as_of", "quarter", "team", "owner", "currency"}
    fields = [f.name for f in dataclasses.fields(PipelineMetrics) if f.name not in header]
    assert list(METRICS) == fields


def test_scope_known_only_from_a_target_is_empty_not_an_error(cfg):
    """A rep with a target but no deal yet: zeros; a name nobody carries: NotFoundError."""
    data = tables(deals=[deal("A", "2025-01-01")], targets=[("owner", "newrep", "2025Q2", 1.0)])
    m = compute_metrics(data, cfg, AS_OF, owner="newrep")
    assert m.open_pipeline.count == 0 and m.coverage.ratio == 0.0
    assert m.weighted.closing_this_quarter == 0.0
    with pytest.raises(NotFoundError, match="--owner 'nobody'"):
        compute_metrics(data, cfg, AS_OF, owner="nobody")


def test_unknown_amounts_and_close_dates_are_counted_never_zero(cfg, m):
    """A CRM that logs neither amounts nor close dates: before the export no open deal's amount
    or expected close date is known. The sums add nothing for them and say how many; closed
    deals keep the amounts they closed with."""
    logged = ("forecast_category", "next_step", "next_step_date")
    data = tables(
        deals=_deals(),
        stage_history=HISTORY,
        activities=ACTIVITIES,
        targets=TARGETS,
        logged_from_creation=logged,
    )
    u = compute_metrics(data, cfg, AS_OF)
    assert (u.open_pipeline.count, u.open_pipeline.value, u.open_pipeline.amount_unknown) == (
        4,
        0.0,
        4,
    )
    assert u.weighted.unknown_amount_count == 4 and u.weighted.all_open == 0.0
    assert u.coverage.close_date_unknown == 4 and u.closing_this_quarter.count == 0
    assert u.new_pipeline.amount_unknown == 2
    assert u.coverage.won_this_quarter == 250_000.0 and u.coverage.won_amount_unknown == 0
    assert u.average_deal_size.average == pytest.approx(200_000.0)
    assert [f.amount_unknown for f in u.funnel.stages] == [1, 1, 1, 1]
    json.dumps(u.to_dict(), allow_nan=False)
    # the fully logged fixture: nothing unknown
    assert m.open_pipeline.amount_unknown == 0 and m.coverage.close_date_unknown == 0
    assert m.weighted.unknown_amount_count == 0
    # at the export the rows say them all
    at_export = compute_metrics(data, cfg, to_timestamp("2025-12-31"))
    assert at_export.open_pipeline.amount_unknown == 0
