"""Mapping files: the shipped examples load, and a wrong file is refused naming the file and key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from features.data.mapping import load_mapping, parse_mapping
from features.data.stages import ConfigError, load_stage_config

MAPPINGS = Path(__file__).resolve().parents[1] / "features" / "data" / "mappings"


def _sf_data() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((MAPPINGS / "salesforce.yaml").read_text())
    return data


def test_shipped_mappings_load() -> None:
    sf = load_mapping(MAPPINGS / "salesforce.yaml")
    assert sf.stages["Proposal/Price Quote"] == "proposal"
    assert [s.file for s in sf.tables["activities"].sources] == ["Task.csv", "Event.csv"]
    assert sf.tables["activities"].sources[1].constants == {"type": "meeting"}
    assert sf.tables["stage_history"].collapse_repeats
    assert sf.custom_columns()["custom_lead_source"] == "LeadSource"
    hs = load_mapping(MAPPINGS / "hubspot.yaml")
    assert hs.tables["deals"].columns["deal_id"] == ["Record ID", "Deal ID"]
    assert hs.tables["deals"].dates["created_at"] == "%m/%d/%Y %H:%M"
    assert set(hs.tables) == {"deals"}


def test_seed_keys_of_salesforce_mapping_exist_in_default_stages() -> None:
    stages = load_stage_config()
    for mapping in ("salesforce.yaml", "hubspot.yaml"):
        targets = set(load_mapping(MAPPINGS / mapping).stages.values())
        assert targets <= set(stages.by_key), mapping


def test_salesforce_stage_config_has_salesforce_stages() -> None:
    cfg = load_stage_config(MAPPINGS / "salesforce-stages.yaml")
    labels = [s.label for s in sorted(cfg.stages, key=lambda s: s.order)]
    assert labels == [
        "Prospecting",
        "Qualification",
        "Needs Analysis",
        "Value Proposition",
        "Id. Decision Makers",
        "Perception Analysis",
        "Proposal/Price Quote",
        "Negotiation/Review",
        "Closed Won",
        "Closed Lost",
    ]
    assert cfg.win_probability("negotiation_review") == 0.90


def test_yaml_scalar_keys_compare_as_text() -> None:
    data = _sf_data()
    data["tables"]["deals"]["values"]["outcome"] = {True: "won", False: "lost"}
    m = parse_mapping(data)
    assert m.tables["deals"].values["outcome"] == {"true": "won", "false": "lost"}


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        (lambda d: d["tables"]["deals"]["columns"].update(dael_id="Id"), "columns.dael_id"),
        (lambda d: d["tables"].update(opportunities=d["tables"]["deals"]), "tables"),
        (lambda d: d["tables"]["deals"]["sources"][0].update(fil="x.csv"), "sources.0.fil"),
        (lambda d: d["tables"]["deals"].update(sources=[]), "tables.deals.sources"),
        (lambda d: d.update(timezone="Mars/Olympus"), "timezone"),
        (lambda d: d["tables"]["deals"]["dates"].update(amount="%Y"), "dates.amount"),
        (
            lambda d: d["tables"]["activities"].update(custom={"x": "y"}),
            "tables.activities.custom",
        ),
        (
            lambda d: d["tables"]["activities"]["sources"][0]["values"].update(kind={}),
            "tables.activities.sources.0.values.kind",
        ),
        (lambda d: d["tables"]["deals"].update(unknown_deals="drop"), "deals.unknown_deals"),
        (lambda d: d["tables"]["stage_history"].update(collapse_repeats="often"), "collapse"),
        (lambda d: d["tables"].pop("deals"), "'deals' table"),
        (lambda d: d["tables"]["deals"]["custom"].update({"Bad Name": "x"}), "custom.Bad Name"),
        (lambda d: d["tables"]["deals"]["sources"][0].update(file="sub/x.csv"), "sources.0.file"),
    ],
)
def test_validation_error_names_file_and_key(tmp_path: Path, mutate: Any, key: str) -> None:
    data = _sf_data()
    mutate(data)
    path = tmp_path / "bad-mapping.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_mapping(path)
    assert str(path) in str(err.value)
    assert key in str(err.value)


def test_missing_and_unparsable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_mapping(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tables: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_mapping(bad)
    bad.write_text("- just a list")
    with pytest.raises(ConfigError, match="top level"):
        load_mapping(bad)
