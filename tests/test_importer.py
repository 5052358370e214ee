"""CRM export import: canonical and mapped (Salesforce, HubSpot) exports, derived history."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from features.data.importer import ImportProblem, ImportValidationError, read_export
from features.data.mapping import load_mapping
from features.data.schema import columns
from features.data.stages import load_stage_config
from tests.checks import missing

FIXTURES = Path(__file__).parent / "fixtures"
MAPPINGS = Path(__file__).resolve().parents[1] / "features" / "data" / "mappings"
SF = "0065g00000AAA0"  # Salesforce opportunity id prefix of the fixture


def _sf(n: int) -> str:
    return f"{SF}{n}AAA"


def _copy(tmp_path: Path, name: str, drop: tuple[str, ...] = ()) -> Path:
    dest = tmp_path / name
    shutil.copytree(FIXTURES / name, dest)
    for f in drop:
        (dest / f).unlink()
    return dest


def _edit(path: Path, change: Callable[[pd.DataFrame], pd.DataFrame | None]) -> None:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    out = change(frame)
    (frame if out is None else out).to_csv(path, index=False)


def _problems(path: Path, **kwargs: Any) -> list[ImportProblem]:
    with pytest.raises(ImportValidationError) as err:
        read_export(path, **kwargs)
    return err.value.problems


# --- canonical files ------------------------------------------------------------------------------
def test_canonical_export_reads_every_table() -> None:
    result = read_export(FIXTURES / "canonical")
    t = result.tables
    assert {name: len(f) for name, f in t.items()} == {
        "deals": 5,
        "stage_history": 12,
        "field_history": 3,
        "activities": 6,
        "stakeholders": 3,
        "targets": 3,
        "exchange_rates": 0,
    }
    deals = t.deals.set_index("deal_id")
    assert list(t.deals.columns[: len(columns("deals"))]) == columns("deals")
    # outcome empty in the file -> from the stage's kind; given outcomes kept
    assert deals.loc["D1", "outcome"] == "open" and deals.loc["D3", "outcome"] == "won"
    assert deals.loc["D4", "loss_reason"] == "competitor"
    assert (t.deals["history_source"] == "crm").all()
    # export time: the latest recorded timestamp (a stage change), same for every deal
    assert (t.deals["observed_at"] == pd.Timestamp("2024-05-20 11:00")).all()
    assert deals.loc["D1", "custom_buying_process"] == "RFQ, then board"
    assert t.deals["created_at"].dtype == "datetime64[us]"
    assert t.stage_history["derived"].dtype == bool and not t.stage_history["derived"].any()
    assert any("observed_at" in n for n in result.notes)


def test_exported_at_argument_sets_observed_at() -> None:
    when = datetime(2024, 6, 30, 20, 0, tzinfo=UTC)
    t = read_export(FIXTURES / "canonical", exported_at=when).tables
    assert (t.deals["observed_at"] == pd.Timestamp("2024-06-30 20:00")).all()


def test_parquet_files_read_like_csv(tmp_path: Path) -> None:
    export = _copy(tmp_path, "canonical")
    frame = pd.read_csv(export / "activities.csv", dtype=str)
    frame["occurred_at"] = pd.to_datetime(frame["occurred_at"])
    frame.to_parquet(export / "activities.parquet")
    (export / "activities.csv").unlink()
    t = read_export(export).tables
    assert len(t.activities) == 6
    assert t.activities["occurred_at"].dtype == "datetime64[us]"


def test_no_deals_file_is_a_problem(tmp_path: Path) -> None:
    export = _copy(tmp_path, "canonical", drop=("deals.csv",))
    problems = _problems(export)
    assert problems[0].file == "deals.csv" and "required" in problems[0].message


# --- bad input: every case names file, row and column ---------------------------------------------
def _set(row: int, column: str, value: str) -> Callable[[pd.DataFrame], None]:
    def change(frame: pd.DataFrame) -> None:
        frame.loc[row - 1, column] = value

    return change


@pytest.mark.parametrize(
    ("file", "change", "row", "column", "words"),
    [
        ("deals.csv", _set(2, "stage", "closing"), 2, "stage", "unknown stage 'closing'"),
        ("deals.csv", _set(3, "created_at", "2024-13-45"), 3, "created_at", "unparsable date"),
        ("deals.csv", _set(1, "amount", "-5"), 1, "amount", "negative amount"),
        ("deals.csv", _set(1, "amount", "lots"), 1, "amount", "not a number"),
        ("deals.csv", _set(2, "deal_id", "D1"), 2, "deal_id", "duplicate deal_id 'D1'"),
        ("deals.csv", _set(5, "forecast_category", "maybe"), 5, "forecast_category", "invalid"),
        ("deals.csv", _set(4, "loss_reason", "bad luck"), 4, "loss_reason", "invalid"),
        ("deals.csv", _set(4, "outcome", "won"), 4, "outcome", "contradicts"),
        ("deals.csv", _set(2, "owner", ""), 2, "owner", "empty value"),
        ("activities.csv", _set(4, "deal_id", "D99"), 4, "deal_id", "unknown deal 'D99'"),
        ("activities.csv", _set(2, "type", "lunch"), 2, "type", "invalid type 'lunch'"),
        ("activities.csv", _set(6, "activity_id", "A1"), 6, "activity_id", "duplicate"),
        ("stakeholders.csv", _set(3, "role", "boss"), 3, "role", "invalid role"),
        ("field_history.csv", _set(1, "field", "colour"), 1, "field", "invalid field"),
        ("stage_history.csv", _set(7, "stage", "won"), 7, "stage", "unknown stage 'won'"),
        ("stage_history.csv", _set(1, "deal_id", "DX"), 1, "deal_id", "unknown deal 'DX'"),
        ("targets.csv", _set(2, "quarter", "Q2-2024"), 2, "quarter", "invalid quarter"),
        ("targets.csv", _set(3, "scope", "region"), 3, "scope", "invalid scope"),
    ],
)
def test_bad_value_is_located(
    tmp_path: Path,
    file: str,
    change: Callable[[pd.DataFrame], None],
    row: int,
    column: str,
    words: str,
) -> None:
    export = _copy(tmp_path, "canonical")
    _edit(export / file, change)
    # strict: unmapped descriptive values (type 'lunch', role 'boss') are refused, not 'other'
    problems = _problems(export, strict=True)
    hits = [p for p in problems if p.file == file and p.row == row and p.column == column]
    assert hits, problems
    assert words in hits[0].message
    assert f"{file}, row {row} (line {row + 1}), column '{column}'" in str(hits[0])


def test_missing_required_column(tmp_path: Path) -> None:
    export = _copy(tmp_path, "canonical")
    _edit(export / "deals.csv", lambda f: f.drop(columns=["owner"]))
    problems = _problems(export)
    assert [(p.file, p.row, p.column) for p in problems] == [("deals.csv", None, "owner")]
    assert "missing required column" in problems[0].message


def test_all_problems_reported_at_once_and_printing_is_capped(tmp_path: Path) -> None:
    export = _copy(tmp_path, "canonical")
    _edit(export / "deals.csv", _set(2, "stage", "closing"))
    _edit(export / "activities.csv", lambda f: f.assign(type="lunch"))
    big = pd.DataFrame(
        {
            "activity_id": [f"X{i}" for i in range(60)],
            "deal_id": "D1",
            "type": "call",
            "occurred_at": [f"not a date {i}" for i in range(60)],  # 60 different problems
        }
    )
    _edit(export / "activities.csv", lambda f: pd.concat([f, big], ignore_index=True))
    with pytest.raises(ImportValidationError) as err:
        read_export(export, strict=True)
    problems = err.value.problems
    assert len(problems) == 1 + 6 + 60
    assert {p.file for p in problems} == {"deals.csv", "activities.csv"}
    text = str(err.value)
    # the six 'lunch' rows are one problem shown once with its count
    assert text.startswith("67 problems in the export (62 distinct)")
    assert "[6 rows: row 1 (line 2), row 2 (line 3)" in text
    assert "... and 12 more" in text
    assert text.count("\n  - ") == 50


def test_history_for_deals_already_in_the_store_is_accepted(tmp_path: Path) -> None:
    export = _copy(tmp_path, "canonical")
    _edit(export / "activities.csv", _set(1, "deal_id", "OLD-7"))
    assert _problems(export)[0].column == "deal_id"
    t = read_export(export, known_deal_ids={"OLD-7"}).tables
    assert "OLD-7" in set(t.activities["deal_id"])


# --- deals-only export: derive what is known, invent nothing --------------------------------------
def test_deals_only_export_derives_history_and_leaves_unknowns_unknown(tmp_path: Path) -> None:
    history = ("stage_history.csv", "field_history.csv", "activities.csv", "stakeholders.csv")
    export = _copy(tmp_path, "canonical", drop=history)
    # and no expected close date at all
    _edit(export / "deals.csv", lambda f: f.drop(columns=["expected_close_date"]))
    when = datetime(2024, 6, 1, 12, 0)
    result = read_export(export, exported_at=when)
    t = result.tables
    assert (t.deals["history_source"] == "derived").all()
    assert t.deals["expected_close_date"].isna().all()
    assert t.field_history.empty and t.activities.empty and t.stakeholders.empty
    sh = t.stage_history
    assert sh["derived"].all()
    by_deal = {d: g.sort_values("entered_at") for d, g in sh.groupby("deal_id")}
    # open deal: stage unknown at creation, seen in its current stage at export time
    d1 = by_deal["D1"]
    assert d1["stage"].isna().tolist() == [True, False]
    assert d1["entered_at"].tolist() == [pd.Timestamp("2024-01-10 09:00"), pd.Timestamp(when)]
    assert d1["stage"].iloc[1] == "negotiation"
    # first open stage: still not known to be the stage at creation
    assert by_deal["D2"]["stage"].iloc[0] is pd.NA or pd.isna(by_deal["D2"]["stage"].iloc[0])
    # closed deal: the closed stage at closed_at
    d3 = by_deal["D3"]
    assert d3["stage"].iloc[-1] == "closed_won"
    assert d3["entered_at"].iloc[-1] == pd.Timestamp("2024-04-22")
    assert len(sh) == 2 * len(t.deals)
    assert any("derived" in n for n in result.notes)


def test_observed_at_is_the_latest_happening_never_a_close_or_planned_date(tmp_path: Path) -> None:
    export = _copy(tmp_path, "canonical", drop=("stage_history.csv", "field_history.csv"))
    result = read_export(export)
    t = result.tables
    # the latest creation (D5) or stakeholder added: not a close date (D4 closed 2024-05-10),
    # next_step_date, expected_close_date or an activity (a meeting may be planned)
    when = pd.Timestamp("2024-03-15 11:00")
    assert (t.deals["observed_at"] == when).all()
    # a deals-only export without modification dates: D3 and D4 closed "after the export", so
    # they are closed by then; the note says what to do if the estimate is wrong
    deals = t.deals.set_index("deal_id")
    assert deals.loc["D3", "closed_at"] == when and deals.loc["D4", "closed_at"] == when
    assert deals.loc["D4", "expected_close_date"] == pd.Timestamp("2024-05-31")
    note = next(n for n in result.notes if "close date after the export" in n)
    assert "2 closed deals" in note and "the export time (2)" in note and "--exported-at" in note


def test_observed_at_counts_modifications_and_a_close_after_it_is_its_last_modification(
    tmp_path: Path,
) -> None:
    export = _copy(tmp_path, "canonical", drop=("stage_history.csv", "field_history.csv"))

    def modified(frame: pd.DataFrame) -> None:
        frame["modified_at"] = ["2024-06-01T10:00:00", "", "2024-05-02T08:00:00", "", ""]
        frame.loc[2, "closed_at"] = "2024-09-30T00:00:00"  # D3 closed with a future close date

    _edit(export / "deals.csv", modified)
    result = read_export(export)
    deals = result.tables.deals.set_index("deal_id")
    assert (deals["observed_at"] == pd.Timestamp("2024-06-01 10:00")).all()
    assert "modified_at" not in deals.columns  # read, not stored
    assert deals.loc["D3", "closed_at"] == pd.Timestamp("2024-05-02 08:00")  # last modification
    assert deals.loc["D4", "closed_at"] == pd.Timestamp("2024-05-10")  # before the export: kept
    note = next(n for n in result.notes if "close date after the export" in n)
    assert "1 closed deals" in note and "its last modification (1)" in note


# --- Salesforce -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def salesforce() -> Any:
    return read_export(FIXTURES / "salesforce", mapping=load_mapping(MAPPINGS / "salesforce.yaml"))


def test_salesforce_deals_mapped(salesforce: Any) -> None:
    deals = salesforce.tables.deals.set_index("deal_id")
    assert len(deals) == 8
    assert deals.loc[_sf(1), "stage"] == "qualification"
    assert deals.loc[_sf(3), "stage"] == "proposal"
    assert deals.loc[_sf(7), "stage"] == "needs_analysis"  # Id. Decision Makers
    assert deals.loc[_sf(4), "forecast_category"] == "commit"
    assert deals.loc[_sf(5), "outcome"] == "won" and deals.loc[_sf(6), "outcome"] == "lost"
    assert deals.loc[_sf(6), "loss_reason"] == "price"
    # naive UTC from 2024-03-05T14:22:10.000+0000
    assert deals.loc[_sf(1), "created_at"] == pd.Timestamp("2024-03-05 14:22:10")
    assert deals["created_at"].dt.tz is None
    # CloseDate: the actual close date of closed deals only
    assert deals.loc[_sf(5), "closed_at"] == pd.Timestamp("2024-05-15")
    assert pd.isna(deals.loc[_sf(1), "closed_at"])
    assert deals.loc[_sf(1), "expected_close_date"] == pd.Timestamp("2024-09-30")
    # closed on its creation day: not "closed before created"
    assert deals.loc[_sf(8), "closed_at"] == pd.Timestamp("2024-06-03")
    assert deals.loc[_sf(2), "custom_lead_source"] == "Trade Show"
    assert deals.loc[_sf(1), "owner"] == "0055g00000USR01AAA"
    assert (deals["history_source"] == "crm").all()


def test_salesforce_history_collapsed_to_stage_changes(salesforce: Any) -> None:
    sh = salesforce.tables.stage_history
    d2 = sh[sh["deal_id"] == _sf(2)].sort_values("entered_at")
    # Prospecting and Qualification both map to qualification: one row, at the first
    assert d2["stage"].tolist() == ["qualification", "needs_analysis"]
    assert d2["entered_at"].iloc[0] == pd.Timestamp("2024-02-12 09:05")
    d3 = sh[sh["deal_id"] == _sf(3)].sort_values("entered_at")
    # the Amount-only snapshot row (2024-03-01, still Needs Analysis) is gone
    assert d3["stage"].tolist() == ["qualification", "needs_analysis", "proposal"]
    assert not sh["derived"].any()
    assert any("collapsed 3" in n for n in salesforce.notes)


def test_salesforce_field_history_keeps_mapped_fields_only(salesforce: Any) -> None:
    fh = salesforce.tables.field_history
    assert sorted(fh["field"].unique()) == [
        "amount",
        "expected_close_date",
        "forecast_category",
        "next_step",
    ]
    fc = fh[fh["field"] == "forecast_category"].iloc[0]
    assert (fc["old_value"], fc["new_value"]) == ("pipeline", "best_case")
    close = fh[(fh["field"] == "expected_close_date") & (fh["deal_id"] == _sf(3))].iloc[0]
    assert close["new_value"] == "2024-07-31"
    note = next(n for n in salesforce.notes if "unmapped fields" in n)
    assert "dropped 3" in note and "Owner: 1" in note


def test_salesforce_task_and_event_merged(salesforce: Any) -> None:
    acts = salesforce.tables.activities.set_index("activity_id")
    # Task subtype Task is skipped; the task on an account (WhatId 001...) is dropped
    assert len(acts) == 7
    assert acts.loc["00T5g00000TSK01AAA", "type"] == "call"
    assert acts.loc["00T5g00000TSK06AAA", "type"] == "email"  # ListEmail
    assert (acts.loc[acts.index.str.startswith("00U"), "type"] == "meeting").all()
    assert acts.loc["00U5g00000EVT01AAA", "occurred_at"] == pd.Timestamp("2024-03-15 13:00")
    assert "00T5g00000TSK03AAA" not in acts.index and "00T5g00000TSK05AAA" not in acts.index
    assert any("dropped 1 activities" in n for n in salesforce.notes)


def test_salesforce_contact_roles_mapped(salesforce: Any) -> None:
    st = salesforce.tables.stakeholders
    roles = dict(zip(st["contact_id"], st["role"], strict=True))
    assert roles["0035g00000CON03AAA"] == "decision_maker"
    assert roles["0035g00000CON09AAA"] == "finance"  # Economic Buyer
    assert roles["0035g00000CON10AAA"] == "engineering"  # Technical Buyer
    assert roles["0035g00000CON02AAA"] == "other"  # Role left empty in Salesforce


def test_salesforce_errors_name_the_users_columns(tmp_path: Path) -> None:
    export = _copy(tmp_path, "salesforce")
    _edit(export / "Opportunity.csv", _set(2, "StageName", "Closed Maybe"))
    _edit(export / "OpportunityHistory.csv", _set(4, "CreatedDate", "20/03/2024 10:00"))
    problems = _problems(export, mapping=load_mapping(MAPPINGS / "salesforce.yaml"))
    located = {(p.file, p.row, p.column) for p in problems}
    assert located == {
        ("Opportunity.csv", 2, "StageName"),
        ("OpportunityHistory.csv", 4, "CreatedDate"),
    }
    assert any("expected ISO 8601" in p.message for p in problems)


def test_salesforce_own_stages(tmp_path: Path) -> None:
    """A mapping variant without the stage map, loaded with Salesforce's own stage config."""
    data = yaml.safe_load((MAPPINGS / "salesforce.yaml").read_text())
    del data["stages"]
    variant = tmp_path / "salesforce-own-stages.yaml"
    variant.write_text(yaml.safe_dump(data))
    stages = load_stage_config(MAPPINGS / "salesforce-stages.yaml")
    result = read_export(FIXTURES / "salesforce", mapping=load_mapping(variant), stages=stages)
    deals = result.tables.deals.set_index("deal_id")
    assert deals.loc[_sf(3), "stage"] == "proposal_price_quote"
    assert deals.loc[_sf(7), "stage"] == "id_decision_makers"
    assert deals.loc[_sf(5), "outcome"] == "won"
    sh = result.tables.stage_history
    d2 = sh[sh["deal_id"] == _sf(2)].sort_values("entered_at")
    # SF's own stages: Prospecting and Qualification stay distinct
    assert d2["stage"].tolist() == ["prospecting", "qualification", "needs_analysis"]
    # the seed mapping would have been wrong here: its keys are not all SF stage keys
    with pytest.raises(ImportValidationError, match="unknown stage"):
        read_export(
            FIXTURES / "salesforce",
            mapping=load_mapping(MAPPINGS / "salesforce.yaml"),
            stages=stages,
        )


