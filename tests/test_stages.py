from pathlib import Path

import pytest
import yaml

from features.data.stages import ConfigError, load_stage_config, parse_stage_config


def _default_data() -> dict:
    from importlib import resources

    return yaml.safe_load(resources.files("features.data").joinpath("stages.yaml").read_text())


def test_default_config_holds_the_seed_stages():
    cfg = load_stage_config()
    assert cfg.open_keys == ["qualification", "needs_analysis", "proposal", "negotiation"]
    assert [cfg.win_probability(k) for k in cfg.open_keys] == [0.10, 0.25, 0.50, 0.70]
    assert cfg.won_key == "closed_won" and cfg.lost_key == "closed_lost"
    # seed: Needs Analysis typically 4-8 weeks, norm 6 weeks
    assert cfg.norm_days("needs_analysis") == 42
    assert cfg.hygiene.no_activity_review_days == 60 and cfg.hygiene.stale_days == 90
    fields = [r.field for r in cfg.stage("qualification").required_fields]
    assert "stakeholder:decision_maker" in fields and "competitor" in fields


def test_user_file_replaces_default(tmp_path: Path):
    data = _default_data()
    data["stages"] = [s for s in data["stages"] if s["key"] != "needs_analysis"]
    data["hygiene"]["stale_days"] = 120
    path = tmp_path / "stages.yaml"
    path.write_text(yaml.safe_dump(data))
    cfg = load_stage_config(path)
    assert "needs_analysis" not in cfg.open_keys
    assert cfg.hygiene.stale_days == 120


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        (lambda d: d["stages"][0].update(win_probability=1.5), "stages.0.win_probability"),
        (
            lambda d: d["stages"][1]["duration_days"].update(min=60, max=10),
            "stages.1.duration_days",
        ),
        (lambda d: d["hygiene"].update(stale_days=-1), "hygiene.stale_days"),
        (lambda d: d["stages"][0].update(colour="red"), "stages.0.colour"),
        (
            lambda d: d["stages"][0]["required_fields"].append(
                {"field": "stakeholder:ceo", "label": "x"}
            ),
            "stages.0.required_fields.4.field",
        ),
    ],
)
def test_validation_error_names_file_and_key(tmp_path: Path, mutate, key):
    data = _default_data()
    mutate(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_stage_config(path)
    assert str(path) in str(err.value)
    assert key in str(err.value)


def test_duplicate_stage_keys_rejected():
    data = _default_data()
    data["stages"][1]["key"] = "qualification"
    with pytest.raises(ConfigError, match="duplicate stage keys"):
        parse_stage_config(data, "dup.yaml")
