"""MLflow round trip of the forecast posterior: registered with its diagnostics, promoted only when
they pass; backtests logged with their figures. Each test has its own tracking store."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from forecasting.model import PARAMS, Diagnostics, FittedForecastModel, ModelConfig
from training.forecast_registry import CHAMPION, FORECAST_MODEL, log_backtest, register_posterior


@pytest.fixture
def store(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _saved(tmp_path, diag: Diagnostics) -> tuple[str, ModelConfig]:
    import arviz as az

    cfg = ModelConfig(draws=100, tune=100)
    post = {name: np.random.default_rng(0).normal(size=(2, 20)) for name in PARAMS}
    levels: dict[str, list[str]] = {"quarters": [], "teams": [], "segments": [], "stages": []}
    fitted = FittedForecastModel(az.from_dict(posterior=post), cfg, diag, levels, "2025-01-01")
    return str(fitted.save(tmp_path / f"post-{diag.divergences}.nc")), cfg


def test_good_fit_is_promoted_bad_fit_is_not(tmp_path, store, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)  # artifacts of a local store land here
    good = Diagnostics(0, 1.01, 300.0, 100, 2, 3.0, True)
    bad = Diagnostics(12, 1.3, 15.0, 100, 2, 3.0, True)
    path, cfg = _saved(tmp_path, good)
    first = register_posterior(path, cfg.model_dump(), good.__dict__, good.ok(cfg),
                               tracking_uri=store)  # fmt: skip
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    assert first["promoted"]
    assert (
        str(client.get_model_version_by_alias(FORECAST_MODEL, CHAMPION).version) == first["version"]
    )
    path, _ = _saved(tmp_path, bad)
    second = register_posterior(path, cfg.model_dump(), bad.__dict__, bad.ok(cfg),
                                tracking_uri=store)  # fmt: skip
    assert not second["promoted"] and second["version"] != first["version"]
    assert (
        str(client.get_model_version_by_alias(FORECAST_MODEL, CHAMPION).version) == first["version"]
    )
    run = client.get_run(second["run_id"])
    assert run.data.metrics["divergences"] == 12.0 and run.data.metrics["max_rhat"] == 1.3
    assert run.data.params["config.draws"] == "100"
    assert run.data.tags["diagnostics_passed"] == "false"


def test_backtest_is_logged(tmp_path, store, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    summary = {
        "quarters": 8, "weeks": [1, 4], "coverage_p10_p90": 0.8, "crps_vs_independent": -0.3,
        "median_abs_pct_error": {"1": {"pipecast": 0.1, "commit": 0.5}, "4": {"pipecast": 0.07}},
        "mean_crps": {"pipecast": 1e6, "independent_stage_sim": 2e6},
        "mean_crps_by_week": {"1": {"pipecast": 1.5e6, "commit": None}},
        "vs_rules": {"1": {"commit": {"gap": -0.4, "gap_low": -0.5, "gap_high": -0.3}}},
    }  # fmt: skip
    rows = pd.DataFrame({"quarter": ["2025Q1"], "week": [1], "method": ["pipecast"]})
    run_id = log_backtest(rows, summary, tracking_uri=store)
    run = MlflowClient(tracking_uri=store).get_run(run_id)
    assert run.data.metrics["coverage_p10_p90"] == 0.8
    assert run.data.metrics["mape_w4.pipecast"] == 0.07
    assert run.data.metrics["crps.independent_stage_sim"] == 2e6
    assert run.data.metrics["gap_w1.commit"] == -0.4
    assert (
        run.data.metrics["crps_w1.pipecast"] == 1.5e6 and "crps_w1.commit" not in run.data.metrics
    )