def test_salesforce_opportunities_only_loads_as_derived(tmp_path: Path) -> None:
    others = ("OpportunityHistory.csv", "OpportunityFieldHistory.csv", "Task.csv", "Event.csv")
    export = _copy(tmp_path, "salesforce", drop=(*others, "OpportunityContactRole.csv"))
    result = read_export(export, mapping=load_mapping(MAPPINGS / "salesforce.yaml"))
    assert (result.tables.deals["history_source"] == "derived").all()
    assert result.tables.field_history.empty
    assert any("Task.csv not in the export" in n for n in result.notes)


# --- HubSpot --------------------------------------------------------------------------------------
def test_hubspot_deals_export() -> None:
    result = read_export(FIXTURES / "hubspot", mapping=load_mapping(MAPPINGS / "hubspot.yaml"))
    deals = result.tables.deals.set_index("deal_id")
    assert len(deals) == 8
    assert deals.loc["9001", "stage"] == "qualification"
    assert deals.loc["9004", "stage"] == "negotiation"
    assert deals.loc["9006", "outcome"] == "won" and deals.loc["9007", "outcome"] == "lost"
    assert deals.loc["9003", "forecast_category"] == "best_case"
    assert deals.loc["9007", "forecast_category"] == "omitted"
    assert deals.loc["9001", "created_at"] == pd.Timestamp("2024-03-05 14:22")
    assert deals.loc["9006", "closed_at"] == pd.Timestamp("2024-05-15")
    assert missing(deals.loc["9008", "amount"]) and missing(
        deals.loc["9008", "expected_close_date"]
    )
    assert deals.loc["9001", "owner"] == "Anna de Vries"
    assert deals.loc["9007", "custom_closed_lost_reason"] == "Went with competitor"
    assert (deals["history_source"] == "derived").all()
    sh = result.tables.stage_history
    assert sh["derived"].all()
    assert result.tables.field_history.empty


