"""The leakage audit: its AUC, history coverage, events after the close, separation flags, thin
and empty stores, and ``pipecast audit``."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from features.data.schema import CanonicalTables, empty_frame
from features.data.stages import StageConfig
from features.signals.audit import (
    BINS,
    FAR_AUC_LIMIT,
    FAR_DAYS,
    after_close,
    auc,
    audit,
    deal_folds,
    field_coverage,
    separation,
    value_bins,
)
from features.signals.pointintime import deal_states
from features.signals.snapshots import outcome_labels, snapshot_dates
from features.synthetic.generator import generate
from tests.factory import deal, tables

Serve = Callable[[CanonicalTables], dict[str, Any]]


# --- AUC --------------------------------------------------------------------------------------
def test_auc_is_the_rank_formula_with_ties() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(500) < 0.3
    for scores in (rng.normal(size=500) + y, rng.integers(0, 4, 500).astype(float)):
        assert auc(scores, y) == pytest.approx(roc_auc_score(y, scores))
    assert auc(np.array([1.0, 1.0]), np.array([True, False])) == 0.5
    assert np.isnan(auc(np.array([1.0, 2.0]), np.array([True, True])))


def test_value_bins_keep_missing_apart() -> None:
    numbers = pd.Series([np.nan, *range(100)], dtype="float64")
    codes = value_bins(numbers)
    assert codes[0] == 0 and (codes[1:] >= 1).all() and len(set(codes[1:])) == BINS
    cats = value_bins(pd.Series(["a", None, "b", "a"], dtype="str"))
    assert cats[1] == 0 and cats[0] == cats[3] != cats[2]
    dates = value_bins(pd.to_datetime(pd.Series(["2025-01-01", None, "2025-02-01"])))
    assert dates[1] == 0 and dates[0] != dates[2]


def test_separation_finds_a_leak_and_not_an_id() -> None:
    rng = np.random.default_rng(1)
    ids = pd.Series([f"D{i}" for i in range(400)]).repeat(3).reset_index(drop=True)
    won = np.repeat(rng.random(400) < 0.4, 3).astype(float)
    folds = deal_folds(ids)
    leak = pd.Series(np.where(won == 1, "closed", "omitted"))
    assert separation(leak, won, folds) == pytest.approx(1.0)
    # unique per deal: scoring by its own won rate would be perfect; by the other fold's, chance
    assert separation(ids, won, folds) < 0.6
    assert separation(pd.Series(rng.normal(size=len(ids))), won, folds) < 0.6
    reverse = pd.Series(np.where(won == 1, 0.0, 1.0) + rng.normal(0, 0.01, len(ids)))
    assert separation(reverse, won, folds) > 0.95


# --- coverage and events after the close ------------------------------------------------------
def _store() -> CanonicalTables:
    return tables(
        deals=[
            deal("A", "2025-01-01", amount=100_000.0, forecast_category="commit"),
            deal(
                "W",
                "2025-01-01",
                stage="closed_won",
                outcome="won",
                closed_at="2025-04-01",
                forecast_category="closed",
                amount=70_000.0,
            ),
        ],
        stage_history=[
            ("A", "qualification", "2025-01-01"),
            ("W", "qualification", "2025-01-01"),
            ("W", "closed_won", "2025-04-01"),
            ("W", "proposal", "2025-04-03"),  # a stage change after the close
        ],
        field_history=[
            ("A", "amount", "90000.0", "100000.0", "2025-07-01 00:00"),
            # W's amount was changed at the close without a log: the row says 70,000
            ("W", "amount", "90000.0", "80000.0", "2025-07-01 00:00"),
            ("W", "expected_close_date", "2025-03-31", "2025-04-01", "2025-04-01 12:00"),
        ],
        activities=[("W", "call", "2025-04-01 18:00"), ("W", "call", "2025-04-02 09:00")],
        logged_from_creation=(),  # a partly logged CRM: only the changes above
    )


def test_field_coverage_names_missing_partial_and_unlogged_history() -> None:
    cov = {c.field: c for c in field_coverage(_store())}
    assert cov["forecast_category"].status == "no history"
    assert cov["forecast_category"].covered_share == 0.0
    amount = cov["amount"]
    assert amount.tracked_since == pd.Timestamp("2025-07-01") and amount.changes == 2
    # A lived 1 Jan - 31 Dec, W 1 Jan - 1 Apr: history covers 1 Jul - 31 Dec of A only
    assert amount.covered_share == pytest.approx(183 / (364 + 90), abs=0.01)
    assert amount.unlogged_changes == 1 and amount.status == "partial"
    ecd = cov["expected_close_date"]
    assert ecd.unlogged_changes == 1  # W's row holds no close date; the log says 1 April


def test_after_close_counts_later_days_only() -> None:
    late = after_close(_store())
    assert late.closed_deals == 1
    assert late.activities == 1  # the 2 April call; the call on the close day is fine
    assert late.stage_changes == 1 and late.field_changes == 1
    assert late.examples == ["W"]


# --- the audit on generated data --------------------------------------------------------------
@pytest.fixture(scope="module")
def generated() -> CanonicalTables:
    data = generate(700, seed=4).tables
    deals = data.deals.copy()
    # a custom field a CRM fills in at the close, with the close's own words
    deals["custom_close_note"] = deals["outcome"].map({"won": "PO received", "lost": "lost"})
    return replace(data, deals=deals)


@pytest.fixture(scope="module")
def report(generated: CanonicalTables, cfg: StageConfig):
    return audit(generated, cfg, freq="2W-MON", static_custom=["industry"])


def test_audit_of_full_history_flags_only_the_custom_fields_set_later(report) -> None:
    assert all(f.status == "covered" for f in report.fields)
    flagged = {s.column for s in report.separation if s.flagged}
    assert "custom_close_note" in flagged
    assert flagged <= {"custom_close_note", "custom_contract_sent_date"}  # both written later
    by_name = {s.column: s for s in report.separation}
    assert by_name["custom_close_note"].auc_far == pytest.approx(1.0)
    assert by_name["forecast_category"].auc_far < FAR_AUC_LIMIT
    assert by_name["custom_industry"].source == "custom" and not by_name["custom_industry"].flagged
    assert {"owner", "account", "competitor"} <= {s.column for s in report.separation}
    assert not report.timing.flagged and report.timing.far_share < 0.05
    assert any("custom_close_note" in f and "do not declare" in f for f in report.findings)
    assert report.rows["far_won"] >= 20 and report.rows["near_lost"] >= 20
    assert report.after_close.activities == 0


def test_audit_names_every_field_whose_history_is_missing(
    generated: CanonicalTables, cfg: StageConfig
) -> None:
    bare = replace(generated, field_history=empty_frame("field_history"))
    report = audit(bare, cfg, freq="4W-MON")
    assert {f.field for f in report.fields if f.status == "no history"} == {
        "amount",
        "expected_close_date",
        "forecast_category",
        "next_step",
        "next_step_date",
    }
    for name in ("forecast_category", "expected_close_date"):
        assert any(f.startswith(f"{name}: no field history") for f in report.findings)
    # signals built by the point-in-time rule no longer know the outcome
    assert not any(s.flagged for s in report.separation if s.source == "signal")


def test_the_audit_would_have_named_the_issue_6_leak(
    generated: CanonicalTables, cfg: StageConfig
) -> None:
    """The earlier rule (the deal row before observed_at) on an export without field history:
    the forecast category separates won from lost far from the close, past the limit. That rule
    is gone from the code; on a store without history it gave each deal's row value at every
    date, which is rebuilt here by hand."""
    bare = replace(generated, field_history=empty_frame("field_history"))
    dates = snapshot_dates("2023-01-01", "2025-12-31", "4W-MON")
    states = deal_states(bare, dates, cfg, open_only=True)
    row_value = bare.deals.set_index("deal_id")["forecast_category"]
    earlier = states.assign(forecast_category=row_value.reindex(states["deal_id"]).to_numpy())
    labels = outcome_labels(earlier[["deal_id", "as_of"]], bare.deals)
    rows = pd.concat([earlier, labels], axis=1)
    rows = rows[(rows["censored"] == 0) & (rows["days_to_close"] >= FAR_DAYS)]
    won, folds = rows["won"].to_numpy(), deal_folds(rows["deal_id"])
    assert separation(rows["forecast_category"], won, folds) >= FAR_AUC_LIMIT
    kept = states.merge(rows[["deal_id", "as_of"]], on=["deal_id", "as_of"])
    assert kept["forecast_category"].isna().all()


# --- thin and empty stores --------------------------------------------------------------------
def test_audit_of_an_empty_store(cfg: StageConfig) -> None:
    report = audit(tables(deals=[]), cfg)
    assert report.deals == 0 and report.separation == [] and report.data_end is None
    assert any("no deals" in n for n in report.notes)
    assert all(f.status == "no history" for f in report.fields)
    json.dumps(report.to_dict(), allow_nan=False)


def test_audit_of_thin_data_says_not_enough_data(cfg: StageConfig) -> None:
    report = audit(_store(), cfg)
    assert report.rows == {"far_won": 0, "far_lost": 0, "near_won": 5, "near_lost": 0}
    assert any(n.startswith("not enough data") for n in report.notes)
    assert all(s.auc_far is None and not s.flagged for s in report.separation)
    json.dumps(report.to_dict(), allow_nan=False)


# --- CLI --------------------------------------------------------------------------------------
def test_cli_audit_json_and_table(
    serve_tables: Serve, cli: CliRunner, generated: CanonicalTables
) -> None:
    from serving.cli import app

    serve_tables(replace(generated, field_history=empty_frame("field_history")))
    res = cli.invoke(app, ["audit", "--json", "--freq", "4W-MON", "--max-deals", "300"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.output)
    missing = {f["field"] for f in payload["fields"] if f["status"] == "no history"}
    assert "forecast_category" in missing and "expected_close_date" in missing
    assert payload["deals"] == 700 and payload["findings"]
    res = cli.invoke(app, ["audit", "--freq", "4W-MON", "--max-deals", "300"])
    assert res.exit_code == 0, res.output
    assert "no history" in res.output and "finding:" in res.output


def test_cli_audit_errors(serve_tables: Serve, cli: CliRunner) -> None:
    from serving.cli import app

    serve_tables(tables(deals=[]))
    res = cli.invoke(app, ["audit"])
    assert res.exit_code == 0 and "no deals" in res.output
    res = cli.invoke(app, ["audit", "--freq", "fortnightly"])
    assert res.exit_code == 2 and "--freq" in res.output
    res = cli.invoke(app, ["audit", "--static-custom", "nope"])
    assert res.exit_code == 1 and "custom_nope" in res.output and "Traceback" not in res.output


def test_cli_signals_unknown_custom_column_is_one_line(serve_tables: Serve, cli: CliRunner) -> None:
    from serving.cli import app

    data = tables(
        deals=[deal("D", "2025-01-01")], stage_history=[("D", "qualification", "2025-01-01")]
    )
    serve_tables(data)
    res = cli.invoke(app, ["signals", "--as-of", "2025-06-30", "--custom", "nope"])
    assert res.exit_code == 1 and "custom column 'custom_nope' is not in deals" in res.output
    assert "internal error" not in res.output
