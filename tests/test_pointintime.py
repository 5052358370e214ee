import pandas as pd
import pytest

from features.data.calendar import quarter_bounds, quarter_of, to_timestamp
from features.errors import NotFoundError
from features.signals.pointintime import deal_states, deal_states_as_of, tracked_since
from tests.checks import missing
from tests.factory import deal, tables


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


def test_state_before_any_change_uses_old_values(data, cfg):
    s = deal_states_as_of(data, to_timestamp("2025-02-01"), cfg).set_index("deal_id")
    assert list(s.index) == ["D1"]  # D2 did not exist yet
    assert s.loc["D1", "stage"] == "qualification"
    assert s.loc["D1", "amount"] == 120_000.0
    assert s.loc["D1", "expected_close_date"] == pd.Timestamp("2025-03-31")
    assert s.loc["D1", "forecast_category"] == "pipeline"
    assert bool(s.loc["D1", "is_open"]) and s.loc["D1", "outcome"] == "open"
    assert missing(s.loc["D1", "closed_at"])


def test_state_between_changes(data, cfg):
    s = deal_states_as_of(data, to_timestamp("2025-04-20"), cfg).set_index("deal_id")
    assert s.loc["D1", "stage"] == "proposal"
    assert s.loc["D1", "stage_entered_at"] == pd.Timestamp("2025-03-01")
    assert s.loc["D1", "amount"] == 100_000.0
    assert s.loc["D1", "forecast_category"] == "commit"
    assert s.loc["D2", "stage"] == "needs_analysis"
    assert s.loc["D2", "amount"] == 50_000.0  # never changed: current value held


def test_change_on_the_as_of_day_counts(data, cfg):
    s = deal_states_as_of(data, to_timestamp("2025-03-01"), cfg).set_index("deal_id")
    assert s.loc["D1", "amount"] == 100_000.0 and s.loc["D1", "stage"] == "proposal"
    s = deal_states_as_of(data, pd.Timestamp("2025-02-28 23:59"), cfg).set_index("deal_id")
    assert s.loc["D1", "amount"] == 120_000.0 and s.loc["D1", "stage"] == "qualification"


def test_closed_state_and_open_only(data, cfg):
    s = deal_states_as_of(data, to_timestamp("2025-06-01"), cfg).set_index("deal_id")
    assert s.loc["D1", "outcome"] == "won" and not s.loc["D1", "is_open"]
    assert s.loc["D1", "stage"] == "closed_won" and s.loc["D1", "amount"] == 90_000.0
    open_only = deal_states_as_of(data, to_timestamp("2025-06-01"), cfg, open_only=True)
    assert list(open_only["deal_id"]) == ["D2"]


def test_many_dates_match_single_dates(data, cfg):
    dates = [to_timestamp(d) for d in ["2025-02-01", "2025-04-20", "2025-06-01"]]
    many = deal_states(data, dates, cfg)
    for t in dates:
        one = deal_states_as_of(data, t, cfg).reset_index(drop=True)
        part = many[many["as_of"] == t].drop(columns="as_of").reset_index(drop=True)
        pd.testing.assert_frame_equal(part, one, check_dtype=False)


def test_deals_only_history_is_unknown_before_export(cfg):
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
    before = deal_states_as_of(data, to_timestamp("2025-03-01"), cfg).iloc[0]
    assert pd.isna(before["stage"]) and not before["stage_known"]
    assert pd.isna(before["amount"]) and not before["history_known"]
    at_export = deal_states_as_of(data, to_timestamp("2025-06-30"), cfg).iloc[0]
    assert at_export["stage"] == "proposal" and at_export["amount"] == 100_000.0
    assert pd.isna(at_export["stage_entered_at"])  # seen in proposal, entry date unknown


def test_calendar_helpers():
    assert quarter_of("2025-05-20") == "2025Q2"
    start, end = quarter_bounds("2025Q4")
    assert start == pd.Timestamp("2025-10-01") and end.date().isoformat() == "2025-12-31"
    assert to_timestamp("2025-03-01") > pd.Timestamp("2025-03-01 23:59")


# --- the deal row speaks for its observed_at and later ------------------------------------------
def _partial_export():
    """A Salesforce-like export: amount is tracked (from 1 Feb), the forecast category is not.
    C closed won on 20 May; its row holds the final values written at the close. The CRM logged
    only the changes listed (no creation rows)."""
    return tables(
        deals=[
            deal(
                "C",
                "2025-01-10",
                stage="closed_won",
                outcome="won",
                closed_at="2025-05-20",
                amount=90_000.0,
                expected_close_date="2025-05-20",
                forecast_category="closed",
                next_step="signed",
                observed_at="2025-06-30",
            ),
            deal("O", "2025-01-10", forecast_category="commit", observed_at="2025-06-30"),
        ],
        stage_history=[
            ("C", "qualification", "2025-01-10"),
            ("C", "closed_won", "2025-05-20"),
            ("O", "qualification", "2025-01-10"),
        ],
        field_history=[
            ("O", "amount", "80000.0", "100000.0", "2025-02-01"),
            ("C", "amount", "120000.0", "90000.0", "2025-05-20"),
        ],
        logged_from_creation=(),
    )