def test_hubspot_time_zone_and_glob(tmp_path: Path) -> None:
    export = _copy(tmp_path, "hubspot")
    (export / "all-deals.csv").rename(export / "hubspot-crm-exports-all-deals-2024-06-30.csv")
    mapping = load_mapping(MAPPINGS / "hubspot.yaml")
    deals_map = mapping.tables["deals"]
    source = deals_map.sources[0].model_copy(update={"file": "*all-deals*.csv"})
    mapping = mapping.model_copy(
        update={
            "timezone": "Europe/Amsterdam",
            "tables": {"deals": deals_map.model_copy(update={"sources": [source]})},
        }
    )
    deals = read_export(export, mapping=mapping).tables.deals.set_index("deal_id")
    # 03/05/2024 14:22 in Amsterdam (CET, UTC+1) is 13:22 UTC
    assert deals.loc["9001", "created_at"] == pd.Timestamp("2024-03-05 13:22")


def test_hubspot_deal_id_alternative_column(tmp_path: Path) -> None:
    export = _copy(tmp_path, "hubspot")
    _edit(export / "all-deals.csv", lambda f: f.rename(columns={"Record ID": "Deal ID"}))
    t = read_export(export, mapping=load_mapping(MAPPINGS / "hubspot.yaml")).tables
    assert "9005" in set(t.deals["deal_id"])


def test_hubspot_bad_date_names_row_and_column(tmp_path: Path) -> None:
    export = _copy(tmp_path, "hubspot")
    _edit(export / "all-deals.csv", _set(3, "Create Date", "2024-01-08"))
    problems = _problems(export, mapping=load_mapping(MAPPINGS / "hubspot.yaml"))
    assert [(p.file, p.row, p.column) for p in problems] == [("all-deals.csv", 3, "Create Date")]
    assert "'%m/%d/%Y %H:%M'" in problems[0].message


# --- helpers for the tests below ------------------------------------------------------------------
def _sf_mapping() -> Any:
    return load_mapping(MAPPINGS / "salesforce.yaml")


def _changes(result: Any, deal: str, field: str) -> list[tuple[str | None, str | None, str]]:
    """(old, new, when) of one deal's changes of one field, oldest first."""
    fh = result.tables.field_history
    rows = fh[(fh["deal_id"] == deal) & (fh["field"] == field)].sort_values("changed_at")
    return [
        (None if pd.isna(o) else o, None if pd.isna(n) else n, str(t))
        for o, n, t in zip(rows["old_value"], rows["new_value"], rows["changed_at"], strict=True)
    ]


def _canonical_mapping(**extra: Any) -> Any:
    """A mapping that names the canonical files' own columns, plus ``extra`` top-level keys."""
    from features.data.mapping import parse_mapping

    deals = pd.read_csv(FIXTURES / "canonical" / "deals.csv", nrows=0).columns
    cols = {c: c for c in deals if c in columns("deals")}
    data = {"tables": {"deals": {"sources": [{"file": "deals.csv"}], "columns": cols}}, **extra}
    return parse_mapping(data)


def _where(problems: list[ImportProblem]) -> set[tuple[str, int | None, str | None]]:
    return {(p.file, p.row, p.column) for p in problems}


