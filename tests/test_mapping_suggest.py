"""``pipecast mapping suggest``: a mapping that loads once its marked values are filled in.

On the shipped fixtures nothing is left to fill in and the suggestion loads exactly what the
shipped mapping loads; on exports with custom stages, another file name and another date format,
only the values the suggestion cannot place are marked, and filling those in is all it takes.
(The Salesforce org of issue 13, with Spanish stages, is in ``test_salesforce_org.py``.)
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from features.data.config import ConfigError
from features.data.importer import read_export
from features.data.importer.suggest import suggest_mapping
from features.data.mapping import load_mapping, parse_mapping
from features.data.stages import StageConfig
from serving.cli import app

FIXTURES = Path(__file__).parent / "fixtures"
MAPPINGS = Path(__file__).resolve().parents[1] / "features" / "data" / "mappings"


def _write(tmp_path: Path, text: str, answers: dict[str, Any] | None = None) -> Path:
    data = yaml.safe_load(text)
    _fill(data, answers or {})
    path = tmp_path / "mapping.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def _fill(data: Any, answers: dict[str, Any]) -> None:
    if isinstance(data, dict):
        items: list[tuple[Any, Any]] = list(data.items())
    elif isinstance(data, list):
        items = list(enumerate(data))
    else:
        return
    for key, value in items:
        if value == "?":
            data[key] = answers[key]
        else:
            _fill(value, answers)


@pytest.mark.parametrize(("crm", "folder"), [("salesforce", "salesforce"), ("hubspot", "hubspot")])
def test_on_the_shipped_fixtures_nothing_to_fill_and_the_same_tables(
    tmp_path: Path, cfg: StageConfig, crm: str, folder: str
) -> None:
    suggestion = suggest_mapping(FIXTURES / folder, cfg)
    assert suggestion.crm == crm and suggestion.marks == []
    mapping = load_mapping(_write(tmp_path, suggestion.text))
    ours = read_export(FIXTURES / folder, mapping=mapping, stages=cfg).tables
    shipped = read_export(
        FIXTURES / folder, mapping=load_mapping(MAPPINGS / f"{crm}.yaml"), stages=cfg
    ).tables
    for (name, frame), (_, expected) in zip(ours.items(), shipped.items(), strict=True):
        pd.testing.assert_frame_equal(frame, expected, obj=name)


def _custom_hubspot(tmp_path: Path, day_first: bool = True) -> Path:
    """A HubSpot export with a custom pipeline, its dated file name and day/month dates."""
    export = tmp_path / "export"
    export.mkdir()
    frame = pd.read_csv(FIXTURES / "hubspot" / "all-deals.csv", dtype=str, keep_default_na=False)
    frame["Deal Stage"] = frame["Deal Stage"].replace(
        {"Presentation Scheduled": "Demo Given", "Contract Sent": "Verbal Yes"}
    )
    for col in ("Close Date", "Create Date"):
        stamps = pd.to_datetime(frame[col], format="%m/%d/%Y %H:%M", errors="coerce")
        fmt = "%d/%m/%Y %H:%M" if day_first else "%m/%d/%Y %H:%M"
        frame[col] = stamps.dt.strftime(fmt).fillna("")
    frame.to_csv(export / "hubspot-crm-exports-all-deals-2024-06-30.csv", index=False)
    return export


def test_custom_stages_are_marked_and_filling_them_in_loads(
    tmp_path: Path, cfg: StageConfig
) -> None:
    export = _custom_hubspot(tmp_path)
    suggestion = suggest_mapping(export, cfg)
    assert suggestion.crm == "hubspot"
    assert sorted(suggestion.marks) == ["stages.Demo Given", "stages.Verbal Yes"]
    data = yaml.safe_load(suggestion.text)
    assert data["tables"]["deals"]["sources"][0]["file"] == (
        "hubspot-crm-exports-all-deals-2024-06-30.csv"
    )
    assert data["tables"]["deals"]["dates"]["created_at"] == "%d/%m/%Y %H:%M"
    assert '"Demo Given": "?"  # 1 rows; one of qualification|' in suggestion.text or (
        'Demo Given: "?"  # 1 rows; one of qualification|' in suggestion.text
    )
    with pytest.raises(ConfigError, match=r"stages\.Demo Given: fill in"):
        load_mapping(_raw(tmp_path, suggestion.text))
    answers = {"Demo Given": "proposal", "Verbal Yes": "negotiation"}
    mapping = load_mapping(_write(tmp_path, suggestion.text, answers))
    deals = read_export(export, mapping=mapping, stages=cfg).tables.deals.set_index("deal_id")
    assert deals.loc["9003", "stage"] == "proposal" and deals.loc["9005", "stage"] == "negotiation"
    assert deals.loc["9003", "created_at"] == pd.Timestamp("2024-01-08 08:00")


def _raw(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "as-suggested.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_dates_are_fitted_or_marked_when_ambiguous(tmp_path: Path, cfg: StageConfig) -> None:
    export = tmp_path / "export"
    shutil.copytree(FIXTURES / "salesforce", export)
    frame = pd.read_csv(export / "Opportunity.csv", dtype=str, keep_default_na=False)
    frame["CreatedDate"] = "03/05/2024 14:22"  # 3 May or 5 March?
    frame["LastModifiedDate"] = "11/20/2024 09:00"  # only month/day reads it
    frame.to_csv(export / "Opportunity.csv", index=False)
    suggestion = suggest_mapping(export, cfg)
    assert suggestion.marks == ["tables.deals.dates.created_at"]
    assert "formats ['%m/%d/%Y %H:%M', '%d/%m/%Y %H:%M'] all fit" in suggestion.text
    data = yaml.safe_load(suggestion.text)
    assert data["tables"]["deals"]["dates"]["modified_at"] == "%m/%d/%Y %H:%M"


def test_a_mapping_with_marks_left_is_refused_naming_each() -> None:
    data = yaml.safe_load((MAPPINGS / "salesforce.yaml").read_text())
    data["stages"]["Fase 1"] = "?"
    data["tables"]["stakeholders"]["values"]["role"]["Jefe"] = "?"
    with pytest.raises(ConfigError) as err:
        parse_mapping(data, "m.yaml")
    text = str(err.value)
    assert "m.yaml: 2 values are still marked '?'" in text
    assert "stages.Fase 1: fill in" in text
    assert "tables.stakeholders.values.role.Jefe: fill in" in text


def test_cli_writes_the_file_and_says_what_to_fill(tmp_path: Path, cli: CliRunner) -> None:
    export = _custom_hubspot(tmp_path)
    out = tmp_path / "m.yaml"
    result = cli.invoke(app, ["mapping", "suggest", str(export), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert '2 values marked "?" to fill in' in result.output
    assert yaml.safe_load(out.read_text(encoding="utf-8"))["stages"]["Demo Given"] == "?"
    again = cli.invoke(app, ["mapping", "suggest", str(export), "--out", str(out)])
    assert again.exit_code == 2 and "pass --force" in again.output
    printed = cli.invoke(app, ["mapping", "suggest", str(FIXTURES / "salesforce")])
    assert printed.exit_code == 0 and "name: Salesforce" in printed.output


def test_cli_refuses_what_is_not_a_crm_export(tmp_path: Path, cli: CliRunner) -> None:
    shutil.copy(FIXTURES / "canonical" / "deals.csv", tmp_path / "deals.csv")
    result = cli.invoke(app, ["mapping", "suggest", str(tmp_path)])
    assert result.exit_code == 2
    assert "not a Salesforce export (no Opportunity.csv)" in result.output
    result = cli.invoke(app, ["mapping", "suggest", str(tmp_path), "--crm", "pipedrive"])
    assert result.exit_code == 2 and "--crm: expected one of" in result.output
    result = cli.invoke(app, ["mapping", "suggest", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "not a directory" in result.output
