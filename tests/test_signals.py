"""Point-in-time deal signals: hand-computed values, deals-only imports, and "the future changes
nothing" as a Hypothesis property."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from features.data.calendar import to_timestamp
from features.data.schema import CanonicalTables
from features.data.stages import StageConfig, load_stage_config
from features.errors import NotFoundError
from features.signals import SIGNALS, compute_signals, describe_signals
from tests.factory import deal, tables

AS_OF = to_timestamp("2025-06-30")


@pytest.fixture(scope="module")
def data() -> CanonicalTables:
    return tables(
        deals=[
            deal(
                "D1",
                "2025-03-01",
                stage="proposal",
                amount=120_000.0,
                expected_close_date="2025-07-31",
                next_step="send revised quote",
                next_step_date="2025-07-04",
                competitor="Rival BV",
                custom_industry="Food",
            ),
            # closed deals that make up the reps' track records
            deal(
                "W1",
                "2025-01-01",
                owner="alice",
                outcome="won",
                stage="closed_won",
                closed_at="2025-02-10",
                custom_industry="Auto",
            ),
            deal(
                "L1",
                "2025-01-01",
                owner="alice",
                outcome="lost",
                stage="closed_lost",
                closed_at="2025-03-02",
                loss_reason="price",
                custom_industry="Auto",
            ),
            deal(
                "L2",
                "2025-01-01",
                owner="bob",
                team="south",
                outcome="lost",
                stage="closed_lost",
                closed_at="2025-01-31",
                loss_reason="fit",
                expected_close_date="2025-02-28",
                next_step_date="2025-01-20",
                custom_industry="Auto",
            ),
            # closes after as_of: must not count
            deal(
                "W2",
                "2025-01-01",
                owner="alice",
                outcome="won",
                stage="closed_won",
                closed_at="2025-07-15",
                custom_industry="Auto",
            ),
            deal(
                "B1",
                "2025-06-01",
                owner="bob",
                team="south",
                next_step=None,
                custom_industry="Auto",
            ),
        ],
        stage_history=[
            ("D1", "qualification", "2025-03-01T00:00"),
            ("D1", "needs_analysis", "2025-04-01T00:00"),
            ("D1", "proposal", "2025-06-02T10:00"),
            ("W1", "qualification", "2025-01-01T00:00"),
            ("W1", "closed_won", "2025-02-10T00:00"),
            ("L1", "qualification", "2025-01-01T00:00"),
            ("L1", "closed_lost", "2025-03-02T00:00"),
            ("L2", "qualification", "2025-01-01T00:00"),
            ("L2", "closed_lost", "2025-01-31T00:00"),
            ("W2", "qualification", "2025-01-01T00:00"),
            ("W2", "closed_won", "2025-07-15T00:00"),
            ("B1", "qualification", "2025-06-01T00:00"),
        ],
        field_history=[
            # L2's changes show the CRM logs every tracked field from 5 January on
            ("L2", "amount", "90000.0", "100000.0", "2025-01-05"),
            ("L2", "expected_close_date", "2025-03-31", "2025-02-28", "2025-01-05"),
            ("L2", "forecast_category", "best_case", "pipeline", "2025-01-05"),
            ("L2", "next_step", "demo", "call", "2025-01-05"),
            ("L2", "next_step_date", None, "2025-01-20", "2025-01-05"),
            ("D1", "amount", "80000.0", "100000.0", "2025-04-10"),
            ("D1", "amount", "100000.0", "120000.0", "2025-07-10"),  # after as_of
            ("D1", "expected_close_date", "2025-05-31", "2025-06-30", "2025-05-01"),  # +30
            ("D1", "expected_close_date", "2025-06-30", "2025-06-20", "2025-05-15"),  # pull-in
            ("D1", "expected_close_date", "2025-06-20", "2025-07-31", "2025-06-25"),  # +41
            ("D1", "expected_close_date", "2025-07-31", "2025-09-30", "2025-07-02"),  # after
            ("D1", "forecast_category", "pipeline", "best_case", "2025-04-02"),
            ("D1", "forecast_category", "best_case", "commit", "2025-06-03"),
            ("D1", "forecast_category", "commit", "pipeline", "2025-07-05"),  # after as_of
        ],
        activities=[
            ("D1", "call", "2025-06-30 22:00"),  # the as_of day itself: counted, 0 days ago
            ("D1", "call", "2025-06-17 00:00"),  # first day of the 14-day window
            ("D1", "email", "2025-06-16 23:59"),  # just outside 14 days, inside 30
            ("D1", "meeting", "2025-06-01 00:00"),  # first day of the 30-day window
            ("D1", "demo", "2025-05-31 12:00"),  # just outside 30 days, inside 90
            ("D1", "site_visit", "2025-04-02 00:00"),  # first day of the 90-day window
            ("D1", "proposal", "2025-04-01 23:00"),  # just outside 90 days
            ("D1", "call", "2025-07-01 00:00"),  # after as_of
        ],
        stakeholders=[
            ("D1", "c1", "decision_maker", "2025-03-05"),
            ("D1", "c1", "champion", "2025-04-05"),  # same person, second role
            ("D1", "c2", "finance", "2025-06-30"),
            ("D1", "c3", "engineering", "2025-07-01"),  # after as_of
        ],
    )


@pytest.fixture(scope="module")
def row(data: CanonicalTables, cfg: StageConfig) -> pd.Series:
    s = compute_signals(data, [AS_OF], cfg, static_custom=["industry"])
    return s[s["deal_id"] == "D1"].set_index("deal_id").iloc[0]


def test_one_row_per_open_deal(data: CanonicalTables, cfg: StageConfig) -> None:
    s = compute_signals(data, [AS_OF, to_timestamp("2025-07-20")], cfg)
    assert sorted(s.loc[s["as_of"] == AS_OF, "deal_id"]) == ["B1", "D1", "W2"]
    assert sorted(s.loc[s["as_of"] > AS_OF, "deal_id"]) == ["B1", "D1"]  # W2 closed 15 July
    assert not s.duplicated(["deal_id", "as_of"]).any()


def test_stage_signals(row: pd.Series) -> None:
    assert row["stage"] == "proposal" and row["stage_order"] == 3
    assert row["stage_win_probability"] == 0.5
    assert row["days_in_stage"] == 28  # 2 June 10:00 -> 30 June: calendar days
    assert row["stage_norm_ratio"] == pytest.approx(28 / 31.5)  # proposal norm (21+42)/2
    assert row["deal_age_days"] == 121  # 1 March -> 30 June
    assert row["stage_entry_known"] == 1.0 and row["history_known"] == 1.0


def test_activity_windows_at_their_boundaries(row: pd.Series) -> None:
    assert row["activities_call_14d"] == 2 and row["activities_email_14d"] == 0
    assert row["activities_total_14d"] == 2
    assert row["activities_email_30d"] == 1 and row["activities_meeting_30d"] == 1
    assert row["activities_demo_30d"] == 0 and row["activities_total_30d"] == 4
    assert row["activities_demo_90d"] == 1 and row["activities_site_visit_90d"] == 1
    assert row["activities_proposal_90d"] == 0 and row["activities_total_90d"] == 6
    assert row["activities_total"] == 7  # everything up to as_of, the 1 July call excluded
    assert row["days_since_last_activity"] == 0


def test_stakeholder_signals(row: pd.Series) -> None:
    assert row["n_stakeholders"] == 2  # c1 (two roles) and c2 (added on the as_of day)
    assert row["stakeholder_roles"] == 3
    assert row["decision_maker_engaged"] == 1.0 and row["champion_identified"] == 1.0


def test_amount_and_close_date_signals(row: pd.Series) -> None:
    assert row["amount"] == 100_000.0  # the July change is later
    assert row["amount_log1p"] == pytest.approx(np.log1p(100_000.0))
    assert row["amount_change_count"] == 1
    assert row["amount_change_since_creation"] == pytest.approx(100_000 / 80_000 - 1)
    assert row["close_date_push_count"] == 2  # the pull-in is not a push; July's is later
    assert row["close_date_slip_days"] == 30 + 41
    assert row["days_to_expected_close"] == 31  # 31 July
    assert row["days_left_in_quarter"] == 0  # 30 June is the quarter's last day
    assert row["competitor_present"] == 1.0 and row["field_changes_known"] == 1.0


def test_next_step_and_custom(row: pd.Series, data: CanonicalTables, cfg: StageConfig) -> None:
    assert row["next_step_defined"] == 1.0 and row["days_to_next_step"] == 4
    assert row["custom_industry"] == "Food"
    b1 = compute_signals(data, [AS_OF], cfg).set_index("deal_id").loc["B1"]
    assert b1["next_step_defined"] == 0.0 and np.isnan(b1["days_to_next_step"])
    assert np.isnan(b1["days_since_last_activity"]) and b1["activities_total"] == 0
    assert b1["amount_change_since_creation"] == 0.0  # never changed
    with pytest.raises(NotFoundError, match="custom_nope"):
        compute_signals(data, [AS_OF], cfg, custom=["nope"])
    with pytest.raises(NotFoundError, match="custom_nope"):
        compute_signals(data, [AS_OF], cfg, static_custom=["nope"])


def test_custom_columns_are_unknown_before_the_export_unless_static(
    data: CanonicalTables, cfg: StageConfig
) -> None:
    """A custom column has no history: its exported value may have been set at the close."""
    before = compute_signals(data, [AS_OF], cfg, custom=["custom_industry"])
    assert before["custom_industry"].isna().all()
    at_export = compute_signals(data, [to_timestamp("2025-12-31")], cfg, custom=["industry"])
    assert at_export.set_index("deal_id").loc["D1", "custom_industry"] == "Food"
    static = compute_signals(data, [AS_OF], cfg, custom=["industry"], static_custom=["industry"])
    assert list(static.columns).count("custom_industry") == 1
    assert static.set_index("deal_id").loc["W2", "custom_industry"] == "Auto"


def test_rep_and_team_win_rate_only_from_earlier_closes(
    data: CanonicalTables, cfg: StageConfig
) -> None:
    s = compute_signals(data, [AS_OF], cfg).set_index("deal_id")
    # Closed by 30 June: W1 won, L1 lost (alice), L2 lost (bob); W2 closes later.
    overall = (1 + 1) / (3 + 2)  # Laplace-smoothed overall rate as of the date
    assert s.loc["D1", "owner_n_closed"] == 2
    assert s.loc["D1", "owner_win_rate"] == pytest.approx((1 + 10 * overall) / (2 + 10))
    assert s.loc["B1", "owner_win_rate"] == pytest.approx((0 + 10 * overall) / (1 + 10))
    assert s.loc["D1", "team_win_rate"] == pytest.approx((1 + 10 * overall) / (2 + 10))
    # cycles: W1 40 days, L1 60 days (alice), L2 30 days; overall median 40
    alice = (2 * 50 + 5 * 40) / (2 + 5)
    assert s.loc["D1", "owner_median_cycle_days"] == pytest.approx(alice)
    assert s.loc["B1", "owner_median_cycle_days"] == pytest.approx((1 * 30 + 5 * 40) / 6)
    # the same against the company's as of the date (what the models read: it does not drift)
    rate = (1 + 10 * overall) / (2 + 10)
    assert s.loc["D1", "owner_win_rate_vs_company"] == pytest.approx(rate - overall)
    assert s.loc["D1", "owner_cycle_vs_company"] == pytest.approx(alice / 40)
    # before any close: the prior alone (0.5) and no cycle figures
    early = compute_signals(data, [to_timestamp("2025-01-15")], cfg).iloc[0]
    assert early["owner_win_rate"] == 0.5 and early["owner_n_closed"] == 0
    assert np.isnan(early["owner_median_cycle_days"])


def test_stage_pace_over_the_norms_of_the_stages_passed(
    row: pd.Series, data: CanonicalTables, cfg: StageConfig
) -> None:
    # created 1 March, entered proposal 2 June: 93 days for qualification (norm 21) and needs
    # analysis (norm 42)
    assert row["stage_pace"] == pytest.approx(93 / (21 + 42))
    b1 = compute_signals(data, [AS_OF], cfg).set_index("deal_id").loc["B1"]
    assert np.isnan(b1["stage_pace"])  # still in the first stage: no pace yet


def test_forecast_category_mean_over_the_categories_given_by_the_date(
    row: pd.Series, data: CanonicalTables, cfg: StageConfig
) -> None:
    # pipeline at creation, best case in April, commit in June; July's downgrade is later
    assert row["forecast_category"] == "commit"
    assert row["forecast_category_mean"] == pytest.approx((0.0 + 0.5 + 0.9) / 3)
    s = compute_signals(data, [to_timestamp("2025-05-01")], cfg).set_index("deal_id")
    assert s.loc["D1", "forecast_category_mean"] == pytest.approx(0.25)
    # never changed: the category as of the date alone
    b1 = compute_signals(data, [AS_OF], cfg).set_index("deal_id").loc["B1"]
    assert b1["forecast_category_mean"] == 0.0


def test_advance_skill_from_stage_exits_by_the_date(
    data: CanonicalTables, cfg: StageConfig
) -> None:
    s = compute_signals(data, [AS_OF], cfg).set_index("deal_id")
    # Exits by 30 June in time order, each against the company's Laplace rate from that stage
    # over the exits before it: L2 (bob) lost 0.5; W1 (alice) won 1/3; L1 (alice) lost 2/4;
    # D1 (alice) qualification -> needs analysis 2/5; needs analysis -> proposal 1/2. W2's win
    # on 15 July is later and does not count.
    resid = (1 - 1 / 3) + (0 - 0.5) + (1 - 0.4) + (1 - 0.5)
    info = (1 / 3) * (2 / 3) + 0.25 + 0.4 * 0.6 + 0.25
    alice = resid / (info + 6.0)
    assert s.loc["D1", "owner_advance_skill"] == pytest.approx(alice)
    assert s.loc["D1", "team_advance_skill"] == pytest.approx(alice)  # north is alice alone
    assert s.loc["B1", "owner_advance_skill"] == pytest.approx(-0.5 / (0.25 + 6.0))
    assert s.loc["B1", "team_advance_skill"] == pytest.approx(-0.5 / (0.25 + 6.0))
    # before any deal left a stage: unknown, not average
    early = compute_signals(data, [to_timestamp("2025-01-15")], cfg).iloc[0]
    assert np.isnan(early["owner_advance_skill"]) and np.isnan(early["team_advance_skill"])


def test_days_since_last_touch_counts_every_kind_of_event(
    row: pd.Series, data: CanonicalTables, cfg: StageConfig
) -> None:
    assert row["days_since_last_touch"] == 0  # the call on the as_of day
    s = compute_signals(data, [AS_OF], cfg).set_index("deal_id")
    # B1: no activity, but its fields were logged at creation on 1 June
    b1 = s.loc["B1"]
    assert np.isnan(b1["days_since_last_activity"]) and b1["days_since_last_touch"] == 29
    # W2: nothing since its creation on 1 January; its close on 15 July is later
    assert s.loc["W2", "days_since_last_touch"] == 180
    late = compute_signals(data, [to_timestamp("2025-07-04")], cfg).set_index("deal_id")
    assert late.loc["D1", "days_since_last_touch"] == 2  # the close-date push of 2 July


def test_new_signals_ignore_events_after_as_of(data: CanonicalTables, cfg: StageConfig) -> None:
    """Later stage moves and category changes leave the signals at as_of unchanged."""
    later = [
        ("D1", "negotiation", pd.Timestamp("2025-07-03"), False),
        ("B1", "needs_analysis", pd.Timestamp("2025-07-04"), False),
    ]
    sh = pd.concat(
        [data.stage_history, pd.DataFrame(later, columns=list(data.stage_history.columns))],
        ignore_index=True,
    )
    fh_row = ("B1", "forecast_category", "pipeline", "commit", pd.Timestamp("2025-07-06"))
    fh = pd.concat(
        [data.field_history, pd.DataFrame([fh_row], columns=list(data.field_history.columns))],
        ignore_index=True,
    )
    future = replace(data, stage_history=sh, field_history=fh)
    cols = [
        "stage_pace",
        "forecast_category_mean",
        "owner_advance_skill",
        "team_advance_skill",
        "days_since_last_touch",
    ]
    now = compute_signals(data, [AS_OF], cfg)[cols]
    pd.testing.assert_frame_equal(compute_signals(future, [AS_OF], cfg)[cols], now)
    moved = compute_signals(future, [to_timestamp("2025-08-10")], cfg)[cols]
    assert not moved.equals(compute_signals(data, [to_timestamp("2025-08-10")], cfg)[cols])


def test_deal_ids_restrict_rows_not_statistics(data: CanonicalTables, cfg: StageConfig) -> None:
    full = compute_signals(data, [AS_OF], cfg)
    one = compute_signals(data, [AS_OF], cfg, deal_ids=["D1"])
    pd.testing.assert_frame_equal(one, full[full["deal_id"] == "D1"].reset_index(drop=True))


def test_cache_reuse_gives_the_same_frames(data: CanonicalTables, cfg: StageConfig) -> None:
    cache: dict[str, Any] = {}
    dates = [to_timestamp("2025-04-20"), AS_OF]
    first = compute_signals(data, dates[:1], cfg, cache=cache)
    assert cache  # indexes kept
    second = compute_signals(data, dates[1:], cfg, cache=cache)
    fresh = compute_signals(data, dates, cfg)
    pd.testing.assert_frame_equal(pd.concat([first, second], ignore_index=True), fresh)


def test_registry_describes_every_output_column(data: CanonicalTables, cfg: StageConfig) -> None:
    s = compute_signals(data, [AS_OF], cfg)
    assert list(s.columns) == ["deal_id", "as_of", "owner", "team", *SIGNALS]
    table = describe_signals()
    assert (table["description"].str.len() > 10).all() and len(table) == len(SIGNALS)


def test_deals_only_import_marks_history_signals_missing(cfg: StageConfig) -> None:
    data = tables(
        deals=[
            deal(
                "D9",
                "2025-01-10",
                stage="proposal",
                observed_at="2025-06-30",
                history_source="derived",
                expected_close_date="2025-08-31",
            ),
        ],
        stage_history=[("D9", None, "2025-01-10"), ("D9", "proposal", "2025-06-30")],
        activities=[("D9", "call", "2025-03-01")],
        derived=True,
    )
    before = compute_signals(data, [to_timestamp("2025-03-15")], cfg).iloc[0]
    for name, spec in SIGNALS.items():
        if spec.needs_history:
            assert pd.isna(before[name]), name
    assert before["history_known"] == 0 and before["field_changes_known"] == 0
    assert before["stage_known"] == 0 and before["stage_entry_known"] == 0
    # what events do prove is still there
    assert before["activities_total"] == 1 and before["deal_age_days"] == 64
    at_export = compute_signals(data, [to_timestamp("2025-06-30")], cfg).iloc[0]
    assert at_export["stage"] == "proposal" and at_export["amount"] == 100_000.0
    assert at_export["days_to_expected_close"] == 62
    # seen in proposal at the export, entry unknown; change history never exported
    assert np.isnan(at_export["days_in_stage"]) and at_export["stage_entry_known"] == 0
    assert np.isnan(at_export["close_date_push_count"])
    assert np.isnan(at_export["amount_change_count"])


def test_empty_dates_give_an_empty_frame_with_the_columns(
    data: CanonicalTables, cfg: StageConfig
) -> None:
    s = compute_signals(data, [], cfg)
    assert s.empty and "days_in_stage" in s.columns


# --- property: events after as_of change no signal ------------------------------------------
BASE = pd.Timestamp("2025-01-01")
MIN = 60 * 24  # minutes per day
# Strategies are built at import time, before fixtures exist: the packaged stages' open keys.
OPEN = [s.key for s in load_stage_config().open_stages]
CATEGORIES = ["pipeline", "best_case", "commit", "omitted"]
ROLES = ["decision_maker", "champion", "finance", "engineering"]
TYPES = ["call", "meeting", "email", "demo", "site_visit", "proposal"]
FIELDS = ["amount", "expected_close_date", "forecast_category", "next_step", "next_step_date"]

# What a closing writes into the deal row, as real CRMs do: forecast category closed/omitted,
# the close date set to the close, the final (discounted) amount, a last next step...
_FINAL_VALUES = st.fixed_dictionaries(
    {
        "amount": st.sampled_from([None, 10_000.0, 75_000.0, 500_000.0]),
        "expected_close_date": st.one_of(st.none(), st.integers(0, 400)),
        "forecast_category": st.sampled_from([None, "closed", "omitted", "commit"]),
        "next_step": st.sampled_from([None, "contract signed", "lost to rival"]),
        "next_step_date": st.one_of(st.none(), st.integers(0, 400)),
    }
)
_CLOSE = st.fixed_dictionaries(
    {
        "outcome": st.sampled_from(["won", "lost"]),
        "final": _FINAL_VALUES,
        # tracked fields whose closing change is logged; the others keep their last value
        "logged": st.frozensets(st.sampled_from(FIELDS)),
        "stage_row": st.booleans(),  # False: the closing stage-history row is missing too
        "loss_reason": st.sampled_from(["price", "timing", "fit", None]),
        "custom_flag": st.sampled_from(["set at close", "x", None]),
    }
)


def _event(lo: int, hi: int) -> st.SearchStrategy[tuple[int, str, Any]]:
    t = st.integers(lo, hi)
    return st.one_of(
        st.tuples(t, st.just("stage"), st.sampled_from(OPEN)),
        st.tuples(t, st.just("amount"), st.sampled_from([50_000.0, 80_000.0, 120_000.0])),
        st.tuples(t, st.just("expected_close_date"), st.integers(0, 400)),
        st.tuples(t, st.just("forecast_category"), st.sampled_from(CATEGORIES)),
        st.tuples(t, st.just("next_step"), st.sampled_from(["call back", "demo", "quote"])),
        st.tuples(t, st.just("next_step_date"), st.integers(0, 400)),
        st.tuples(t, st.just("activity"), st.sampled_from(TYPES)),
        st.tuples(
            t, st.just("stakeholder"), st.tuples(st.sampled_from("abc"), st.sampled_from(ROLES))
        ),
        st.tuples(t, st.just("close"), _CLOSE),
    )


Case = tuple[int, frozenset[str], list[dict[str, Any]], list[dict[str, Any]]]


@st.composite
def _two_futures(draw: st.DrawFn) -> Case:
    """Deals sharing every event up to as_of, each with two independent futures after it.

    The CRM logs the changes of the ``tracked`` fields only (as a real org does); a closing
    overwrites the row's untracked fields and custom column with random final values.
    """
    as_of = draw(st.integers(20 * MIN, 150 * MIN))
    horizon = as_of + 200 * MIN
    tracked = draw(st.frozensets(st.sampled_from(FIELDS)))
    specs_a: list[dict[str, Any]] = []
    specs_b: list[dict[str, Any]] = []
    for i in range(draw(st.integers(1, 4))):
        created = draw(st.integers(0, as_of + 20 * MIN))
        past = draw(st.lists(_event(created, as_of), max_size=8)) if created <= as_of else []
        first_future = max(created, as_of + 1)
        base = {
            "deal_id": f"D{i}",
            "created": created,
            "owner": draw(st.sampled_from(["alice", "bob"])),
            "amount": draw(st.sampled_from([40_000.0, 90_000.0])),
            "industry": draw(st.sampled_from(["food", "auto"])),
            "past": past,
        }
        for specs in (specs_a, specs_b):
            future = draw(st.lists(_event(first_future, horizon), max_size=8))
            specs.append({**base, "future": future})
    return as_of, tracked, specs_a, specs_b


def _day(offset_days: int | None) -> str | None:
    return (
        None if offset_days is None else (BASE + pd.Timedelta(days=offset_days)).date().isoformat()
    )


def _at(minutes: int) -> pd.Timestamp:
    return BASE + pd.Timedelta(minutes=minutes)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _close(
    row: dict[str, Any], cur: dict[str, Any], close: dict[str, Any], t: int, **kw: Any
) -> None:
    """The closing: stage, outcome and the row's final values (logged only where tracked)."""
    d, tracked, fh, sh = kw["deal_id"], kw["tracked"], kw["fh"], kw["sh"]
    outcome = close["outcome"]
    if close["stage_row"]:
        sh.append((d, f"closed_{outcome}", _at(t)))
    row.update(
        stage=f"closed_{outcome}",
        outcome=outcome,
        closed_at=_at(t),
        loss_reason=close["loss_reason"] if outcome == "lost" else None,
        custom_flag=close["custom_flag"],
    )
    for field, final in close["final"].items():
        new = _day(final) if field.endswith("_date") else final
        if field not in tracked:
            row[field] = new  # overwritten at the close, never logged
        elif field in close["logged"] and new != cur[field]:
            fh.append((d, field, _text(cur[field]), _text(new), _at(t)))
            row[field] = cur[field] = new


