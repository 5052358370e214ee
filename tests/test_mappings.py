"""Mapping files: the shipped examples load, and a wrong file is refused naming the file and key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from features.data.mapping import load_mapping, parse_mapping
from features.data.stages import ConfigError, load_stage_config

MAPPINGS = Path(__file__).resolve().parents[1] / "features" / "data" / "mappings"


def _snapshot(data: dict[str, Any]) -> dict[str, Any]:
    source: dict[str, Any] = data["tables"]["field_history"]["sources"][1]
    return source


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
    assert hs.tables["deals"].dates["created_at"][0] == "%m/%d/%Y %H:%M"
    assert set(hs.tables) == {"deals", "targets"}
    snapshot = sf.tables["field_history"].sources[1]
    assert snapshot.file == "OpportunityHistory.csv" and snapshot.is_snapshot
    assert snapshot.snapshot == {
        "amount": "Amount",
        "expected_close_date": "CloseDate",
        "forecast_category": ["ForecastCategory", "ForecastCategoryName"],
    }
    assert snapshot.previous["amount"] == "PrevAmount"
    assert not sf.tables["field_history"].sources[0].is_snapshot


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
        (lambda d: d["tables"]["deals"].update(dates={"amount": "%Y"}), "dates.amount"),
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
        # snapshot tables
        (
            lambda d: d["tables"]["activities"]["sources"][1].update(snapshot={"amount": "A"}),
            "tables.activities.sources.1.snapshot: snapshot tables feed field_history only",
        ),
        (
            lambda d: _snapshot(d)["snapshot"].update(probability="Probability"),
            "tables.field_history.sources.1.snapshot.probability: not a tracked field",
        ),
        (
            lambda d: _snapshot(d)["previous"].update(next_step="PrevNextStep"),
            "sources.1.previous.next_step: not a field of this source's snapshot",
        ),
        (
            lambda d: _snapshot(d)["columns"].update(new_value="Amount"),
            "tables.field_history.sources.1.columns: a snapshot source derives ['new_value']",
        ),
        # value maps: canonical targets; keys equal but for case and spacing must agree
        (
            lambda d: d["tables"]["deals"]["values"]["loss_reason"].update({"No Fit": "fitt"}),
            "tables.deals.values.loss_reason.No Fit: 'fitt' is not one of",
        ),
        (
            lambda d: d["tables"]["deals"]["values"]["loss_reason"].update({"no  FIT": "price"}),
            "loss_reason.no  FIT: 'no  FIT' and 'No Fit' differ only in case or spacing",
        ),
        (
            lambda d: d["stages"].update({"closed won": "closed_lost"}),
            "stages.closed won: 'closed won' and 'Closed Won' differ only in case or spacing",
        ),
        (
            lambda d: d["tables"]["stakeholders"]["values"]["role"].update(Boss="ceo"),
            "tables.stakeholders.values.role.Boss: 'ceo' is not one of",
        ),
        # encodings
        (lambda d: d.update(encoding="klingon"), "encoding: unknown text encoding 'klingon'"),
        (
            lambda d: d["tables"]["deals"]["sources"][0].update(encoding="ebcdic-x"),
            "tables.deals.sources.0.encoding: unknown text encoding",
        ),
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


def test_encodings_in_the_mapping() -> None:
    data = _sf_data()
    data["encoding"] = "windows-1252"
    data["tables"]["activities"]["sources"][0]["encoding"] = "utf-16"
    m = parse_mapping(data)
    assert m.encoding == "windows-1252"
    assert m.tables["activities"].sources[0].encoding == "utf-16"


def test_a_key_given_twice_is_refused_naming_it_and_its_line(tmp_path: Path) -> None:
    """YAML would keep the last of two equal keys: one stage map would silently vanish."""
    text = (MAPPINGS / "salesforce.yaml").read_text()
    twice = text.replace(
        "  Qualification: qualification\n",
        "  Qualification: qualification\n  Prospecting: needs_analysis\n",
    )
    lines = twice.splitlines()
    first = lines.index("  Prospecting: qualification") + 1
    second = lines.index("  Prospecting: needs_analysis") + 1
    path = tmp_path / "twice.yaml"
    path.write_text(twice)
    with pytest.raises(ConfigError) as err:
        load_mapping(path)
    assert str(err.value) == (
        f"{path}: duplicate key 'Prospecting' on line {second} (first on line {first})"
    )


def test_a_stage_configuration_key_given_twice_is_refused(tmp_path: Path) -> None:
    from importlib import resources

    text = resources.files("features.data").joinpath("stages.yaml").read_text()
    text = text.replace(
        "    win_probability: 0.10\n", "    win_probability: 0.10\n    win_probability: 0.90\n", 1
    )
    path = tmp_path / "stages.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="duplicate key 'win_probability' on line"):
        load_stage_config(path)


def test_a_mapping_that_is_not_utf8_is_one_line_naming_file_and_encoding(tmp_path: Path) -> None:
    text = (MAPPINGS / "salesforce.yaml").read_text().replace("No Decision", "Sin decisión")
    path = tmp_path / "latin.yaml"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ConfigError) as err:
        load_mapping(path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: the mapping file is not UTF-8 text (byte 0xF3 on line")
    assert "Latin-1 or Windows-1252" in message and "save it as UTF-8" in message
    # with a byte-order mark, UTF-8 is fine
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert load_mapping(path).tables["deals"].values["loss_reason"]["Sin decisión"] == "status_quo"
