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
        return {n: con.execute(f'select count(*) from "{n}"').fetchone()[0] for n in names}


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