def _world(tracked: frozenset[str], specs: list[dict[str, Any]]) -> CanonicalTables:
    """Replay each deal's events in time order into canonical tables, logging the changes of
    tracked fields only."""
    deals: list[dict[str, Any]] = []
    sh: list[tuple[str, str, pd.Timestamp]] = []
    fh: list[tuple[str, str, str | None, str | None, pd.Timestamp]] = []
    act: list[tuple[str, str, pd.Timestamp]] = []
    stk: list[tuple[str, str, str, pd.Timestamp]] = []
    for spec in specs:
        d = spec["deal_id"]
        cur: dict[str, Any] = {
            "amount": spec["amount"],
            "expected_close_date": _day(90),
            "forecast_category": "pipeline",
            "next_step": "intro call",
            "next_step_date": None,
        }
        row = deal(
            d,
            _at(spec["created"]),
            owner=spec["owner"],
            team=f"team-{spec['owner']}",
            observed_at=_at(400 * MIN),
            custom_industry=spec["industry"],
            custom_flag="open",
            **cur,
        )
        sh.append((d, "qualification", _at(spec["created"])))
        seen: set[tuple[str, int]] = {("stage", spec["created"])}
        events = sorted(spec["past"] + spec["future"], key=lambda e: e[0])
        for t, kind, value in events:
            if (kind, t) in seen and kind not in ("activity", "stakeholder"):
                continue
            seen.add((kind, t))
            if kind == "stage":
                sh.append((d, value, _at(t)))
                row["stage"] = value
            elif kind == "close":
                _close(row, cur, value, t, deal_id=d, tracked=tracked, fh=fh, sh=sh)
                break
            elif kind == "activity":
                act.append((d, value, _at(t)))
            elif kind == "stakeholder":
                stk.append((d, *value, _at(t)))
            else:
                new = _day(value) if kind.endswith("_date") else value
                if kind in tracked:
                    fh.append((d, kind, _text(cur[kind]), _text(new), _at(t)))
                cur[kind] = new
                row[kind] = new
        deals.append(row)
    stk_frame = pd.DataFrame(stk, columns=["d", "c", "r", "t"]).drop_duplicates(["d", "c", "r"])
    stk_rows = list(stk_frame.itertuples(index=False, name=None))
    # the CRM logs the changes of the tracked fields only: no creation rows
    world = tables(deals, sh, fh, act, stk_rows, logged_from_creation=())
    # custom columns typed as the store reads them back (text), whatever values they hold
    custom = {c: world.deals[c].astype("str") for c in ("custom_industry", "custom_flag")}
    return replace(world, deals=world.deals.assign(**custom))


