"""The model-quality figures of the models issue, on 20,000 generated deals (slow).

Time-ordered: fitted as at the start of the latest 65 weeks, judged on them (labels known at the
end of the data, censoring-weighted), beside the baselines and the oracle on the same rows.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

from features.data.importer import read_export
from features.data.stages import load_stage_config
from features.synthetic.generator import generate, write_dataset
from training.train import TrainingResult, train

pytestmark = pytest.mark.slow
CFG = load_stage_config()


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("crm20k")
    write_dataset(generate(20_000, 1), folder)
    return folder


@pytest.fixture(scope="module")
def result(export: Path) -> TrainingResult:
    tables = read_export(export, stages=CFG).tables
    return train(tables, CFG, truth=export)


def test_must_show_figures(result: TrainingResult) -> None:
    """One test for the full-history figures: pytest-xdist would otherwise train the 20k-deal
    models once per worker."""
    ours, base, oracle = result.win["eval"], result.win["baselines"], result.win["oracle"]
    figures = {k: round(v, 4) for k, v in ours.items() if isinstance(v, float)}
    assert ours["auc"] >= 0.85, figures
    assert ours["brier"] <= 0.75 * base["stage_default"]["brier"], figures
    assert ours["brier"] <= 0.85 * base["stage_historical"]["brier"], figures
    assert ours["brier"] < base["naive_bayes"]["brier"], figures
    # calibrated overall and in every stage
    assert ours["ece"] <= 0.02, figures
    by_stage = {k: round(s["ece"], 4) for k, s in ours["by_stage"].items()}
    assert max(by_stage.values()) <= 0.05, by_stage
    # The oracle knows each deal's latent quality; the model sees it only through noisy signals.
    # The issue asks for a Brier within 15% of the oracle's: measured 13.8% (see README).
    ratio = ours["brier"] / oracle["brier"]
    assert 1.0 < ratio <= 1.15, ratio
    # closes won this quarter: at least 20% below the rep's close date at face value
    slip, rep = result.slip["eval"], result.slip["baselines"]["rep_close_date"]
    assert slip["log_loss"] <= 0.8 * rep["log_loss"], (slip["log_loss"], rep["log_loss"])


def test_without_field_history_the_model_is_no_better_than_the_oracle(export: Path) -> None:
    """A leak would show as beating the oracle, which knows everything a CRM could."""
    (export / "field_history.parquet").rename(export / "field_history.dropped")
    try:
        tables = read_export(export, stages=CFG).tables
    finally:
        (export / "field_history.dropped").rename(export / "field_history.parquet")
    dropped = train(tables, CFG, truth=export)
    assert dropped.win["eval"]["brier"] >= dropped.win["oracle"]["brier"]
