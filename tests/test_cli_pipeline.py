"""``pipecast metrics|hygiene|review``: tables in a terminal and JSON with --json, on a fixture."""

import json
from datetime import datetime

import pytest

from features.pipeline.review import FieldChange
from serving.cli import app
from serving.cli.pipeline import _net_change
from tests.factory import deal, tables


@pytest.fixture(autouse=True)
def context(serve_tables):
    data = tables(
        deals=[
            deal("D1", "2025-01-10", stage="proposal", amount=300_000.0,
                 expected_close_date="2025-06-30", next_step_date="2025-06-20"),
            deal("D2", "2025-02-01", owner="bob", team="south", amount=50_000.0,
                 expected_close_date="2025-05-31"),
            deal("W1", "2024-10-01", stage="closed_won", outcome="won", closed_at="2025-03-01",
                 amount=120_000.0, forecast_category="closed"),
        ],
        stage_history=[
            ("D1", "qualification", "2025-01-10"),
            ("D1", "proposal", "2025-06-12"),
            ("D2", "qualification", "2025-02-01"),
            ("W1", "qualification", "2024-10-01"),
            ("W1", "proposal", "2024-12-01"),
            ("W1", "closed_won", "2025-03-01"),
        ],
        activities=[("D1", "call", "2025-06-11")],
        targets=[("company", "company", "2025Q2", 100_000.0)],
    )  # fmt: skip
    return serve_tables(data)


@pytest.fixture
def run(cli):
    def invoke(*args):
        result = cli.invoke(app, list(args))
        assert result.exit_code == 0, result.output
        return result.output

    return invoke


def test_metrics_table_and_json(run):
    out = run("metrics", "--as-of", "2025-06-15")
    assert "coverage" in out and "3.50x" in out and "healthy" in out
    payload = json.loads(run("metrics", "--as-of", "2025-06-15", "--json"))
    # D1 300k + D2 50k (overdue but still dated in Q2) over a 100k target
    assert payload["coverage"]["ratio"] == 3.5
    assert payload["win_rate"]["rate"] == 1.0
    team = json.loads(run("metrics", "--as-of", "2025-06-15", "--team", "south", "--json"))
    assert team["team"] == "south" and team["open_pipeline"]["count"] == 1


def test_metrics_plot(tmp_path, run, cli):
    png = tmp_path / "health.png"
    out = run("metrics", "--as-of", "2025-06-15", "--plot", str(png))
    assert f"plot written to {png}" in out and "coverage" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 30_000
    # With --json the notice goes to stderr: stdout stays one JSON document.
    result = cli.invoke(
        app, ["metrics", "--as-of", "2025-06-15", "--json", "--plot", str(tmp_path / "j.png")]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["coverage"]["ratio"] == 3.5
    assert "plot written to" in result.stderr and (tmp_path / "j.png").exists()
    bad = cli.invoke(app, ["metrics", "--as-of", "2025-06-15", "--plot", "/no/such/dir/p.png"])
    assert bad.exit_code != 0 and "no such directory" in bad.output


def test_hygiene_table_and_json(context, run):
    out = run("hygiene", "--as-of", "2025-06-15", "--db", "x.duckdb")
    assert context["db"] == "x.duckdb"
    assert "close_date_past" in out and "D2" in out
    payload = json.loads(run("hygiene", "--as-of", "2025-06-15", "--owner", "bob", "--json"))
    assert {f["deal_id"] for f in payload["flags"]} == {"D2"}
    assert {f["rule"] for f in payload["flags"]} >= {"close_date_past", "no_next_step"}


def test_review_table_and_json(run):
    out = run("review", "--as-of", "2025-06-15")
    assert "D1" in out and "D2" not in out  # 50k is below the 100k default
    payload = json.loads(run("review", "--as-of", "2025-06-15", "--min-amount", "10000", "--json"))
    assert [d["deal_id"] for d in payload["deals"]] == ["D1", "D2"]
    # one stage move in the week: its net change, counted once, no path
    assert payload["deals"][0]["changes"] == [
        {
            "field": "stage",
            "old": "qualification",
            "new": "proposal",
            "changes": 1,
            "last_at": "2025-06-12T00:00:00",
            "path": [],
        }
    ]


def test_review_net_change_lines():
    at = datetime(2025, 6, 13, 16, 45)
    once = FieldChange("amount", "120000.0", "150000.0", 1, at, [])
    assert _net_change(once) == "06-13 amount: 120000.0 -> 150000.0"
    moved = FieldChange("stage", "qualification", "proposal", 2, at,
                        ["qualification", "needs_analysis", "proposal"])  # fmt: skip
    assert _net_change(moved) == "06-13 stage: qualification -> needs_analysis -> proposal (2x)"
    step = FieldChange("next_step", "intro", "call", 3, at, [])
    assert _net_change(step) == "06-13 next_step: intro -> call (3x)"


def test_bad_arguments(cli):
    assert cli.invoke(app, ["metrics", "--as-of", "15/06/2025"]).exit_code != 0
    assert cli.invoke(app, ["review", "--as-of", "2025-06-15", "--sort", "x"]).exit_code != 0


@pytest.mark.parametrize("command", ["metrics", "hygiene", "review"])
def test_unknown_team_is_one_line_not_a_crash(cli, command):
    result = cli.invoke(app, [command, "--as-of", "2025-06-15", "--team", "nrth"])
    assert result.exit_code == 1
    assert result.output.strip() == (
        "--team 'nrth': no deal or target has this team; known: north, south"
    )