def _signals_of(world: CanonicalTables, as_of: pd.Timestamp, cfg: StageConfig) -> pd.DataFrame:
    return compute_signals(
        world, [as_of], cfg, open_only=False, custom=["flag"], static_custom=["industry"]
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_two_futures())
def test_events_after_as_of_change_no_signal(cfg: StageConfig, case: Case) -> None:
    """Same past, two futures: other stage and field changes, activities, stakeholders, closes
    that overwrite the deal row's untracked fields and custom column, missing closing rows."""
    as_of_min, tracked, specs_a, specs_b = case
    as_of = _at(as_of_min)
    a = _signals_of(_world(tracked, specs_a), as_of, cfg)
    b = _signals_of(_world(tracked, specs_b), as_of, cfg)
    pd.testing.assert_frame_equal(a, b)


def _untracked_category_world(future: str) -> CanonicalTables:
    """Two deals with the same past; the forecast category is not tracked (only amount is).
    ``future``: 'open' (D stays open to the export) or 'closes' (D closes after 30 June and its
    row reads forecast category 'closed')."""
    closes = future == "closes"
    return tables(
        deals=[
            deal("O", "2025-01-01", forecast_category="commit"),
            deal(
                "D",
                "2025-01-01",
                forecast_category="closed" if closes else "commit",
                stage="closed_won" if closes else "qualification",
                outcome="won" if closes else "open",
                closed_at="2025-08-01" if closes else None,
            ),
        ],
        stage_history=[("O", "qualification", "2025-01-01"), ("D", "qualification", "2025-01-01")]
        + ([("D", "closed_won", "2025-08-01")] if closes else []),
        field_history=[("O", "amount", "90000.0", "100000.0", "2025-02-01")],
        logged_from_creation=(),
    )