# --- snapshot tables: the history exports do carry (issue 6.2) ------------------------------------
def test_snapshot_table_gives_dated_changes_from_creation(salesforce: Any) -> None:
    # deal 5 has no row in OpportunityFieldHistory: every change comes from OpportunityHistory
    assert _changes(salesforce, _sf(5), "forecast_category") == [
        (None, "pipeline", "2023-11-20 10:00:00"),  # the value at creation, as a dated change
        ("pipeline", "best_case", "2024-02-01 10:00:00"),
        ("best_case", "closed", "2024-05-15 15:00:00"),
    ]
    assert _changes(salesforce, _sf(5), "expected_close_date") == [
        (None, "2024-05-31", "2023-11-20 10:00:00"),
        ("2024-05-31", "2024-05-15", "2024-05-15 15:00:00"),
    ]
    # the amount never changed: only its creation value
    assert _changes(salesforce, _sf(5), "amount") == [(None, "150000.0", "2023-11-20 10:00:00")]
    assert any("field changes derived from 18 snapshot rows" in n for n in salesforce.notes)


def test_snapshot_changes_also_in_field_history_are_counted_once(salesforce: Any) -> None:
    # OpportunityFieldHistory logs the amount change at 08:00:01, OpportunityHistory at 08:00:00
    assert _changes(salesforce, _sf(3), "amount") == [
        (None, "200000.0", "2024-01-08 08:00:00"),
        ("200000.0", "240000.0", "2024-03-01 08:00:01"),
    ]
    assert _changes(salesforce, _sf(2), "amount") == [
        (None, "60000.0", "2024-02-12 09:05:00"),
        ("60000.0", "82000.0", "2024-03-20 10:00:00"),
    ]
    assert _changes(salesforce, _sf(4), "expected_close_date") == [
        (None, "2024-03-31", "2023-12-01 16:45:30"),
        ("2024-03-31", "2024-07-15", "2024-05-06 09:00:00"),
    ]
    fh = salesforce.tables.field_history
    assert not fh.duplicated(["deal_id", "field", "new_value"]).any()
    assert any("5 changes found both" in n for n in salesforce.notes)


def test_snapshot_history_keeps_final_values_out_of_earlier_dates(salesforce: Any) -> None:
    """Deal 5 closed won; on 1 March it was best case, expected to close on 31 May."""
    from features.signals.pointintime import deal_states

    states = deal_states(salesforce.tables, pd.Timestamp("2024-03-01"), load_stage_config())
    d5 = states.set_index("deal_id").loc[_sf(5)]
    assert d5["forecast_category"] == "best_case"  # not its final 'closed'
    assert d5["expected_close_date"] == pd.Timestamp("2024-05-31")  # not the actual close date


def test_snapshot_previous_value_columns_are_used_when_exported(tmp_path: Path) -> None:
    export = _copy(tmp_path, "salesforce")

    def add_previous(f: pd.DataFrame) -> None:
        f["PrevAmount"] = ""
        f["FromForecastCategory"] = ""
        # deal 1's history starts after a change that the export no longer holds
        f.loc[f["Id"] == "0085g00000HIS01AAA", ["PrevAmount", "FromForecastCategory"]] = [
            "45000.00",
            "Omitted",
        ]
        # deal 4's second row holds its first row's amount, yet the CRM says it changed
        f.loc[f["Id"] == "0085g00000HIS10AAA", "PrevAmount"] = "29000.00"

    _edit(export / "OpportunityHistory.csv", add_previous)
    result = read_export(export, mapping=_sf_mapping())
    assert _changes(result, _sf(1), "amount") == [("45000.0", "50000.0", "2024-03-05 14:22:10")]
    assert _changes(result, _sf(1), "forecast_category")[0] == (
        "omitted",
        "pipeline",
        "2024-03-05 14:22:10",
    )
    assert _changes(result, _sf(4), "amount") == [
        (None, "31000.0", "2023-12-01 16:45:30"),
        ("29000.0", "31000.0", "2024-05-06 09:00:00"),
    ]


def test_snapshot_file_problems_name_its_own_columns(tmp_path: Path) -> None:
    export = _copy(tmp_path, "salesforce")
    _edit(export / "OpportunityHistory.csv", _set(5, "Amount", "a lot"))
    _edit(export / "OpportunityHistory.csv", _set(6, "CloseDate", "30/06/2024"))
    problems = _problems(export, mapping=_sf_mapping())
    assert _where(problems) == {
        ("OpportunityHistory.csv", 5, "Amount"),
        ("OpportunityHistory.csv", 6, "CloseDate"),
    }


# --- forgiving mappings, strict where it matters (issue 6.5) --------------------------------------
def test_values_match_case_and_space_insensitively_and_canonical_values_need_no_entry(
    tmp_path: Path,
) -> None:
    export = _copy(tmp_path, "salesforce")

    def change(f: pd.DataFrame) -> None:
        f.loc[5, "Loss_Reason__c"] = "Fit"  # the mapping lists 'No Fit'; 'fit' is canonical
        f.loc[2, "ForecastCategoryName"] = "  best   CASE "
        f.loc[3, "ForecastCategoryName"] = "Commit"

    _edit(export / "Opportunity.csv", change)
    result = read_export(export, mapping=_sf_mapping())
    deals = result.tables.deals.set_index("deal_id")
    assert deals.loc[_sf(6), "loss_reason"] == "fit"
    assert deals.loc[_sf(3), "forecast_category"] == "best_case"
    assert deals.loc[_sf(4), "forecast_category"] == "commit"
    assert not any("not a deals" in n for n in result.notes)


def _with_lost_deals(export: Path, n: int, reason: str) -> None:
    def add(f: pd.DataFrame) -> pd.DataFrame:
        lost = pd.concat([f.iloc[[5]]] * n, ignore_index=True)
        lost["Id"] = [f"0065g0000LOST{i:04d}" for i in range(n)]
        lost["Loss_Reason__c"] = reason
        return pd.concat([f, lost], ignore_index=True)

    _edit(export / "Opportunity.csv", add)


def test_unmapped_picklist_value_is_kept_as_missing_with_one_note(tmp_path: Path) -> None:
    """The case that prompted it: one unlisted value refused a whole import in 320 lines."""
    export = _copy(tmp_path, "salesforce")
    _with_lost_deals(export, 320, "Budget")
    result = read_export(export, mapping=_sf_mapping())
    deals = result.tables.deals
    assert len(deals) == 328
    assert deals.loc[deals["deal_id"].str.contains("LOST"), "loss_reason"].isna().all()
    notes = [n for n in result.notes if "'Budget'" in n]
    assert len(notes) == 1, result.notes
    assert (
        "320 rows" in notes[0]
        and "Opportunity.csv rows 9, 10, 11, 12, 13 and 315 more" in (notes[0])
    )
    assert "column 'Loss_Reason__c'" in notes[0] and "stored as missing" in notes[0]
    assert (
        'add under tables.deals.values.loss_reason in the mapping:  "Budget": '
        "<competitor|status_quo|price|timing|fit>" in notes[0]
    )

    with pytest.raises(ImportValidationError) as err:
        read_export(export, mapping=_sf_mapping(), strict=True)
    assert len(err.value.problems) == 320
    text = str(err.value)
    assert text.startswith("320 problems in the export (1 distinct):")
    assert len(text.splitlines()) == 2  # one line for the 320 rows
    assert "[320 rows: row 9 (line 10), row 10 (line 11)" in text and "and 315 more]" in text


def test_unmapped_role_is_other_and_unmapped_activity_type_missing(tmp_path: Path) -> None:
    export = _copy(tmp_path, "salesforce")
    _edit(export / "OpportunityContactRole.csv", _set(1, "Role", "Procurement Lead"))
    _edit(export / "Task.csv", _set(1, "TaskSubtype", "Video Call"))
    result = read_export(export, mapping=_sf_mapping())
    roles = result.tables.stakeholders.set_index("contact_id")["role"]
    assert roles["0035g00000CON03AAA"] == "other"
    acts = result.tables.activities.set_index("activity_id")
    assert missing(acts.loc["00T5g00000TSK01AAA", "type"])  # kept: it still is an activity
    assert any("'Procurement Lead'" in n and "stored as 'other'" in n for n in result.notes)
    assert any("'Video Call'" in n and "stored as missing" in n for n in result.notes)


def test_mapped_segment_outside_its_map_is_other(tmp_path: Path) -> None:
    mapping = _canonical_mapping()
    deals_map = mapping.tables["deals"].model_copy(
        update={"values": {"segment": {"automotive": "Automotive", "food": "Food"}}}
    )
    mapping = mapping.model_copy(update={"tables": {"deals": deals_map}})
    export = _copy(tmp_path, "canonical")
    deals = read_export(export, mapping=mapping).tables.deals.set_index("deal_id")
    assert deals["segment"].to_dict() == {
        "D1": "Automotive",
        "D2": "Food",
        "D3": "Automotive",
        "D4": "other",
        "D5": "other",
    }
    with pytest.raises(ImportValidationError, match="invalid segment 'energy'"):
        read_export(export, mapping=mapping, strict=True)


