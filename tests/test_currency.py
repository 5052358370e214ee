"""Amounts in one corporate currency (issue 13): rates from the export or a file, converted once,
at the rate in force on the date; refused without a rate; one corporate currency per store.

The export below is small enough to compute by hand. USD is the corporate currency.

| deal | currency | amount | at 2024-09-30 | rate | USD |
| --- | --- | --- | --- | --- | --- |
| D1 | MXN | 1,000,000 (800,000 until 1 May) | open, closes in Q3 | dated: 20 from 1 Jul | 50,000 |
| D2 | COP | 40,000,000 | open, closes in Q3 | fixed 4,000 | 10,000 |
| D3 | PEN | 100,000 | won 15 Aug | dated: 5 from 1 Aug (at its close) | 20,000 |
| D4 | USD | 50,000 | open, closes in Q3 | 1 | 50,000 |

Open pipeline 110,000 USD; won this quarter 20,000; target 40,000, so coverage 2.75x.
MXN is 17 from 1 January, 20 from 1 July and 25 from 1 October (after the as-of date).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from features.data.currency import rates_at, to_corporate
from features.data.stages import StageConfig
from features.data.store import Store
from features.signals import compute_signals
from features.signals.pointintime import deal_states_as_of
from serving.cli import app

AS_OF = "2024-09-30"
DEALS = """deal_id,owner,team,created_at,amount,currency,stage,expected_close_date,closed_at,outcome
D1,ana,mx,2024-02-01,1000000,MXN,proposal,2024-09-20,,
D2,ben,co,2024-03-01,40000000,cop,negotiation,2024-09-25,,
D3,ana,pe,2024-01-10,100000,PEN,closed_won,2024-08-15,2024-08-15,won
D4,cid,us,2024-04-01,50000,USD,qualification,2024-09-30,,
"""
STAGES = """deal_id,stage,entered_at
D1,qualification,2024-02-01
D1,proposal,2024-06-01
D2,qualification,2024-03-01
D2,negotiation,2024-07-01
D3,qualification,2024-01-10
D3,closed_won,2024-08-15
D4,qualification,2024-04-01
"""
FIELDS = """deal_id,field,old_value,new_value,changed_at
D1,amount,,800000,2024-02-01
D1,amount,800000,1000000,2024-05-01
D2,amount,,40000000,2024-03-01
D3,amount,,100000,2024-01-10
D4,amount,,50000,2024-04-01
"""
RATES = """currency,rate,valid_from,is_corporate
USD,1,,true
MXN,17,2024-01-01,
MXN,20,2024-07-01,
MXN,25,2024-10-01,
COP,4000,,
PEN,4.0,2024-01-01,
PEN,5.0,2024-08-01,
"""
TARGETS = "scope,scope_id,quarter,amount\ncompany,company,2024Q3,40000\n"


def _export(folder: Path, rates: str | None = RATES, deals: str = DEALS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "deals.csv": deals,
        "stage_history.csv": STAGES,
        "field_history.csv": FIELDS,
        "targets.csv": TARGETS,
    }
    if rates is not None:
        files["exchange_rates.csv"] = rates
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def _run(cli: CliRunner, *args: str) -> str:
    result = cli.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def _load(cli: CliRunner, export: Path, db: Path, *options: str) -> str:
    return _run(cli, "load", str(export), "--db", str(db), "--exported-at", AS_OF, *options)


def _metrics(cli: CliRunner, db: Path, as_of: str = AS_OF) -> dict[str, object]:
    out: dict[str, object] = json.loads(
        _run(cli, "metrics", "--as-of", as_of, "--db", str(db), "--json")
    )
    return out


@pytest.fixture
def store(tmp_path: Path, cli: CliRunner) -> Path:
    db = tmp_path / "x.duckdb"
    _load(cli, _export(tmp_path / "export"), db)
    return db


# --- the hand-computed figures --------------------------------------------------------------------
def test_pipeline_won_and_coverage_in_the_corporate_currency(store: Path, cli: CliRunner) -> None:
    m = _metrics(cli, store)
    assert m["currency"] == "USD"
    assert m["open_pipeline"] == {"count": 3, "value": 110_000.0, "amount_unknown": 0}
    cov = m["coverage"]
    assert isinstance(cov, dict)
    assert cov["pipeline_closing"] == 110_000.0
    assert cov["won_this_quarter"] == 20_000.0  # PEN at its close (5.0), not at 4.0
    assert cov["target"] == 40_000.0 and cov["ratio"] == 2.75
    deal_size = m["average_deal_size"]
    assert isinstance(deal_size, dict) and deal_size["won_value"] == 20_000.0
    summary = _run(cli, "summary", "--db", str(store))
    assert "110,000 USD total value" in summary


def test_signals_and_states_carry_converted_and_original_amounts(
    store: Path, cfg: StageConfig
) -> None:
    with Store(store) as s:
        tables = s.tables()
    when = pd.Timestamp("2024-09-30 23:59:59")
    states = deal_states_as_of(tables, when, cfg).set_index("deal_id")
    assert states.loc["D1", "amount"] == 50_000.0
    assert states.loc["D1", "amount_original"] == 1_000_000.0
    assert states.loc["D1", "currency"] == "MXN"
    assert states.loc["D2", "currency"] == "COP"  # 'cop' in the file
    sig = compute_signals(tables, [when], cfg).set_index("deal_id")
    assert sig.loc["D1", "amount"] == 50_000.0
    assert sig.loc["D1", "amount_log1p"] == pytest.approx(math.log1p(50_000.0))
    assert sig.loc["D2", "amount"] == 10_000.0
    # the deal's own growth, 800,000 -> 1,000,000 MXN, whatever the rate did meanwhile
    assert sig.loc["D1", "amount_change_since_creation"] == pytest.approx(0.25)
    # earlier dates: the rate then, and the amount then
    april = deal_states_as_of(tables, pd.Timestamp("2024-04-15"), cfg).set_index("deal_id")
    assert april.loc["D1", "amount"] == pytest.approx(800_000 / 17)
    june = deal_states_as_of(tables, pd.Timestamp("2024-06-30"), cfg).set_index("deal_id")
    assert june.loc["D1", "amount"] == pytest.approx(1_000_000 / 17)


def test_a_rate_changed_after_as_of_changes_nothing_at_as_of(
    tmp_path: Path, cli: CliRunner, store: Path
) -> None:
    changed = RATES.replace("MXN,25,2024-10-01", "MXN,40,2024-10-01").replace(
        "PEN,5.0,2024-08-01,", "PEN,5.0,2024-08-01,\nPEN,9.0,2024-09-01,"
    )
    other = tmp_path / "y.duckdb"
    _load(cli, _export(tmp_path / "export2", rates=changed), other)
    before, after = _metrics(cli, store), _metrics(cli, other)
    assert before == after  # PEN's new rate starts after D3 closed; MXN's after the date
    # ...while the day the new MXN rate is in force it does change the figures
    later_before = _metrics(cli, store, "2024-10-15")["open_pipeline"]
    later_after = _metrics(cli, other, "2024-10-15")["open_pipeline"]
    assert later_before != later_after
    assert isinstance(later_after, dict) and later_after["value"] == 1_000_000 / 40 + 60_000


# --- refused, with what to do ---------------------------------------------------------------------
def test_a_deal_in_a_currency_without_a_rate_is_refused_naming_it(
    tmp_path: Path, cli: CliRunner
) -> None:
    db = tmp_path / "x.duckdb"
    rates = RATES.replace("COP,4000,,\n", "")
    result = cli.invoke(app, ["load", str(_export(tmp_path / "e", rates=rates)), "--db", str(db)])
    assert result.exit_code == 1
    assert "no exchange rate for COP (amounts are reported in USD)" in result.output
    assert "--rates FILE.csv" in result.output and "deals.csv, row 2" in result.output
    assert not db.exists()


def test_rates_from_a_file_of_the_user(tmp_path: Path, cli: CliRunner) -> None:
    export = _export(tmp_path / "e", rates=None)
    rates = tmp_path / "my-rates.csv"
    rates.write_text(
        RATES.replace("USD,1,,true\n", "").replace(",is_corporate", "").replace(",\n", "\n")
    )
    db = tmp_path / "x.duckdb"
    _load(cli, export, db, "--rates", str(rates), "--currency", "usd")
    m = _metrics(cli, db)
    assert m["currency"] == "USD" and m["open_pipeline"] == {
        "count": 3,
        "value": 110_000.0,
        "amount_unknown": 0,
    }


def test_several_currencies_and_no_corporate_one_is_refused(tmp_path: Path, cli: CliRunner) -> None:
    rates = RATES.replace("USD,1,,true\n", "")
    result = cli.invoke(
        app, ["load", str(_export(tmp_path / "e", rates=rates)), "--db", str(tmp_path / "x.duckdb")]
    )
    assert result.exit_code == 1
    assert "4 currencies (COP, MXN, PEN, USD)" in result.output
    assert "--currency" in result.output


def test_one_corporate_currency_per_store(store: Path, tmp_path: Path, cli: CliRunner) -> None:
    before = store.read_bytes()
    result = cli.invoke(
        app, ["load", str(_export(tmp_path / "e")), "--db", str(store), "--currency", "EUR"]
    )
    assert result.exit_code == 1
    assert "--currency says EUR" in result.output and "the store says USD" in result.output
    assert store.read_bytes() == before
    # the store's corporate currency holds for an export that names none
    eur = RATES.replace("USD,1,,true", "EUR,0.9,,")
    result = cli.invoke(app, ["load", str(_export(tmp_path / "f", rates=eur)), "--db", str(store)])
    assert result.exit_code == 0, result.output


def test_a_corporate_rate_other_than_one_is_refused(tmp_path: Path, cli: CliRunner) -> None:
    rates = RATES + "USD,1.1,2024-03-01,\n"
    result = cli.invoke(
        app, ["load", str(_export(tmp_path / "e", rates=rates)), "--db", str(tmp_path / "x.duckdb")]
    )
    assert result.exit_code == 1
    assert "USD is the corporate currency: its rate must be 1" in result.output


def test_a_bad_currency_option_or_code_is_refused(tmp_path: Path, cli: CliRunner) -> None:
    result = cli.invoke(app, ["load", str(tmp_path), "--currency", "dollars"])
    assert result.exit_code == 2 and "--currency: 'dollars' is not a currency code" in result.output
    deals = DEALS.replace("1000000,MXN", "1000000,Pesos")
    result = cli.invoke(
        app, ["load", str(_export(tmp_path / "e", deals=deals)), "--db", str(tmp_path / "x.duckdb")]
    )
    assert result.exit_code == 1 and "invalid currency code 'Pesos'" in result.output


# --- stores and exports without currencies --------------------------------------------------------
def test_a_single_currency_export_needs_no_rates(
    generated_tables: object, cfg: StageConfig
) -> None:
    from features.data.schema import CanonicalTables

    assert isinstance(generated_tables, CanonicalTables)
    when = pd.Timestamp("2025-06-30")
    states = deal_states_as_of(generated_tables, when, cfg)
    assert states["amount"].equals(states["amount_original"])
    assert states["currency"].isna().all()


def test_reloading_rates_is_idempotent_and_a_narrower_export_keeps_them(
    store: Path, tmp_path: Path, cli: CliRunner
) -> None:
    with Store(store) as s:
        rates = s.read("exchange_rates")
    assert len(rates) == 7
    out = _load(cli, _export(tmp_path / "again"), store)
    assert "exchange_rates +0" in out
    narrower = _export(tmp_path / "narrow", rates=None)
    _load(cli, narrower, store)
    with Store(store) as s:
        again = s.read("exchange_rates")
    pd.testing.assert_frame_equal(rates, again)


def test_a_store_from_before_currencies_is_read_and_upgraded(
    store: Path, tmp_path: Path, cli: CliRunner
) -> None:
    """A store written before this change (no exchange_rates, no currency columns) reads as one
    unnamed currency, and the next load adds what is missing."""
    con = duckdb.connect(str(store))
    con.execute("DROP TABLE exchange_rates")
    con.execute("ALTER TABLE deals DROP COLUMN currency")
    con.execute("ALTER TABLE deals DROP COLUMN entered_after_close")
    con.close()
    with Store(store) as s:
        tables = s.tables()
    assert tables.exchange_rates.empty and tables.deals["currency"].isna().all()
    assert not tables.deals["entered_after_close"].any()
    _load(cli, _export(tmp_path / "again"), store)
    assert _metrics(cli, store)["open_pipeline"] == {
        "count": 3,
        "value": 110_000.0,
        "amount_unknown": 0,
    }


# --- the conversion itself ------------------------------------------------------------------------
def _rates(rows: list[tuple[str, float, str | None]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["currency", "rate", "valid_from"])
    frame["valid_from"] = pd.to_datetime(frame["valid_from"]).astype("datetime64[us]")
    frame["is_corporate"] = frame["currency"] == "USD"
    return frame


def test_which_rate_applies() -> None:
    rates = _rates(
        [
            ("USD", 1.0, None),
            ("MXN", 17.0, "2024-01-01"),
            ("MXN", 20.0, "2024-07-01"),
            ("MXN", 19.0, None),
            ("COP", 4000.0, None),
        ]
    )
    cur = pd.Series(["MXN", "MXN", "MXN", "MXN", "COP"])
    at = pd.Series(
        pd.to_datetime(["2023-06-01", "2024-01-01", "2024-06-30", "2024-07-01", "2020-01-01"])
    )
    # before the first dated rate: that first rate (not the fixed one); then the one in force
    assert rates_at(cur, at, rates).tolist() == [17.0, 17.0, 17.0, 20.0, 4000.0]
    assert rates_at(pd.Series(["PEN"]), at[:1], rates)[0] != rates_at(cur, at, rates)[0]
    assert np.isnan(rates_at(pd.Series(["PEN"]), at[:1], rates)[0])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 700), st.floats(0.5, 5000)), min_size=1, max_size=8),
    st.integers(0, 700),
    st.floats(0.5, 5000),
)
def test_rates_starting_after_the_date_change_nothing(
    dated: list[tuple[int, float]], day: int, new_rate: float
) -> None:
    start = pd.Timestamp("2023-01-01")
    rows: list[tuple[str, float, str | None]] = [("USD", 1.0, None)] + [
        ("MXN", r, str((start + pd.Timedelta(days=d)).date())) for d, r in dated
    ]
    rates = _rates(rows).drop_duplicates(["currency", "valid_from"])
    when = start + pd.Timedelta(days=day)
    amounts, cur = pd.Series([1000.0]), pd.Series(["MXN"])
    before = to_corporate(amounts, cur, pd.Series([when]), rates)
    later = rates["valid_from"] > when
    if not (rates["valid_from"].dropna() <= when).any():
        return  # before every dated rate: the first one applies (its change may matter)
    changed = rates.assign(rate=rates["rate"].where(~later, new_rate))
    added = pd.concat(
        [changed, _rates([("MXN", new_rate, str((when + pd.Timedelta(days=1)).date()))])]
    )
    added = added.drop_duplicates(["currency", "valid_from"])
    for other in (changed, added):
        assert to_corporate(amounts, cur, pd.Series([when]), other).equals(before)


def test_a_hubspot_portal_in_two_currencies(tmp_path: Path, cli: CliRunner) -> None:
    """HubSpot exports each deal's currency but no rates: --currency and --rates give them."""
    fixtures = Path(__file__).parent / "fixtures"
    export = tmp_path / "hubspot"
    export.mkdir()
    deals = pd.read_csv(fixtures / "hubspot" / "all-deals.csv", dtype=str, keep_default_na=False)
    deals["Currency"] = ["EUR", "USD", "EUR", "EUR", "USD", "EUR", "EUR", "EUR"]
    deals.to_csv(export / "all-deals.csv", index=False)
    rates = tmp_path / "rates.csv"
    rates.write_text("currency,rate,valid_from\nUSD,1.25,2024-01-01\nUSD,1.10,2024-05-01\n")
    mapping = Path(__file__).resolve().parents[1] / "features/data/mappings/hubspot.yaml"
    db = tmp_path / "x.duckdb"
    refused = cli.invoke(app, ["load", str(export), "--mapping", str(mapping), "--db", str(db)])
    assert refused.exit_code == 1 and "2 currencies (EUR, USD)" in refused.output
    _run(cli, "load", str(export), "--mapping", str(mapping), "--db", str(db),
         "--exported-at", "2024-06-30", "--currency", "EUR", "--rates", str(rates))  # fmt: skip
    m = _metrics(cli, db, "2024-06-30")
    # open: 40,000 + 85,000/1.10 (USD) + 230,000 + 30,000 + 150,000/1.10 (USD) + Helix (no amount)
    assert m["currency"] == "EUR"
    assert m["open_pipeline"] == {
        "count": 6,
        "value": pytest.approx(300_000 + 235_000 / 1.10),
        "amount_unknown": 1,
    }