def test_missingness_does_not_tell_which_deals_close(cfg: StageConfig) -> None:
    """An untracked field is unknown before the export for every deal, open or later closed:
    were it unknown only for deals that close later, "missing" would mean "closes before the
    export" (a backtest or a training set cut at T would learn it)."""
    for future in ("open", "closes"):
        s = compute_signals(_untracked_category_world(future), [AS_OF], cfg).set_index("deal_id")
        assert s["forecast_category"].isna().all(), future
        assert (s["forecast_category_known"] == 0).all() and (s["history_known"] == 0).all()
        assert (s["amount_known"] == 1).all() and (s["amount"] == 100_000.0).all()
    at_export = compute_signals(
        _untracked_category_world("open"), [to_timestamp("2025-12-31")], cfg
    )
    assert (at_export["forecast_category"] == "commit").all()  # the row speaks for the export


# --- CLI ---------------------------------------------------------------------------------------
@pytest.fixture
def served(
    serve_tables: Callable[[CanonicalTables], dict[str, Any]], data: CanonicalTables
) -> None:
    serve_tables(data)


@pytest.mark.usefixtures("served")
def test_cli_signals_table_and_json(cli: CliRunner) -> None:
    from serving.cli import app

    res = cli.invoke(app, ["signals", "--as-of", "2025-06-30"])
    assert res.exit_code == 0, res.output
    assert "D1" in res.output and "3 open deals" in res.output
    res = cli.invoke(app, ["signals", "--as-of", "2025-06-30", "--owner", "bob", "--json"])
    assert res.exit_code == 0, res.output
    import json

    payload = json.loads(res.output)
    assert [d["deal_id"] for d in payload["deals"]] == ["B1"]
    assert payload["deals"][0]["owner_n_closed"] == 1


