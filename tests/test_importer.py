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
        ("deals.csv", _set(3, "closed_at", "2023-01-01"), 3, "closed_at", "closed before created"),
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


def test_observed_at_defaults_to_latest_recorded_time_not_planned_dates(tmp_path: Path) -> None:
    export = _copy(tmp_path, "canonical", drop=("stage_history.csv", "field_history.csv"))
    t = read_export(export).tables
    # the latest creation/close/stakeholder time, not next_step_date or expected_close_date
    assert (t.deals["observed_at"] == pd.Timestamp("2024-05-10")).all()


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
    _edit(export / "OpportunityHistory.csv", _set(4, "CreatedDate", "2024-03-20 10:00"))
    problems = _problems(export, mapping=load_mapping(MAPPINGS / "salesforce.yaml"))
    located = {(p.file, p.row, p.column) for p in problems}
    assert located == {
        ("Opportunity.csv", 2, "StageName"),
        ("OpportunityHistory.csv", 4, "CreatedDate"),
    }
    assert any("'%Y-%m-%dT%H:%M:%S.%f%z'" in p.message for p in problems)


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
    assert pd.isna(deals.loc["9008", "amount"]) and pd.isna(
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