def test_stages_ids_dates_and_amounts_still_refuse_without_strict(tmp_path: Path) -> None:
    export = _copy(tmp_path, "canonical")
    _edit(export / "deals.csv", _set(1, "stage", "Closing"))
    _edit(export / "deals.csv", _set(2, "created_at", "yesterday"))
    _edit(export / "deals.csv", _set(3, "amount", "lots"))
    _edit(export / "deals.csv", _set(4, "deal_id", "  "))
    _edit(export / "targets.csv", _set(1, "scope", "region"))
    problems = _problems(export)
    assert _where(problems) >= {
        ("deals.csv", 1, "stage"),
        ("deals.csv", 2, "created_at"),
        ("deals.csv", 3, "amount"),
        ("deals.csv", 4, "deal_id"),
        ("targets.csv", 1, "scope"),
    }
    stage = next(p for p in problems if p.column == "stage")
    assert "unknown stage 'Closing'" in stage.message
    assert 'stages:  "Closing": <qualification|' in stage.message


# --- readable errors (issue 7.1) ------------------------------------------------------------------
def test_import_error_is_a_pipecast_data_import_error() -> None:
    from features.errors import DataImportError, PipecastError

    err = ImportValidationError([ImportProblem("deals.csv", 1, "stage", "unknown stage 'x'", 2)])
    assert isinstance(err, DataImportError) and isinstance(err, PipecastError)
    assert err.problems[0].line == 2
    assert str(
        err
    ) == "1 problem in the export:\n  - deals.csv, row 1 (line 2), column 'stage': " + (
        "unknown stage 'x'"
    )


def test_problems_csv_holds_every_problem_and_defuses_formulas(tmp_path: Path) -> None:
    from features.data.importer import write_problems_csv

    problems = [
        ImportProblem("deals.csv", 3, "amount", "not a number: 'x'", 4),
        ImportProblem("=HYPERLINK(evil).csv", None, "@SUM(A1)", "-oops", None),
    ]
    out = tmp_path / "problems.csv"
    assert write_problems_csv(problems, out) == 2
    back = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(back.columns) == ["file", "row", "line", "column", "message"]
    assert back.iloc[0].tolist() == ["deals.csv", "3", "4", "amount", "not a number: 'x'"]
    assert back.iloc[1].tolist() == ["'=HYPERLINK(evil).csv", "", "", "'@SUM(A1)", "'-oops"]


def test_nothing_reported_echoes_control_characters(tmp_path: Path) -> None:
    export = _copy(tmp_path, "canonical")
    _edit(export / "deals.csv", _set(2, "stage", "\x1b[2J\x1b[31mwon"))
    _edit(export / "deals.csv", _set(3, "amount", "\x1b]0;pwned\x07" + "9" * 500))
    with pytest.raises(ImportValidationError) as err:
        read_export(export)
    text = str(err.value)
    assert "\x1b" not in text and "\x07" not in text
    assert "'\\x1b[2J\\x1b[31mwon'" in text
    assert "(510 characters)" in text  # a long value is cut short


# --- defects of the bad-input battery (issue 7.3) -------------------------------------------------
@pytest.mark.parametrize("kind", ["canonical", "hubspot"])
def test_deals_without_an_amount_column_load(tmp_path: Path, kind: str) -> None:
    """Defect 6: amount is optional, yet a deals file without it crashed the import."""
    export = _copy(tmp_path, kind)
    if kind == "canonical":
        _edit(export / "deals.csv", lambda f: f.drop(columns=["amount"]))
        kwargs: dict[str, Any] = {}
    else:
        _edit(export / "all-deals.csv", lambda f: f.drop(columns=["Amount"]))
        kwargs = {"mapping": load_mapping(MAPPINGS / "hubspot.yaml")}
    result = read_export(export, **kwargs)
    deals = result.tables.deals
    assert len(deals) > 0 and deals["amount"].isna().all() and deals["amount"].dtype == "float64"
    assert "amount" not in result.provided["deals"]


def test_naive_times_stay_in_the_mapping_zone_beside_offsets(tmp_path: Path) -> None:
    """Defect 7: one value with an offset made every naive value of the column UTC."""
    export = _copy(tmp_path, "canonical")
    _edit(export / "deals.csv", _set(2, "created_at", "2024-02-01T10:30:00+00:00"))
    _edit(export / "deals.csv", _set(5, "created_at", "2024-07-15T11:00:00"))
    mapping = _canonical_mapping(timezone="Europe/Berlin")
    created = read_export(export, mapping=mapping).tables.deals.set_index("deal_id")["created_at"]
    assert created["D1"] == pd.Timestamp("2024-01-10 08:00")  # 09:00 CET is 08:00 UTC
    assert created["D2"] == pd.Timestamp("2024-02-01 10:30")  # its own offset
    assert created["D5"] == pd.Timestamp("2024-07-15 09:00")  # 11:00 CEST is 09:00 UTC


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("inf", "not a finite amount"),
        ("-inf", "not a finite amount"),
        ("1e400", "not a finite amount"),
        ("nan", "not a number"),
        ("1e308", "is absurd (the limit is 1e+15)"),
        ("1000000000000000", "is absurd"),
    ],
)
def test_non_finite_and_absurd_amounts_are_refused(tmp_path: Path, value: str, words: str) -> None:
    """Defect 8: inf and 1e400 were accepted, then crashed `signals --json`."""
    export = _copy(tmp_path, "canonical")
    _edit(export / "deals.csv", _set(1, "amount", value))
    _edit(export / "targets.csv", _set(2, "amount", value))
    _edit(export / "field_history.csv", _set(1, "new_value", value))
    problems = _problems(export)
    assert _where(problems) == {
        ("deals.csv", 1, "amount"),
        ("targets.csv", 2, "amount"),
        ("field_history.csv", 1, "new_value"),
    }
    assert all(words in p.message for p in problems)


def test_amounts_just_below_the_bound_are_kept(tmp_path: Path) -> None:
    export = _copy(tmp_path, "canonical")
    _edit(export / "deals.csv", _set(1, "amount", "999999999999999"))
    deals = read_export(export).tables.deals.set_index("deal_id")
    assert deals.loc["D1", "amount"] == 999_999_999_999_999.0


def test_ids_are_trimmed(tmp_path: Path) -> None:
    """Defect 11: a trailing space in deal_id made a phantom second deal."""
    export = _copy(tmp_path, "canonical")
    _edit(export / "deals.csv", _set(1, "deal_id", "D1 "))
    _edit(export / "activities.csv", _set(2, "deal_id", " D1"))
    _edit(export / "deals.csv", _set(2, "owner", " ben  "))
    t = read_export(export).tables
    assert sorted(t.deals["deal_id"]) == ["D1", "D2", "D3", "D4", "D5"]
    assert set(t.activities["deal_id"]) == {"D1", "D2", "D3", "D5"}
    assert t.deals.set_index("deal_id").loc["D2", "owner"] == "ben"


def test_blank_ids_and_owners_are_refused(tmp_path: Path) -> None:
    export = _copy(tmp_path, "canonical")
    _edit(export / "deals.csv", _set(2, "owner", "   "))
    _edit(export / "activities.csv", _set(3, "activity_id", " "))
    problems = _problems(export)
    assert _where(problems) == {("deals.csv", 2, "owner"), ("activities.csv", 3, "activity_id")}
    assert {p.message for p in problems} == {"empty value"}