@pytest.mark.usefixtures("served")
def test_cli_signals_one_deal(cli: CliRunner) -> None:
    from serving.cli import app

    res = cli.invoke(app, ["signals", "--as-of", "2025-06-30", "--deal", "D1"])
    assert res.exit_code == 0, res.output
    assert "close_date_push_count" in res.output and "moved later" in res.output
    res = cli.invoke(app, ["signals", "--as-of", "2025-01-01", "--deal", "D1"])
    assert res.exit_code != 0 and "not open" in res.output
    res = cli.invoke(app, ["signals", "--as-of", "yesterday-ish"])
    assert res.exit_code != 0


@pytest.mark.usefixtures("served")
def test_cli_signals_unknown_owner_is_not_found_as_in_the_reports(cli: CliRunner) -> None:
    """``--owner`` names a rep the store does not know: the same one-line NotFoundError as
    metrics, hygiene and review, not an empty table; a known rep without open deals is empty."""
    from serving.cli import app

    res = cli.invoke(app, ["signals", "--as-of", "2025-06-30", "--owner", "bbo"])
    assert res.exit_code == 1
    assert (
        res.output.strip() == "--owner 'bbo': no deal or target has this owner; known: alice, bob"
    )
    for command in ("metrics", "hygiene"):
        same = cli.invoke(app, [command, "--as-of", "2025-06-30", "--owner", "bbo"])
        assert same.exit_code == 1 and same.output == res.output
    early = cli.invoke(app, ["signals", "--as-of", "2024-12-31", "--owner", "bob", "--json"])
    assert early.exit_code == 0 and '"deals": []' in early.output
