"""End to end through the CLI: generate, load, refuse a bad row, summary."""

import shutil
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from typer.testing import CliRunner

from serving.cli import app

runner = CliRunner()


def _counts(db: Path) -> dict[str, int]:
    with duckdb.connect(str(db), read_only=True) as con:
        names = [
            r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()
        ]
        counts = {n: con.execute(f'select count(*) from "{n}"').fetchone() for n in names}
        return {n: row[0] for n, row in counts.items() if row is not None}


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gen") / "d"
    result = runner.invoke(
        app, ["generate", "--deals", "400", "--seed", "3", "--out", str(out), "--format", "csv"]
    )
    assert result.exit_code == 0, result.output
    return out


def test_generate_load_summary(generated: Path, tmp_path: Path):
    db = tmp_path / "x.duckdb"
    assert (generated / "deals.csv").exists() and (generated / "truth" / "truth.parquet").exists()
    result = runner.invoke(app, ["load", str(generated), "--db", str(db)])
    assert result.exit_code == 0, result.output
    counts = _counts(db)
    assert counts["deals"] == 400
    assert counts["stage_history"] > 400 and counts["activities"] > 400
    again = runner.invoke(app, ["load", str(generated), "--db", str(db)])
    assert again.exit_code == 0, again.output
    assert _counts(db) == counts  # idempotent
    summary = runner.invoke(app, ["summary", "--db", str(db)])
    assert summary.exit_code == 0, summary.output
    assert "open pipeline" in summary.output


def test_bad_row_is_reported_and_store_unchanged(generated: Path, tmp_path: Path):
    db = tmp_path / "x.duckdb"
    assert runner.invoke(app, ["load", str(generated), "--db", str(db)]).exit_code == 0
    before = _counts(db)
    with duckdb.connect(str(db), read_only=True) as con:
        deals_before = con.execute("select * from deals order by deal_id").df()

    bad = tmp_path / "bad"
    shutil.copytree(generated, bad)
    deals = pd.read_csv(bad / "deals.csv", dtype=str, keep_default_na=False)
    deals.loc[6, "amount"] = "-5"  # data row 7, CSV line 8
    deals.loc[6, "stage"] = "Dreaming"
    deals.to_csv(bad / "deals.csv", index=False)

    result = runner.invoke(app, ["load", str(bad), "--db", str(db)])
    assert result.exit_code == 1
    out = result.output
    assert "deals.csv" in out and "row 7" in out
    assert "amount" in out and "stage" in out and "Dreaming" in out
    assert _counts(db) == before
    with duckdb.connect(str(db), read_only=True) as con:
        pd.testing.assert_frame_equal(
            con.execute("select * from deals order by deal_id").df(), deals_before
        )


def test_missing_store_is_a_clear_error(tmp_path: Path):
    result = runner.invoke(app, ["summary", "--db", str(tmp_path / "nope.duckdb")])
    assert result.exit_code != 0
    assert "no such store" in result.output


FIXTURES = Path(__file__).parent / "fixtures"


def test_summary_of_a_deals_only_import_without_amounts(tmp_path: Path):
    export = tmp_path / "deals-only"
    export.mkdir()
    deals = pd.read_csv(FIXTURES / "canonical" / "deals.csv", dtype=str, keep_default_na=False)
    deals["amount"] = ""
    deals.to_csv(export / "deals.csv", index=False)
    db = tmp_path / "d.duckdb"
    loaded = runner.invoke(
        app, ["load", str(export), "--db", str(db), "--exported-at", "2024-06-01"]
    )
    assert loaded.exit_code == 0, loaded.output
    result = runner.invoke(app, ["summary", "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "Negotiation" in result.output and "unknown" in result.output
    assert "open pipeline as of 2024-06-01: 3 deals, unknown total value" in result.output


def test_defaults_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from features.settings import get_settings

    db = tmp_path / "env.duckdb"
    stages = tmp_path / "stages.yaml"
    stages.write_text(
        (Path(__file__).parents[1] / "features/data/stages.yaml")
        .read_text()
        .replace('label: "4 Negotiation"', 'label: "4 Haggling"')
    )
    monkeypatch.setenv("PIPECAST_DB", str(db))
    monkeypatch.setenv("PIPECAST_STAGES", str(stages))
    try:
        loaded = runner.invoke(app, ["load", str(FIXTURES / "canonical")])
        assert loaded.exit_code == 0, loaded.output
        assert db.is_file() and f"into {db}" in loaded.output
        result = runner.invoke(app, ["summary"])
        assert result.exit_code == 0, result.output
        assert "4 Haggling" in result.output
        other = tmp_path / "opt.duckdb"  # an option wins over the environment
        assert (
            runner.invoke(app, ["load", str(FIXTURES / "canonical"), "--db", str(other)]).exit_code
            == 0
        )
        assert other.is_file()
    finally:
        get_settings.cache_clear()


def test_summarize_orders_stages_and_keeps_unknown_values_unknown():
    from features.data.stages import load_stage_config
    from features.pipeline.summary import summarize
    from tests.factory import deal, tables

    deals = tables(
        deals=[
            deal("D1", "2025-01-01", stage="proposal", amount=10.0),
            deal("D2", "2025-01-01", stage="qualification", amount=None),
            deal("D3", "2025-01-01", stage="retired_stage", amount=5.0),
            deal("D4", "2025-01-01", stage="closed_won", outcome="won", amount=7.0),
        ]
    ).deals
    result = summarize(deals, load_stage_config())
    assert [r.stage for r in result.stages] == [
        "qualification",
        "proposal",
        "closed_won",
        "retired_stage",
    ]
    assert result.stages[0].value is None and result.stages[1].value == 10.0
    assert (result.open_deals, result.open_value, result.open_with_amount) == (3, 15.0, 2)
    empty = summarize(deals.iloc[0:0], load_stage_config())
    assert empty.stages == [] and empty.as_of is None and empty.open_value is None
