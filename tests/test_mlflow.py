"""MLflow round trips: train -> register -> promote -> load by alias, in a temporary store and
against a real ``mlflow server``; the gate keeping a worse model out; the minimum-data refusal.

Every test has its own tracking store in a temporary folder. The models are small (these are
contract tests); the training results are shared within the module to keep it quick.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import mlflow
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.data.stages import load_stage_config
from features.data.store import Store
from features.settings import get_settings
from features.synthetic.generator import GeneratedData, generate, write_dataset
from serving.api.launch import free_port
from serving.cli import app
from tests.served import FAST
from training import make_config
from training.errors import PromotionRefused
from training.tracking import (
    CHALLENGER,
    CHAMPION,
    SLIP_MODEL,
    WIN_MODEL,
    TrackingTarget,
    list_models,
    load_champion,
    log_and_register,
    promote,
    using,
)
from training.train import TrainingResult, train

CFG = load_stage_config()
# Deliberately worse: one tiny tree each.
WORSE: dict[str, Any] = {
    "win": {"n_estimators": 1, "num_leaves": 2},
    "slip": {"n_estimators": 1, "num_leaves": 2},
}
runner = CliRunner()


@pytest.fixture(scope="module")
def data() -> GeneratedData:
    return generate(1200, 8)


@pytest.fixture(scope="module")
def fast(data: GeneratedData) -> TrainingResult:
    return train(data.tables, CFG, config=make_config(**FAST))


@pytest.fixture(scope="module")
def worse(data: GeneratedData) -> TrainingResult:
    return train(data.tables, CFG, config=make_config(**WORSE))


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TrackingTarget]:
    """A fresh local tracking store (SQLite + artifact folder) for one test."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("PIPECAST_MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("PIPECAST_MLFLOW_ARTIFACTS", str(tmp_path / "mlruns"))
    get_settings.cache_clear()
    yield TrackingTarget(uri, str(tmp_path / "mlruns"))
    get_settings.cache_clear()


def _db(data: GeneratedData, path: Path) -> str:
    db = str(path / "crm.duckdb")
    with Store(db, read_only=False) as s:
        s.load(data.tables)
    return db


def _aliases(target: TrackingTarget, name: str) -> dict[str, str]:
    return {
        alias: v["version"]
        for v in list_models(target)
        if v["name"] == name
        for alias in v["aliases"]
    }


def test_cli_round_trip_train_register_load_score(
    data: GeneratedData, store: TrackingTarget, tmp_path: Path
) -> None:
    db = _db(data, tmp_path)
    write_dataset(data, tmp_path / "export")
    recipe = tmp_path / "fast.json"
    recipe.write_text(json.dumps(FAST))
    before = mlflow.get_tracking_uri()
    out = runner.invoke(
        app,
        [
            "train",
            "--db",
            db,
            "--config",
            str(recipe),
            "--truth",
            str(tmp_path / "export"),
            "--json",
        ],
    )
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout[out.stdout.index("{") :])
    assert mlflow.get_tracking_uri() == before  # the URI is set for the call, then restored
    for section in ("win", "slip"):
        assert report[section]["version"] == "1" and report[section]["alias"] == CHAMPION
    win = report["win"]
    assert set(win["eval"]) >= {"auc", "brier", "log_loss", "ece"}
    assert set(win["baselines"]) == {"stage_default", "stage_historical", "naive_bayes"}
    assert win["oracle"]["brier"] < win["eval"]["brier"]
    assert report["data"]["eval_rows"] > 0 and len(report["data"]["eval_window"]) == 2
    assert report["slip"]["baselines"]["rep_close_date"]["log_loss"] > 0

    listed = runner.invoke(app, ["models", "--json"])
    versions = json.loads(listed.stdout)["versions"]
    assert {(v["name"], v["version"], tuple(v["aliases"])) for v in versions} == {
        (WIN_MODEL, "1", (CHAMPION,)),
        (SLIP_MODEL, "1", (CHAMPION,)),
    }
    assert versions[0]["metrics"]["brier"] == pytest.approx(win["eval"]["brier"])

    scored = runner.invoke(app, ["score", "--db", db, "--as-of", "2025-11-14", "--json"])
    assert scored.exit_code == 0, scored.output
    body = json.loads(scored.stdout)
    assert body["model_versions"] == {WIN_MODEL: "1", SLIP_MODEL: "1"}
    assert body["method"] == "model" and body["deals"]
    assert body["deals"][0]["reasons_for"] is not None

    # artifacts of the run: reliability diagram, importances, windows, features
    with using(store) as client:
        run_id = client.get_model_version(WIN_MODEL, "1").run_id
        names = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert {"evaluation/reliability.png", "evaluation/data_window.json", "evaluation/features.json",
            "evaluation/feature_importance_win_probability.png"} <= names  # fmt: skip


