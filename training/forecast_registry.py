"""MLflow for the forecast layer: the fitted posterior as a registered model, and backtests.

The posterior (a NetCDF file saved with its configuration hash) is logged as a pyfunc model whose
artifact is that file, with its sampling diagnostics (divergences, r-hat, effective sample size,
time) as metrics and its configuration as parameters, and registered under
:data:`FORECAST_MODEL`. Promotion is its own step: the ``champion`` alias moves to the new
version only when the diagnostics pass the configuration's gates; a fit with bad diagnostics is
registered (for inspection) but never promoted.

The tracking store comes from the settings (``PIPECAST_MLFLOW_TRACKING_URI``) unless one is given;
nothing is configured at import time.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

FORECAST_MODEL = "pipecast-forecast"
BACKTEST_EXPERIMENT = "pipecast-backtest"
FORECAST_EXPERIMENT = "pipecast-forecast"
CHAMPION = "champion"


def _tracking(uri: str | None) -> str:
    if uri is not None:
        return uri
    from features.settings import get_settings

    return get_settings().mlflow_tracking_uri


try:  # mlflow is a hard dependency; the class must exist at module level to be pickled by name
    import mlflow.pyfunc as _pyfunc

    class PosteriorArtifact(_pyfunc.PythonModel):  # type: ignore[misc]
        """A registered forecast posterior; ``predict`` returns its parameter summary."""

        def load_context(self, context: Any) -> None:
            self.path = context.artifacts["posterior"]

        def predict(self, context: Any, model_input: Any, params: Any = None) -> pd.DataFrame:
            import arviz as az

            idata = az.from_netcdf(self.path)
            summary: Any = az.summary(idata, kind="stats")
            return pd.DataFrame(summary).reset_index()

except ImportError:  # pragma: no cover - mlflow is installed with pipecast
    PosteriorArtifact = None  # type: ignore[assignment,misc]


def register_posterior(
    path: str | Path,
    config: dict[str, Any],
    diagnostics: dict[str, Any],
    passed: bool,
    *,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Log and register a saved posterior; move ``champion`` to it only if ``passed``."""
    import mlflow
    from mlflow import MlflowClient

    uri = _tracking(tracking_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    mlflow.set_experiment(FORECAST_EXPERIMENT)
    with mlflow.start_run(run_name="forecast-posterior") as run:
        mlflow.log_params({f"config.{k}": v for k, v in config.items()})
        numbers = {k: float(v) for k, v in diagnostics.items() if isinstance(v, int | float)}
        mlflow.log_metrics(numbers)
        mlflow.set_tag("diagnostics_passed", str(passed).lower())
        info = mlflow.pyfunc.log_model(
            name="posterior",
            python_model=PosteriorArtifact(),
            artifacts={"posterior": str(path)},
            registered_model_name=FORECAST_MODEL,
        )
        run_id = run.info.run_id
    version = str(info.registered_model_version)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.set_model_version_tag(FORECAST_MODEL, version, "diagnostics_passed", str(passed).lower())
    if passed:
        client.set_registered_model_alias(FORECAST_MODEL, CHAMPION, version)
    return {"model": FORECAST_MODEL, "version": version, "run_id": run_id, "promoted": passed}


def log_backtest(
    rows: pd.DataFrame,
    summary: dict[str, Any],
    plot: Path | None = None,
    *,
    tracking_uri: str | None = None,
) -> str:
    """Log a backtest's summary figures, its rows (CSV) and its plot; returns the run id."""
    import mlflow

    uri = _tracking(tracking_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(BACKTEST_EXPERIMENT)
    metrics: dict[str, float] = {}
    for key in ("coverage_p10_p90", "coverage_p10_p90_independent", "crps_vs_independent"):
        if summary.get(key) is not None:
            metrics[key] = float(summary[key])
    for prefix, key in (("mape", "median_abs_pct_error"), ("crps", "mean_crps_by_week")):
        for week, by_method in summary[key].items():
            for method, value in by_method.items():
                if value is not None:
                    metrics[f"{prefix}_w{week}.{method}"] = float(value)
    for week, by_rule in summary["vs_rules"].items():
        for rule, gap in by_rule.items():
            metrics[f"gap_w{week}.{rule}"] = float(gap["gap"])
    for method, value in summary["mean_crps"].items():
        if value is not None:
            metrics[f"crps.{method}"] = float(value)
    with mlflow.start_run(run_name="backtest") as run:
        mlflow.log_params({"quarters": summary["quarters"], "weeks": str(summary["weeks"])})
        mlflow.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            csv = Path(tmp) / "backtest_rows.csv"
            rows.to_csv(csv, index=False)
            mlflow.log_artifact(str(csv))
            (Path(tmp) / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
            mlflow.log_artifact(str(Path(tmp) / "summary.json"))
        if plot is not None and plot.exists():
            mlflow.log_artifact(str(plot))
        return str(run.info.run_id)
