"""Rule-based forecasts, the stand-in scorer and ``pipecast forecast`` (errors, JSON, plot)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.data.stages import load_stage_config
from features.errors import NotEnoughDataError
from features.pipeline.metrics import compute_metrics
from features.synthetic.generator import generate
from forecasting.rules import actual, rule_forecasts, week_as_of, week_of_quarter
from forecasting.scoring import SCORE_COLUMNS, fit_stage_history
from serving.cli import app
from serving.cli import common as cli_common
from tests.factory import deal, tables

CFG = load_stage_config()
AS_OF = pd.Timestamp("2025-05-15 23:59:59")


@pytest.fixture(scope="module")
def small():
    return tables(
        deals=[
            deal("C1", "2025-01-10", stage="negotiation", amount=200_000.0,
                 expected_close_date="2025-06-20", forecast_category="commit"),
            deal("B1", "2025-02-01", stage="proposal", amount=100_000.0,
                 expected_close_date="2025-06-10", forecast_category="best_case"),
            deal("P1", "2025-02-01", stage="qualification", amount=80_000.0,
                 expected_close_date="2025-06-30"),
            deal("L1", "2025-02-01", stage="proposal", amount=500_000.0,
                 expected_close_date="2025-09-30", forecast_category="commit"),
            deal("W1", "2024-10-01", stage="closed_won", outcome="won", closed_at="2025-04-20",
                 amount=120_000.0, forecast_category="closed"),
            deal("W2", "2024-10-01", stage="closed_won", outcome="won", closed_at="2025-06-05",
                 amount=70_000.0, forecast_category="closed"),
        ],
        stage_history=[
            ("C1", "negotiation", "2025-01-10"), ("B1", "proposal", "2025-02-01"),
            ("P1", "qualification", "2025-02-01"), ("L1", "proposal", "2025-02-01"),
            ("W1", "proposal", "2024-10-01"), ("W1", "closed_won", "2025-04-20"),
            ("W2", "proposal", "2024-10-01"), ("W2", "closed_won", "2025-06-05"),
        ],
        targets=[("company", "company", "2025Q2", 600_000.0)],
    )  # fmt: skip


def test_rule_forecasts_by_hand(small):
    metrics = compute_metrics(small, CFG, AS_OF)
    open_deals = metrics_open(small)
    got = rule_forecasts(metrics, open_deals)
    won = 120_000.0  # W1 closed in the quarter before as_of; W2 not yet
    assert got["stage_weighted"] == pytest.approx(
        won + 0.7 * 200_000 + 0.5 * 100_000 + 0.1 * 80_000
    )
    assert got["commit"] == pytest.approx(won + 200_000)  # L1 commits to Q3, not this quarter
    assert got["best_case"] == pytest.approx(won + 300_000)
    assert got["historical_conversion"] is None or got["historical_conversion"] >= won


def metrics_open(t):
    from features.signals.pointintime import deal_states_as_of

    s = deal_states_as_of(t, AS_OF, CFG, open_only=True)
    return s


def test_actual_is_what_closed_won_in_the_quarter(small):
    assert actual(small, CFG, "2025Q2") == pytest.approx(190_000.0)
    assert actual(small, CFG, "2026Q1") is None  # the data does not cover it yet


def test_weeks_of_quarter():
    assert week_as_of("2025Q2", 1) == pd.Timestamp("2025-04-07 23:59:59.999999")
    assert week_as_of("2025Q1", 8) == pd.Timestamp("2025-02-25 23:59:59.999999")
    for w in (1, 4, 8, 13):
        assert week_of_quarter(week_as_of("2025Q3", w)) == w


@pytest.fixture(scope="module")
def generated():
    return generate(1500, 3).tables


def test_stand_in_scorer_scores_every_open_deal(generated):
    scorer = fit_stage_history(generated, CFG, pd.Timestamp("2025-03-31 23:59:59"))
    scored = scorer.score(generated, CFG, pd.Timestamp("2025-04-28 23:59:59"))
    assert list(scored.columns) == SCORE_COLUMNS
    assert scored["deal_id"].is_unique and len(scored) > 50
    assert (scored["p_won_this_quarter"] <= scored["p_win"] + 1e-12).all()
    assert scored["p_win"].between(0, 1).all()
    # later stages win more often
    by_stage = scored.groupby("stage")["p_win"].mean()
    assert by_stage["negotiation"] > by_stage["qualification"]


def test_stand_in_scorer_needs_closed_deals(generated):
    with pytest.raises(NotEnoughDataError, match="closed by 2022-01-20"):
        fit_stage_history(generated, CFG, pd.Timestamp("2022-01-20"))


def test_stand_in_scorer_never_reads_an_outcome_after_its_cutoff(generated):
    cutoff = pd.Timestamp("2024-06-30 23:59:59")
    before = fit_stage_history(generated, CFG, cutoff)
    deals = generated.deals.copy()
    later = pd.to_datetime(deals["closed_at"]) > cutoff
    flip = {"won": "lost", "lost": "won"}
    deals.loc[later, "outcome"] = deals.loc[later, "outcome"].map(flip)
    after = fit_stage_history(dataclasses.replace(generated, deals=deals), CFG, cutoff)
    assert before.win_rate == after.win_rate and before.close_share == after.close_share


# --- CLI ----------------------------------------------------------------------------------
@pytest.fixture
def cli_context(monkeypatch, generated):
    ctx = cli_common.Context(tables=generated, stages=CFG)
    monkeypatch.setattr(cli_common, "open_context", lambda db, stages: ctx)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--quarter", "2025-Q4"], "--quarter: cannot read '2025-Q4'"),
        (["--quarter", "2025Q2", "--as-of", "2025-08-01"], "outside 2025Q2"),
        (["--quarter", "2025Q2", "--as-of", "someday"], "--as-of: cannot read"),
    ],
)
def test_forecast_refuses_bad_arguments_in_one_line(cli_context, args, message):
    result = CliRunner().invoke(app, ["forecast", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--quarters", "2025Q3..2024Q1"], "is empty"), (["--weeks", "1,x"], "--weeks"),
     (["--quarters", "2025Q4..2026Q1"], "not over by the end of the data"),
     (["--weeks", "0,4"], "outside 1..13")],
)  # fmt: skip
def test_backtest_refuses_bad_arguments(cli_context, args, message):
    result = CliRunner().invoke(app, ["backtest", "--no-mlflow", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


@pytest.mark.slow
def test_forecast_cli_json_and_plot(cli_context, tmp_path):
    png = tmp_path / "fc.png"
    result = CliRunner().invoke(
        app,
        ["forecast", "--quarter", "2025Q3", "--as-of", "2025-08-10", "--json", "--plot", str(png),
         "--scenarios", "1000"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    pc = out["pipecast"]
    assert pc["p10"] <= pc["p50"] <= pc["p90"]
    assert set(out["rules"]) == {"stage_weighted", "commit", "best_case", "historical_conversion"}
    assert out["actual"] is not None  # 2025Q3 is over in the data
    assert out["won_so_far"] <= pc["p10"]
    assert out["pulled_in"]["p50"] >= pc["p50"]
    assert out["drivers"] and all(d["swing"] >= 0 for d in out["drivers"])
    assert out["model"]["config_hash"] and "divergences" in out["model"]["diagnostics"]
    assert out["model"]["history_in_warmup"] == []  # 2024Q1-2025Q2: long after the data start
    assert png.exists() and png.stat().st_size > 10_000
    team = generated_team(out)
    scoped = CliRunner().invoke(
        app, ["forecast", "--quarter", "2025Q3", "--as-of", "2025-08-10", "--team", team,
              "--json", "--scenarios", "1000"],
    )  # fmt: skip
    assert scoped.exit_code == 0, scoped.output
    assert json.loads(scoped.output)["pipecast"]["p50"] < pc["p50"]


def generated_team(out: dict) -> str:
    return next(iter(out["top_deals"].values()))[0]["deal_id"] and "Team Benelux"


def test_independent_stage_sim_is_its_own_method():
    from forecasting.forecast import independent_stage_sim

    closing = pd.DataFrame({"stage": ["negotiation"] * 100, "amount": [10.0] * 100})
    values = independent_stage_sim(closing, CFG, 5.0, 4000, 0)
    assert values.mean() == pytest.approx(5 + 0.7 * 1000, rel=0.01)
    assert np.std(values) == pytest.approx(np.sqrt(100 * 0.21) * 10, rel=0.1)