@pytest.fixture
def at(cfg):
    """``at(data, day, **kw)``: the states as of the end of ``day``, indexed by deal."""

    def states(data, day, **kw):
        return deal_states_as_of(data, to_timestamp(day), cfg, **kw).set_index("deal_id")

    return states


def test_strict_untracked_fields_are_unknown_before_the_export_for_every_deal(at):
    s = at(_partial_export(), "2025-04-01")
    for d in ("C", "O"):  # open at the export or closed later: the same
        assert pd.isna(s.loc[d, "forecast_category"]) and not s.loc[d, "forecast_category_known"]
        assert pd.isna(s.loc[d, "expected_close_date"]) and pd.isna(s.loc[d, "next_step"])
        assert not s.loc[d, "history_known"] and s.loc[d, "amount_known"]
    assert s.loc["C", "amount"] == 120_000.0  # the old value of the closing change
    assert s.loc["O", "amount"] == 100_000.0
    assert bool(s.loc["C", "is_open"]) and s.loc["C", "stage"] == "qualification"
    # what the deal row says is the outcome (the earlier rule read it on 1 April)
    rows = _partial_export().deals.set_index("deal_id")
    assert rows.loc["C", "forecast_category"] == "closed"


def test_strict_never_shows_a_closed_category_on_an_open_deal(cfg):
    dates = [to_timestamp(d) for d in ("2025-01-31", "2025-03-15", "2025-05-19", "2025-06-30")]
    s = deal_states(_partial_export(), dates, cfg)
    open_rows = s[s["is_open"]]
    assert len(open_rows) == 7
    assert not open_rows["forecast_category"].isin(["closed", "omitted"]).any()


def test_strict_tracking_starts_with_the_first_logged_change(at):
    """Before the first logged change of a field anywhere, its changes were not logged: even the
    old value of a later change may have been set after the date."""
    s = at(_partial_export(), "2025-01-20")
    assert pd.isna(s.loc["O", "amount"]) and pd.isna(s.loc["C", "amount"])
    s = at(_partial_export(), "2025-02-01")  # the first change's own day
    assert s.loc["O", "amount"] == 100_000.0 and s.loc["C", "amount"] == 120_000.0


def test_strict_closed_deals_keep_their_row_after_the_close(at):
    s = at(_partial_export(), "2025-06-01")
    assert s.loc["C", "outcome"] == "won" and s.loc["C", "forecast_category"] == "closed"
    assert s.loc["C", "amount"] == 90_000.0 and s.loc["C", "next_step"] == "signed"


def test_the_row_speaks_at_and_after_its_observed_at(at):
    """A newer export whose row changed without history rows: the row holds from observed_at;
    a stage that differs from the last stage-history row has an unknown entry time."""
    data = _partial_export()
    deals = data.deals.copy()
    o = deals["deal_id"] == "O"
    deals.loc[o, "stage"] = "proposal"
    deals.loc[o, "amount"] = 150_000.0
    newer = type(data)(**{**dict(data.items()), "deals": deals})
    row = at(newer, "2025-06-30").loc["O"]
    assert row["stage"] == "proposal" and pd.isna(row["stage_entered_at"])
    assert row["amount"] == 150_000.0 and row["forecast_category"] == "commit"
    assert row["history_known"]
    # before observed_at, dated history still speaks
    assert at(newer, "2025-06-29").loc["O", "amount"] == 100_000.0
    # a change stamped after observed_at is newer than the row
    later = type(data)(
        **{
            **dict(newer.items()),
            "field_history": pd.concat(
                [
                    newer.field_history,
                    pd.DataFrame(
                        [["O", "amount", "150000.0", "170000.0", pd.Timestamp("2025-07-02")]],
                        columns=newer.field_history.columns,
                    ),
                ],
                ignore_index=True,
            ),
        }
    )
    assert at(later, "2025-07-01").loc["O", "amount"] == 150_000.0
    assert at(later, "2025-07-02").loc["O", "amount"] == 170_000.0


def test_custom_columns_before_the_export_only_when_declared_static(at):
    data = tables(
        deals=[
            deal("D", "2025-01-10", custom_region="EU", custom_reason="won on price"),
        ],
        stage_history=[("D", "qualification", "2025-01-10")],
    )
    s = at(data, "2025-03-01", static_custom=["region"])
    assert s.loc["D", "custom_region"] == "EU" and pd.isna(s.loc["D", "custom_reason"])
    assert at(data, "2025-12-31", static_custom=[]).loc["D", "custom_reason"] == "won on price"
    # by default no custom column is declared static: unknown before the export, both of them
    default = at(data, "2025-03-01").loc["D"]
    assert pd.isna(default["custom_reason"]) and pd.isna(default["custom_region"])
    assert not default["row_known"] and at(data, "2025-12-31").loc["D", "row_known"]
    with pytest.raises(NotFoundError, match="custom_nope"):
        at(data, "2025-03-01", static_custom=["nope"])