def test_empty_string_ids_in_parquet_are_refused(tmp_path: Path) -> None:
    export = _copy(tmp_path, "canonical", drop=("deals.csv",))
    deals = pd.read_csv(FIXTURES / "canonical" / "deals.csv", dtype=str, keep_default_na=False)
    deals.loc[2, "deal_id"] = ""
    deals.loc[3, "owner"] = ""
    deals.to_parquet(export / "deals.parquet")
    _edit(export / "stage_history.csv", lambda f: f[~f["deal_id"].isin(["D3"])])
    _edit(export / "activities.csv", lambda f: f[~f["deal_id"].isin(["D3"])])
    _edit(export / "stakeholders.csv", lambda f: f[~f["deal_id"].isin(["D3"])])
    problems = _problems(export)
    assert _where(problems) == {("deals.parquet", 3, "deal_id"), ("deals.parquet", 4, "owner")}
    assert all(p.line is None for p in problems)  # a Parquet file has rows, not lines
    assert "deals.parquet, row 3, column 'deal_id': empty value" in str(problems[0])


# --- CSV reading (defect 12) ----------------------------------------------------------------------
@pytest.mark.parametrize("size", [3_000_000, 20_000_000])
def test_a_field_of_several_megabytes_is_read(tmp_path: Path, size: int) -> None:
    export = _copy(tmp_path, "canonical")
    _edit(export / "deals.csv", _set(1, "next_step", "x" * size))
    deals = read_export(export).tables.deals.set_index("deal_id")
    assert len(str(deals.loc["D1", "next_step"])) == size


def test_lines_are_exact_after_a_field_spanning_lines(tmp_path: Path) -> None:
    export = _copy(tmp_path, "canonical")
    _edit(export / "deals.csv", _set(1, "next_step", "call\nthen visit\nthen quote"))
    _edit(export / "deals.csv", _set(3, "created_at", "not a date"))
    (p,) = _problems(export)
    # header line 1; row 1 on lines 2-4; row 2 on line 5; row 3 on line 6
    assert (p.row, p.line) == (3, 6)
    assert str(p).startswith("deals.csv, row 3 (line 6), column 'created_at'")


def test_rows_with_the_wrong_number_of_fields_are_located(tmp_path: Path) -> None:
    export = _copy(tmp_path, "canonical")
    text = (export / "activities.csv").read_text().splitlines()
    text[2] += ",extra"  # row 2
    text.insert(4, "")  # a blank line before row 4 moves the lines after it
    text[6] = "A5,D3"  # row 5, on line 7
    (export / "activities.csv").write_text("\n".join(text) + "\n")
    problems = _problems(export)
    assert [(p.file, p.row, p.line) for p in problems] == [
        ("activities.csv", 2, 3),
        ("activities.csv", 5, 7),
    ]
    assert "has 5 fields, the header has 4" in problems[0].message
    assert "has 2 fields, the header has 4" in problems[1].message


def test_a_semicolon_delimited_file_is_read(tmp_path: Path) -> None:
    export = _copy(tmp_path, "canonical")
    deals = pd.read_csv(export / "deals.csv", dtype=str, keep_default_na=False)
    deals.to_csv(export / "deals.csv", index=False, sep=";")
    result = read_export(export)
    assert result.tables.deals.set_index("deal_id").loc["D1", "custom_buying_process"] == (
        "RFQ, then board"
    )
    assert any("';' as the delimiter" in n for n in result.notes)


def test_a_duplicate_header_is_named_once_and_only_when_used(tmp_path: Path) -> None:
    export = _copy(tmp_path, "canonical")
    text = (export / "deals.csv").read_text().splitlines()
    lines = [text[0] + ",amount,notes,notes"] + [t + ",1,a,b" for t in text[1:]]
    (export / "deals.csv").write_text("\n".join(lines) + "\n")
    problems = _problems(export)
    assert len(problems) == 1
    assert problems[0].column == "amount" and "columns 8, 19" in problems[0].message
    # a repeated column the import does not read is no problem
    (export / "deals.csv").write_text(
        "\n".join([text[0] + ",notes,notes"] + [t + ",a,b" for t in text[1:]]) + "\n"
    )
    assert len(read_export(export).tables.deals) == 5


def test_a_header_spanning_lines_and_an_empty_file(tmp_path: Path) -> None:
    export = _copy(tmp_path, "canonical")
    lines = (export / "activities.csv").read_text().splitlines()
    lines[0] += ',"notes\n(free text)"'
    lines[1:] = [line + ",x" for line in lines[1:]]
    lines[3] = "A3,D1,proposal,soon,x"  # row 3: on line 5, after the two lines of the header
    (export / "activities.csv").write_text("\n".join(lines) + "\n")
    (export / "targets.csv").write_text("")
    problems = _problems(export)
    assert [(p.file, p.row, p.column, p.line) for p in problems] == [
        ("activities.csv", 3, "occurred_at", 5),
        ("targets.csv", None, None, None),
    ]
    assert problems[-1].message == "is empty: no header row"


@pytest.mark.parametrize("value", ["0001-01-01", "2300-01-01T10:00:00", "1899-12-31"])
def test_years_out_of_range_are_located(tmp_path: Path, value: str) -> None:
    export = _copy(tmp_path, "canonical")
    _edit(export / "stage_history.csv", _set(4, "entered_at", value))
    (p,) = _problems(export)
    assert (p.file, p.row, p.column, p.line) == ("stage_history.csv", 4, "entered_at", 5)
    assert "outside the years 1900-2199" in p.message


# --- encodings (issue 13.3, defect 12) ------------------------------------------------------------
def _reencode(path: Path, encoding: str, bom: bytes = b"") -> None:
    path.write_bytes(bom + path.read_text(encoding="utf-8").encode(encoding))


def _accented(export: Path) -> None:
    _edit(export / "deals.csv", _set(1, "account", "Müller Präzision"))
    _edit(export / "deals.csv", _set(2, "next_step", "Angebot – Señor Ñandú €"))


def test_a_windows_1252_file_is_read_with_a_note(tmp_path: Path) -> None:
    export = _copy(tmp_path, "canonical")
    _accented(export)
    _reencode(export / "deals.csv", "cp1252")
    result = read_export(export)
    deals = result.tables.deals.set_index("deal_id")
    assert deals.loc["D1", "account"] == "Müller Präzision"
    assert deals.loc["D2", "next_step"] == "Angebot – Señor Ñandú €"
    (note,) = [n for n in result.notes if "not UTF-8" in n]
    assert note.startswith("deals.csv is not UTF-8 (byte 0xFC on line 2): read as windows-1252")
    assert "--encoding" in note


def test_a_windows_1252_header_is_not_misread(tmp_path: Path) -> None:
    """Only the header is not UTF-8: the column is found under its own name."""
    export = _copy(tmp_path, "canonical")
    _edit(export / "deals.csv", lambda f: f.rename(columns={"custom_buying_process": "custom_año"}))
    _reencode(export / "deals.csv", "cp1252")
    result = read_export(export)
    assert "custom_año" in result.tables.deals.columns
    assert any("deals.csv is not UTF-8 (byte 0xF1 on line 1)" in n for n in result.notes)


def test_a_file_neither_utf8_nor_windows_1252_is_refused_naming_the_option(
    tmp_path: Path,
) -> None:
    export = _copy(tmp_path, "canonical")
    raw = (export / "deals.csv").read_bytes().replace(b"Bolt BV", b"Bolt \x81\xfc")
    (export / "deals.csv").write_bytes(raw)
    (p,) = _problems(export)
    assert p.file == "deals.csv" and "neither UTF-8" in p.message and "on line 3" in p.message
    assert "--encoding" in p.message and "encoding:" in p.message


@pytest.mark.parametrize(
    ("encoding", "bom"),
    [("utf-8", b"\xef\xbb\xbf"), ("utf-16-le", b"\xff\xfe"), ("utf-16-be", b"\xfe\xff")],
)
def test_files_with_a_byte_order_mark_are_read(tmp_path: Path, encoding: str, bom: bytes) -> None:
    export = _copy(tmp_path, "canonical")
    _accented(export)
    for f in export.glob("*.csv"):
        _reencode(f, encoding, bom)
    result = read_export(export)
    assert result.tables.deals.set_index("deal_id").loc["D1", "account"] == "Müller Präzision"
    assert len(result.tables.activities) == 6
    assert not any("encoding" in n or "ignored" in n for n in result.notes)