def test_gate_keeps_a_worse_model_out_of_champion(
    fast: TrainingResult, worse: TrainingResult, store: TrackingTarget
) -> None:
    first = log_and_register(fast, store)
    assert first[WIN_MODEL].alias == CHAMPION
    second = log_and_register(worse, store)
    for name in (WIN_MODEL, SLIP_MODEL):
        assert second[name].version == "2"
        assert second[name].alias == CHALLENGER
        assert "worse than the champion" in second[name].reason
        assert "refitted at the same cut-off" in second[name].reason
        assert _aliases(store, name) == {CHAMPION: "1", CHALLENGER: "2"}
    assert load_champion(store).versions == {WIN_MODEL: "1", SLIP_MODEL: "1"}

    with pytest.raises(PromotionRefused, match="worse than champion v1"):
        promote(store, WIN_MODEL, "2")
    refused = runner.invoke(app, ["promote", WIN_MODEL, "2"])
    assert refused.exit_code == 1 and "--force" in refused.output
    forced = runner.invoke(app, ["promote", WIN_MODEL, "2", "--force"])
    assert forced.exit_code == 0, forced.output
    assert _aliases(store, WIN_MODEL) == {CHAMPION: "2"}
    with using(store) as client:
        runs = client.search_runs(
            [client.get_experiment_by_name("pipecast").experiment_id],
            "tags.`pipecast.action` = 'promote'",
        )
    assert [r.data.tags["pipecast.forced"] for r in runs] == ["true"]
    assert "forced by hand" in runs[0].data.tags["pipecast.reason"]


def test_same_recipe_on_newer_data_is_promoted(fast: TrainingResult, store: TrackingTarget) -> None:
    log_and_register(fast, store)
    again = log_and_register(fast, store)
    assert again[WIN_MODEL].alias == CHAMPION and again[WIN_MODEL].version == "2"
    assert "same recipe" in again[WIN_MODEL].reason


def test_unknown_model_or_version(store: TrackingTarget) -> None:
    out = runner.invoke(app, ["promote", "nope", "1"])
    assert out.exit_code != 0 and "unknown model 'nope'" in out.output
    empty = runner.invoke(app, ["models"])
    assert "no registered models" in empty.output


def test_minimum_data_refusal_and_fallback_scoring(store: TrackingTarget, tmp_path: Path) -> None:
    small = generate(120, 2)
    db = _db(small, tmp_path)
    out = runner.invoke(app, ["train", "--db", db])
    assert out.exit_code == 1
    assert "not enough closed deals" in out.output and "Traceback" not in out.output
    assert list_models(store) == []  # nothing registered
    scored = runner.invoke(app, ["score", "--db", db, "--as-of", "2025-06-30", "--json"])
    assert scored.exit_code == 0, scored.output
    body = json.loads(scored.stdout)
    assert body["method"] == "historical_stage_rates"
    assert "no champion" in body["fallback_reason"]
    assert body["model_versions"] == {WIN_MODEL: None, SLIP_MODEL: None}


@pytest.fixture
def server(tmp_path: Path):
    """A real ``mlflow server`` on loopback with its own SQLite store and artifact folder."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination", str(tmp_path / "server-artifacts"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("mlflow server did not start")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_round_trip_against_a_real_tracking_server(
    fast: TrainingResult, server: str, data: GeneratedData
) -> None:
    target = TrackingTarget(server)
    assert not target.is_local
    registered = log_and_register(fast, target)
    assert registered[WIN_MODEL].alias == CHAMPION
    models = load_champion(target)
    assert models.versions == {WIN_MODEL: "1", SLIP_MODEL: "1"}
    scored = models.score(data.tables, CFG, pd.Timestamp("2025-11-14 23:59:59"))
    assert scored.attrs["model_versions"] == {WIN_MODEL: "1", SLIP_MODEL: "1"}
    # the served model is the one trained: same probabilities as in memory
    local = fast.serving.score(data.tables, CFG, pd.Timestamp("2025-11-14 23:59:59"))
    pd.testing.assert_series_equal(scored["p_win"], local["p_win"])