def test_tracked_since_is_the_first_change_of_each_field():
    since = tracked_since(_partial_export().field_history)
    assert since == {"amount": pd.Timestamp("2025-02-01")}
    assert tracked_since(tables(deals=[]).field_history) == {}


def test_one_rule_no_switch():
    """The point-in-time rebuild has one rule: no parameter could bring the earlier (leaky)
    rule back."""
    import inspect

    for fn in (deal_states, deal_states_as_of):
        assert "strict" not in inspect.signature(fn).parameters


# --- a won or lost deal without a close date (deals-only exports) -----------------------------
def _undated_close():
    """A deals-only export taken 30 June: W says closed_won but gives no close date."""
    return tables(
        deals=[
            deal("W", "2025-01-10", stage="closed_won", outcome="won", observed_at="2025-06-30",
                 history_source="derived"),
            deal("O", "2025-01-10", observed_at="2025-06-30", history_source="derived"),
        ],
        stage_history=[
            ("W", None, "2025-01-10"),
            ("W", "closed_won", "2025-06-30"),  # the importer: the closed stage seen at export
            ("O", None, "2025-01-10"),
            ("O", "qualification", "2025-06-30"),
        ],
        derived=True,
    )  # fmt: skip


def test_a_close_without_date_counts_from_the_export_on(at, cfg):
    before = at(_undated_close(), "2025-06-29").loc["W"]
    assert before["is_open"] and before["outcome"] == "open" and not before["stage_known"]
    after = at(_undated_close(), "2025-06-30").loc["W"]
    assert not after["is_open"] and after["outcome"] == "won"
    assert after["stage"] == "closed_won" and pd.isna(after["closed_at"])  # when: unknown
    open_only = deal_states_as_of(_undated_close(), to_timestamp("2025-07-15"), cfg, open_only=True)
    assert list(open_only["deal_id"]) == ["O"]


def test_labels_of_a_close_without_date():
    from features.signals.snapshots import outcome_labels

    keys = pd.DataFrame(
        {"deal_id": ["W", "W"], "as_of": [to_timestamp("2025-03-31"), to_timestamp("2025-06-02")]}
    )
    labels = outcome_labels(keys, _undated_close().deals)
    assert (labels["won"] == 1).all() and labels["days_to_close"].isna().all()
    # Q1 ended before the export: won by then or not is unknown; Q2 ends at the export: won
    assert missing(labels.loc[0, "closed_won_by_quarter_end"])
    assert labels.loc[1, "closed_won_by_quarter_end"] == 1


def test_a_close_without_date_through_the_importer_and_the_reports(cli, tmp_path):
    """Loaded from a deals-only CSV: noted at import; metrics and hygiene after the export do not
    count it open, and its unknown close date keeps it out of the win rate."""
    import json

    from serving.cli import app

    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "deals.csv").write_text(
        "deal_id,owner,created_at,stage,amount,closed_at\n"
        "W,ann,2025-01-10,closed_won,50000,\n"
        "O,ann,2025-02-01,qualification,80000,\n"
    )
    db = tmp_path / "x.duckdb"
    load = cli.invoke(app, ["load", str(folder), "--db", str(db), "--exported-at", "2025-06-30"])
    assert load.exit_code == 0, load.output
    assert "1 won or lost deals have no closed_at: counted closed from the export" in load.output
    m = cli.invoke(app, ["metrics", "--as-of", "2025-07-15", "--db", str(db), "--json"])
    payload = json.loads(m.stdout)
    assert payload["open_pipeline"]["count"] == 1 and payload["win_rate"]["denominator"] == 0
    h = cli.invoke(app, ["hygiene", "--as-of", "2025-07-15", "--db", str(db), "--json"])
    assert {f["deal_id"] for f in json.loads(h.stdout)["flags"]} <= {"O"}


# --- the test factory: fields logged from creation ---------------------------------------------
def test_factory_logs_tracked_fields_from_creation(at):
    rows = [deal("D", "2025-02-01", amount=90_000.0, next_step=None, observed_at="2025-06-30")]
    changes = [("D", "amount", "80000.0", "90000.0", "2025-03-01")]
    logged = tables(deals=rows, field_history=changes)
    fh = logged.field_history
    creation = fh[fh["old_value"].isna()]
    assert len(creation) == 5 and (creation["changed_at"] == pd.Timestamp("2025-02-01")).all()
    # the creation amount is the old value of the first change, not the row's final value
    assert creation.set_index("field").loc["amount", "new_value"] == "80000.0"
    s = at(logged, "2025-02-15").loc["D"]
    assert s["amount"] == 80_000.0 and s["history_known"] and pd.isna(s["next_step"])
    only_changes = tables(deals=rows, field_history=changes, logged_from_creation=())
    assert not at(only_changes, "2025-02-15").loc["D", "amount_known"]  # tracked from 1 March
    s = at(only_changes, "2025-03-01").loc["D"]
    assert s["amount"] == 90_000.0 and not s["history_known"]
    assert pd.isna(s["forecast_category"])
