import pandas as pd
import pytest

from features.data.calendar import quarter_bounds, quarter_of, to_timestamp
from features.data.stages import load_stage_config
from features.signals.pointintime import deal_states, deal_states_as_of
from tests.factory import deal, tables

CFG = load_stage_config()


@pytest.fixture
def data():
    return tables(
        deals=[
            deal(
                "D1",
                "2025-01-10",
                stage="closed_won",
                outcome="won",
                closed_at="2025-05-20",
                amount=90_000.0,
                expected_close_date="2025-05-31",
                forecast_category="closed",
            ),
            deal("D2", "2025-03-01", stage="needs_analysis", amount=50_000.0),
        ],
        stage_history=[
            ("D1", "qualification", "2025-01-10"),
            ("D1", "proposal", "2025-03-01"),
            ("D1", "closed_won", "2025-05-20"),
            ("D2", "qualification", "2025-03-01"),
            ("D2", "needs_analysis", "2025-04-15"),
        ],
        field_history=[
            ("D1", "amount", "120000.0", "100000.0", "2025-03-01"),
            ("D1", "amount", "100000.0", "90000.0", "2025-05-19"),
            ("D1", "expected_close_date", "2025-03-31", "2025-05-31", "2025-04-02"),
            ("D1", "forecast_category", "pipeline", "commit", "2025-04-02"),
            ("D1", "forecast_category", "commit", "closed", "2025-05-20"),
        ],
    )


def test_state_before_any_change_uses_old_values(data):
    s = deal_states_as_of(data, to_timestamp("2025-02-01"), CFG).set_index("deal_id")
    assert list(s.index) == ["D1"]  # D2 did not exist yet
    assert s.loc["D1", "stage"] == "qualification"
    assert s.loc["D1", "amount"] == 120_000.0
    assert s.loc["D1", "expected_close_date"] == pd.Timestamp("2025-03-31")
    assert s.loc["D1", "forecast_category"] == "pipeline"
    assert bool(s.loc["D1", "is_open"]) and s.loc["D1", "outcome"] == "open"
    assert pd.isna(s.loc["D1", "closed_at"])


def test_state_between_changes(data):
    s = deal_states_as_of(data, to_timestamp("2025-04-20"), CFG).set_index("deal_id")
    assert s.loc["D1", "stage"] == "proposal"
    assert s.loc["D1", "stage_entered_at"] == pd.Timestamp("2025-03-01")
    assert s.loc["D1", "amount"] == 100_000.0
    assert s.loc["D1", "forecast_category"] == "commit"
    assert s.loc["D2", "stage"] == "needs_analysis"
    assert s.loc["D2", "amount"] == 50_000.0  # never changed: current value held


def test_change_on_the_as_of_day_counts(data):
    s = deal_states_as_of(data, to_timestamp("2025-03-01"), CFG).set_index("deal_id")
    assert s.loc["D1", "amount"] == 100_000.0 and s.loc["D1", "stage"] == "proposal"
    s = deal_states_as_of(data, pd.Timestamp("2025-02-28 23:59"), CFG).set_index("deal_id")
    assert s.loc["D1", "amount"] == 120_000.0 and s.loc["D1", "stage"] == "qualification"


def test_closed_state_and_open_only(data):
    s = deal_states_as_of(data, to_timestamp("2025-06-01"), CFG).set_index("deal_id")
    assert s.loc["D1", "outcome"] == "won" and not s.loc["D1", "is_open"]
    assert s.loc["D1", "stage"] == "closed_won" and s.loc["D1", "amount"] == 90_000.0
    open_only = deal_states_as_of(data, to_timestamp("2025-06-01"), CFG, open_only=True)
    assert list(open_only["deal_id"]) == ["D2"]


def test_many_dates_match_single_dates(data):
    dates = [to_timestamp(d) for d in ["2025-02-01", "2025-04-20", "2025-06-01"]]
    many = deal_states(data, dates, CFG)
    for t in dates:
        one = deal_states_as_of(data, t, CFG).reset_index(drop=True)
        part = many[many["as_of"] == t].drop(columns="as_of").reset_index(drop=True)
        pd.testing.assert_frame_equal(part, one, check_dtype=False)


def test_deals_only_history_is_unknown_before_export():
    data = tables(
        deals=[
            deal(
                "D9",
                "2025-01-10",
                stage="proposal",
                observed_at="2025-06-30",
                history_source="derived",
            )
        ],
        stage_history=[("D9", None, "2025-01-10"), ("D9", "proposal", "2025-06-30")],
        derived=True,
    )
    before = deal_states_as_of(data, to_timestamp("2025-03-01"), CFG).iloc[0]
    assert pd.isna(before["stage"]) and not before["stage_known"]
    assert pd.isna(before["amount"]) and not before["history_known"]
    at_export = deal_states_as_of(data, to_timestamp("2025-06-30"), CFG).iloc[0]
    assert at_export["stage"] == "proposal" and at_export["amount"] == 100_000.0
    assert pd.isna(at_export["stage_entered_at"])  # seen in proposal, entry date unknown


def test_calendar_helpers():
    assert quarter_of("2025-05-20") == "2025Q2"
    start, end = quarter_bounds("2025Q4")
    assert start == pd.Timestamp("2025-10-01") and end.date().isoformat() == "2025-12-31"
    assert to_timestamp("2025-03-01") > pd.Timestamp("2025-03-01 23:59")