def test_utf16_without_a_bom_needs_the_option(tmp_path: Path) -> None:
    export = _copy(tmp_path, "canonical")
    _accented(export)
    _reencode(export / "deals.csv", "utf-16-le")
    (p,) = _problems(export)
    assert "looks like UTF-16 without a byte-order mark" in p.message and "--encoding" in p.message
    with pytest.raises(ImportValidationError):  # the other files are UTF-8: the option is global
        read_export(export, encoding="utf-16-le")
    for f in export.glob("*.csv"):
        if f.name != "deals.csv":
            _reencode(f, "utf-16-le")
    t = read_export(export, encoding="utf-16-le").tables
    assert t.deals.set_index("deal_id").loc["D1", "account"] == "Müller Präzision"


def test_ascii_utf16_without_a_bom_is_not_taken_for_utf8(tmp_path: Path) -> None:
    export = _copy(tmp_path, "canonical")
    _reencode(export / "activities.csv", "utf-16-le")  # valid UTF-8 too: a NUL every other byte
    (p,) = _problems(export)
    assert p.file == "activities.csv" and "looks like UTF-16" in p.message


def test_an_explicit_encoding_is_used_without_a_note(tmp_path: Path) -> None:
    export = _copy(tmp_path, "canonical")
    _edit(export / "deals.csv", _set(1, "account", "Ærø Œuvre"))
    _reencode(export / "deals.csv", "latin9")
    result = read_export(export, encoding="iso-8859-15")  # windows-1252 would misread Œ
    assert result.tables.deals.set_index("deal_id").loc["D1", "account"] == "Ærø Œuvre"
    assert not any("UTF-8" in n for n in result.notes)


def test_a_wrong_explicit_encoding_names_the_line(tmp_path: Path) -> None:
    export = _copy(tmp_path, "canonical")
    _accented(export)
    _reencode(export / "deals.csv", "cp1252")
    (p,) = _problems(export, encoding="utf-8")
    assert p.file == "deals.csv" and "not valid utf-8 text (byte 0xFC on line 2)" in p.message


def test_an_unknown_encoding_is_an_input_error(tmp_path: Path) -> None:
    from features.errors import InputError

    with pytest.raises(InputError, match="unknown text encoding 'klingon'"):
        read_export(FIXTURES / "canonical", encoding="klingon")


@pytest.mark.parametrize("where", ["top", "source"])
def test_the_mapping_names_the_encoding(tmp_path: Path, where: str) -> None:
    export = _copy(tmp_path, "hubspot")
    _edit(export / "all-deals.csv", _set(1, "Associated Company", "Société Générale"))
    _reencode(export / "all-deals.csv", "cp1252")
    mapping = load_mapping(MAPPINGS / "hubspot.yaml")
    if where == "top":
        mapping = mapping.model_copy(update={"encoding": "windows-1252"})
    else:
        deals_map = mapping.tables["deals"]
        source = deals_map.sources[0].model_copy(update={"encoding": "cp1252"})
        deals_map = deals_map.model_copy(update={"sources": [source]})
        mapping = mapping.model_copy(update={"tables": {"deals": deals_map}})
    result = read_export(export, mapping=mapping)
    assert result.tables.deals.set_index("deal_id").loc["9001", "account"] == "Société Générale"
    assert not any("not UTF-8" in n for n in result.notes)


# --- accepted with a note (defect 13) -------------------------------------------------------------
def test_events_after_the_export_and_activities_before_creation_are_noted(
    tmp_path: Path,
) -> None:
    export = _copy(tmp_path, "canonical")
    _edit(export / "activities.csv", _set(4, "occurred_at", "2024-01-15T08:00:00"))  # D2: 1 Feb
    result = read_export(export, exported_at=datetime(2024, 5, 5))
    notes = "\n".join(result.notes)
    assert (
        "1 closed deals have a close date after the export time (2024-05-05 00:00:00): taken as "
        "closed as of the export time (1); the close date stays the expected close date: "
        "deals.csv row 4"
    ) in notes
    assert "2 stage changes after the export time" in notes
    assert "stage_history.csv rows 10, 12" in notes
    after = "after the export time (2024-05-05 00:00:00)"
    assert f"1 field changes {after}: field_history.csv row 3" in notes
    assert "1 activities before their deal was created: activities.csv row 4" in notes


def test_terminal_codes_and_formulas_in_text_are_noted_not_echoed(tmp_path: Path) -> None:
    export = _copy(tmp_path, "canonical")
    _edit(export / "deals.csv", _set(1, "next_step", "\x1b[2J\x1b[31mcall now"))
    _edit(export / "deals.csv", _set(2, "competitor", "=cmd|' /C calc'!A0"))
    _edit(export / "deals.csv", _set(3, "competitor", "+31 20 555 0101"))  # a phone number
    result = read_export(export)
    deals = result.tables.deals.set_index("deal_id")
    assert deals.loc["D1", "next_step"] == "\x1b[2J\x1b[31mcall now"  # stored as given
    notes = "\n".join(result.notes)
    assert "1 values in column 'next_step' with terminal control characters" in notes
    assert "1 values in column 'competitor' with text starting like a spreadsheet formula" in notes
    assert "deals.csv row 2" in notes and "row 3" not in notes
    assert "\x1b" not in notes and "=cmd" not in notes


def test_a_mapping_stage_unknown_to_the_configuration_is_refused_or_noted(tmp_path: Path) -> None:
    data = yaml.safe_load((MAPPINGS / "salesforce.yaml").read_text())
    data["stages"]["Prospecting"] = "prospect"  # not a key of the default stages
    data["stages"]["Perception Analysis"] = "perception"  # not used by the fixture
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(data))
    problems = _problems(FIXTURES / "salesforce", mapping=load_mapping(path))
    assert {p.file for p in problems} == {"Opportunity.csv", "OpportunityHistory.csv"}
    assert all(
        "unknown stage 'prospect' (the mapping maps 'Prospecting' to it)" in p.message
        for p in problems
    )
    del data["stages"]["Prospecting"]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ImportValidationError):  # Prospecting is now neither mapped nor a label
        read_export(FIXTURES / "salesforce", mapping=load_mapping(path))
    data["stages"]["Prospecting"] = "qualification"
    path.write_text(yaml.safe_dump(data))
    result = read_export(FIXTURES / "salesforce", mapping=load_mapping(path))
    assert any("maps 'Perception Analysis' to 'perception'" in n for n in result.notes)


# --- ImportResult.provided: what the export carried -----------------------------------------------
def test_provided_names_the_columns_the_export_carried(tmp_path: Path) -> None:
    export = _copy(tmp_path, "canonical", drop=("targets.csv",))
    _edit(export / "deals.csv", lambda f: f.drop(columns=["team", "loss_reason", "outcome"]))
    result = read_export(export)
    deals = result.provided["deals"]
    assert {"team", "loss_reason"}.isdisjoint(deals)
    # outcome from the stage, export time and history source: derived from what was provided
    assert {"deal_id", "stage", "outcome", "observed_at", "history_source"} <= deals
    assert "custom_buying_process" in deals
    assert result.provided["stage_history"] == {"deal_id", "stage", "entered_at", "derived"}
    assert result.provided["targets"] == frozenset()
    assert set(result.provided) == set(columns_by_table())


def columns_by_table() -> list[str]:
    from features.data.schema import CanonicalTables

    return list(CanonicalTables.TABLES)


def test_provided_with_a_mapping(tmp_path: Path) -> None:
    export = _copy(tmp_path, "salesforce", drop=("OpportunityFieldHistory.csv",))
    _edit(export / "Opportunity.csv", lambda f: f.drop(columns=["Loss_Reason__c"]))
    result = read_export(export, mapping=_sf_mapping())
    assert "loss_reason" not in result.provided["deals"]  # named by the mapping, absent here
    assert {"amount", "forecast_category", "custom_lead_source"} <= result.provided["deals"]
    assert "type" in result.provided["activities"]  # Task's column and Event's constant
    assert "role" in result.provided["stakeholders"]  # a default in the mapping
    # the snapshot table alone gives field history
    assert result.provided["field_history"] == {
        "deal_id",
        "field",
        "old_value",
        "new_value",
        "changed_at",
    }
    hub = read_export(FIXTURES / "hubspot", mapping=load_mapping(MAPPINGS / "hubspot.yaml"))
    assert "team" not in hub.provided["deals"] and "forecast_category" in hub.provided["deals"]
    assert hub.provided["stage_history"] == {"deal_id", "stage", "entered_at", "derived"}


# --- the load command's import options ------------------------------------------------------------
def _cli(*args: str | Path) -> Any:
    from typer.testing import CliRunner

    from serving.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_load_problems_out_writes_every_problem(tmp_path: Path) -> None:
    export = _copy(tmp_path, "canonical")
    _edit(export / "activities.csv", lambda f: f.assign(occurred_at="soon"))
    out = tmp_path / "problems.csv"
    result = _cli("load", export, "--db", tmp_path / "x.duckdb", "--problems-out", out)
    assert result.exit_code == 1
    assert "[6 rows: row 1 (line 2)" in result.output and "wrote 6 problems" in result.output
    back = pd.read_csv(out, dtype=str)
    assert len(back) == 6 and back["row"].tolist() == [str(i) for i in range(1, 7)]
    assert back["line"].tolist() == [str(i) for i in range(2, 8)]
    assert set(back["column"]) == {"occurred_at"} and set(back["file"]) == {"activities.csv"}


def test_load_strict_and_encoding_options(tmp_path: Path) -> None:
    export = _copy(tmp_path, "canonical")
    _edit(export / "stakeholders.csv", _set(1, "role", "Sponsor"))
    _accented(export)
    _reencode(export / "deals.csv", "cp1252")
    db = tmp_path / "x.duckdb"
    strict = _cli("load", export, "--db", db, "--strict")
    assert strict.exit_code == 1 and "invalid role 'Sponsor'" in strict.output
    ok = _cli("load", export, "--db", db, "--encoding", "windows-1252")
    assert ok.exit_code == 0, ok.output
    assert "stored as 'other'" in ok.output and "not UTF-8" not in ok.output
    bad = _cli("load", export, "--db", tmp_path / "y.duckdb", "--encoding", "klingon")
    assert bad.exit_code == 2 and "unknown text encoding 'klingon'" in bad.output
    assert not (tmp_path / "y.duckdb").exists()


# --- the code stays in small named pieces (issue 8) -----------------------------------------------
def test_no_importer_function_is_longer_than_80_lines() -> None:
    import ast

    root = Path(__file__).resolve().parents[1] / "features" / "data"
    files = [*sorted((root / "importer").glob("*.py")), root / "mapping.py", root / "config.py"]
    long = []
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > 80:
                    long.append(f"{f.name}:{node.name} ({n} lines)")
    assert not long


# --- issue 13: deals entered after they closed, lookups, date alternatives, rates ---------------
def test_a_deal_closed_before_it_was_created_is_accepted_and_flagged(tmp_path: Path) -> None:
    export = _copy(tmp_path, "canonical")
    _edit(export / "deals.csv", _set(3, "closed_at", "2023-10-01"))  # D3 created 5 Nov 2023
    result = read_export(export)
    deals = result.tables.deals.set_index("deal_id")
    assert deals.loc["D3", "entered_after_close"]
    assert deals.loc["D3", "closed_at"] == pd.Timestamp("2023-10-01")  # a fact, kept
    assert not deals.drop(index="D3")["entered_after_close"].any()
    note = next(n for n in result.notes if "entered in the CRM after they closed" in n)
    assert note.startswith("1 deals were entered in the CRM after they closed (1 with a close")
    assert note.endswith("deals.csv row 3")


def test_a_deal_created_closed_is_flagged_and_never_open(tmp_path: Path) -> None:
    export = _copy(tmp_path, "canonical")

    def created_closed(frame: pd.DataFrame) -> pd.DataFrame:
        # D4's history starts in closed_lost at its creation; its close date is later
        d4 = frame["deal_id"] == "D4"
        frame.loc[d4 & (frame["stage"] == "qualification"), "stage"] = "closed_lost"
        return frame.loc[~(d4 & (frame["entered_at"] == "2024-05-10T00:00:00"))]

    _edit(export / "stage_history.csv", created_closed)
    deals = read_export(export).tables.deals.set_index("deal_id")
    assert deals.loc["D4", "entered_after_close"]
    d4 = deals.loc["D4"]
    assert d4["closed_at"] == d4["created_at"]  # closed when created


def test_the_salesforce_fixture_flags_its_deal_created_won(salesforce: Any) -> None:
    deals = salesforce.tables.deals.set_index("deal_id")
    assert deals["entered_after_close"].tolist() == [False] * 7 + [True]  # Helix: created won
    assert any("1 deals were entered in the CRM after they closed" in n for n in salesforce.notes)


def _users(export: Path, with_roles: bool = True) -> None:
    (export / "User.csv").write_text(
        "Id,FirstName,LastName,UserRoleId\n"
        "0055g00000USR01AAA,Anna,de Vries,00E1\n"
        "0055g00000USR02AAA,,Jansen,\n"
    )
    if with_roles:
        (export / "UserRole.csv").write_text("Id,Name\n00E1,Benelux\n")


def test_owners_and_teams_are_looked_up_in_user_and_role_files(tmp_path: Path) -> None:
    export = _copy(tmp_path, "salesforce")
    _users(export)
    result = read_export(export, mapping=load_mapping(MAPPINGS / "salesforce.yaml"))
    deals = result.tables.deals.set_index("deal_id")
    assert deals.loc[_sf(1), "owner"] == "Anna de Vries"  # "{FirstName} {LastName}"
    assert deals.loc[_sf(3), "owner"] == "Jansen"  # no first name: no stray space
    assert deals.loc[_sf(5), "owner"] == "0055g00000USR03AAA"  # not in User.csv: kept
    assert deals.loc[_sf(1), "team"] == "Benelux"
    assert deals["team"].isna()[[_sf(3), _sf(5)]].all()  # no role, unmatched: no team
    note = next(n for n in result.notes if n.startswith("deals.owner (OwnerId) looked up"))
    assert "6 rows found; 2 not found, kept as they are: Opportunity.csv rows 5, 6" in note


def test_a_missing_lookup_file_is_noted(tmp_path: Path) -> None:
    export = _copy(tmp_path, "salesforce")
    _users(export, with_roles=False)
    result = read_export(export, mapping=load_mapping(MAPPINGS / "salesforce.yaml"))
    deals = result.tables.deals
    assert deals["team"].isna().all() and deals["owner"].str.contains(" ").any()
    assert any("lookup of deals.team: User.csv (or a file it leads to)" in n for n in result.notes)


def test_date_formats_may_list_alternatives(tmp_path: Path) -> None:
    export = _copy(tmp_path, "hubspot")
    _edit(export / "all-deals.csv", _set(2, "Create Date", "02/12/2024"))  # no time of day
    _edit(export / "all-deals.csv", _set(3, "Create Date", "2024-01-08 08:00"))
    deals = read_export(export, mapping=load_mapping(MAPPINGS / "hubspot.yaml")).tables.deals
    created = deals.set_index("deal_id")["created_at"]
    assert created["9002"] == pd.Timestamp("2024-02-12") and created["9003"] == pd.Timestamp(
        "2024-01-08 08:00"
    )
    _edit(export / "all-deals.csv", _set(4, "Create Date", "Dec 1st"))
    problems = _problems(export, mapping=load_mapping(MAPPINGS / "hubspot.yaml"))
    assert "or '%m/%d/%Y' or '%Y-%m-%d %H:%M'" in problems[0].message


def test_salesforce_rates_since_always_and_currency_codes(tmp_path: Path) -> None:
    export = _copy(tmp_path, "salesforce")
    _edit(export / "Opportunity.csv", lambda f: f.assign(CurrencyIsoCode=["eur"] + ["USD"] * 7))
    (export / "CurrencyType.csv").write_text(
        "IsoCode,ConversionRate,IsCorporate\nUSD,1,1\nEUR,0.9,0\n"
    )
    (export / "DatedConversionRate.csv").write_text(
        "IsoCode,ConversionRate,StartDate,NextStartDate\nEUR,0.95,0001-01-01,2024-04-01\n"
        "EUR,0.92,2024-04-01,\n"
    )
    result = read_export(export, mapping=load_mapping(MAPPINGS / "salesforce.yaml"))
    rates = result.tables.exchange_rates.sort_values(["currency", "valid_from"])
    assert rates["valid_from"].dropna().min() == pd.Timestamp("1900-01-01")
    assert rates.loc[rates["is_corporate"], "currency"].tolist() == ["USD"]
    assert result.tables.deals["currency"].tolist() == ["EUR"] + ["USD"] * 7
