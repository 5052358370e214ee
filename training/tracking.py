"""MLflow: every training run logged, its models registered, promotion by alias behind a gate.

The only module that writes to MLflow. The tracking URI is an argument (from
``features.settings.get_settings().mlflow_tracking_uri`` in the CLI: ``sqlite:///mlflow.db`` with
artifacts in ``./mlruns`` by default, ``http://host:5000`` for a tracking server); it is set for
the duration of a call and restored after, never at import.

A run logs the recipe (parameters), the backtest metrics (AUC, Brier, log loss, ECE: overall, per
stage, per segment; baselines and oracle beside), a reliability diagram and feature importances,
the data windows and feature list, and both models (scikit-learn flavour, with signature and
input example), registered as versions of ``win_probability`` and ``slip``.

**Promotion gate.** A new version takes the ``champion`` alias only if it is no worse than the
champion on the same evaluation rows: the champion's recipe (logged with it) is fitted at the same
cut-off and scored on the same rows (:meth:`training.train.TrainingResult.evaluate_recipe`), since
the registered champion itself was fitted on data that may include those rows. "No worse" is the
Brier score (win) or log loss (slip) at most ``promotion_tolerance`` above. Otherwise the version
becomes ``challenger`` and the reason is logged. ``promote --force`` overrides, and is logged.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.errors import InputError
from training.calibration import base_model
from training.config import TrainingConfig, config_from_json
from training.errors import ModelNotFoundError, PromotionRefused
from training.evaluation import plot_reliability
from training.fitting import FittedModels
from training.models import with_horizon
from training.train import TrainingResult

WIN_MODEL = "win_probability"
SLIP_MODEL = "slip"
MODELS = (WIN_MODEL, SLIP_MODEL)
CHAMPION, CHALLENGER = "champion", "challenger"
EXPERIMENT = "pipecast"
PRIMARY = {WIN_MODEL: "brier", SLIP_MODEL: "log_loss"}
SECTION = {WIN_MODEL: "win", SLIP_MODEL: "slip"}
TAG = "pipecast."


@dataclass(frozen=True)
class TrackingTarget:
    """Where runs and models go: a tracking URI and, for a local store, its artifact folder."""

    uri: str
    artifacts: str | None = None

    @property
    def is_local(self) -> bool:
        return not self.uri.startswith(("http://", "https://", "databricks"))


@contextmanager
def using(target: TrackingTarget) -> Iterator[Any]:
    """Point MLflow at ``target`` for the duration of the block, then restore the previous URI."""
    import mlflow

    previous_tracking = mlflow.get_tracking_uri()
    previous_registry = mlflow.get_registry_uri()
    mlflow.set_tracking_uri(target.uri)
    mlflow.set_registry_uri(target.uri)
    try:
        yield mlflow.MlflowClient(tracking_uri=target.uri, registry_uri=target.uri)
    finally:
        mlflow.set_tracking_uri(previous_tracking)
        mlflow.set_registry_uri(previous_registry)


def _experiment(client: Any, target: TrackingTarget) -> str:
    found = client.get_experiment_by_name(EXPERIMENT)
    if found is not None:
        return str(found.experiment_id)
    location = None
    if target.is_local and target.artifacts:
        location = Path(target.artifacts).resolve().as_uri()
    return str(client.create_experiment(EXPERIMENT, artifact_location=location))


# --- metrics as flat MLflow keys ------------------------------------------------------------------
def _key(*parts: str) -> str:
    return ".".join(re.sub(r"[^A-Za-z0-9_\-. /]", "_", p) for p in parts)


def flat_metrics(section: str, report: dict[str, Any]) -> dict[str, float]:
    """``win.brier``, ``win.stage.proposal.ece``, ``win.baseline.naive_bayes.auc``, ..."""
    out: dict[str, float] = {}

    def put(prefix: tuple[str, ...], scores: dict[str, Any]) -> None:
        for name, value in scores.items():
            number = isinstance(value, float | int) and not isinstance(value, bool)
            if number and np.isfinite(value):
                out[_key(*prefix, name)] = float(value)
        for group, label in (("by_stage", "stage"), ("by_segment", "segment")):
            for key, sub in scores.get(group, {}).items():
                for name, value in sub.items():
                    if isinstance(value, float | int) and np.isfinite(value):
                        out[_key(*prefix, label, key, name)] = float(value)

    put((section,), report["eval"])
    for name, scores in report.get("baselines", {}).items():
        put((section, "baseline", name), scores)
    if report.get("oracle"):
        put((section, "oracle"), report["oracle"])
    return out


def _params(config: TrainingConfig) -> dict[str, str]:
    flat = pd.json_normalize(config.model_dump(mode="json"), sep=".").iloc[0].to_dict()
    return {
        str(k): json.dumps(v) if isinstance(v, list | dict) else str(v) for k, v in flat.items()
    }


# --- logging a run --------------------------------------------------------------------------------
def _example(rows: pd.DataFrame, columns: list[str], n: int = 5) -> pd.DataFrame:
    ex = rows[[c for c in ["as_of", *columns] if c in rows.columns]].head(n).copy()
    for col in ex.columns:
        if not pd.api.types.is_numeric_dtype(ex[col]) and col != "as_of":
            ex[col] = ex[col].astype(object)
    return ex


def _log_model(mlflow: Any, model: Any, name: str, example: pd.DataFrame) -> Any:
    from mlflow.models import infer_signature

    signature = infer_signature(example, model.predict_proba(example)[:, 1])
    return mlflow.sklearn.log_model(
        model,
        name=name,
        signature=signature,
        input_example=example,
        registered_model_name=name,
        serialization_format="cloudpickle",
        # Stated, not inferred: inference runs a subprocess that re-imports everything (6 s).
        pip_requirements=_requirements(),
    )


def _requirements() -> list[str]:
    """What loading a pipecast model needs besides pipecast itself (its ``training`` package)."""
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("scikit-learn", "lightgbm", "pandas", "numpy")]


def _artifacts(result: TrainingResult, folder: Path) -> None:
    plot_reliability(
        result.curves,
        folder / "reliability.png",
        f"Win probability, {result.data_summary()['eval_window'][0]}..",
    )
    for name, models in ((WIN_MODEL, result.serving.win), (SLIP_MODEL, result.serving.slip)):
        imp = base_model(models).feature_importances_.sort_values(ascending=False)
        imp.rename("gain").to_csv(folder / f"feature_importance_{name}.csv", index_label="feature")
        _plot_importance(imp, folder / f"feature_importance_{name}.png", name)
    summary = result.data_summary()
    (folder / "data_window.json").write_text(json.dumps(summary["windows"], indent=2))
    (folder / "features.json").write_text(json.dumps(summary["features"], indent=2))
    (folder / "evaluation.json").write_text(
        json.dumps({"win": result.win, "slip": result.slip}, indent=2, default=_jsonable)
    )
    (folder / "config.json").write_text(result.config.model_dump_json(indent=2))


def _plot_importance(imp: pd.Series, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = imp.head(20)[::-1]
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.barh(list(top.index), top.to_numpy())
    ax.set_xlabel("total gain")
    ax.set_title(f"{title}: feature importance")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _jsonable(o: Any) -> Any:
    if isinstance(o, float | np.floating):
        return None if not np.isfinite(o) else float(o)
    return str(o)


@dataclass(frozen=True)
class Registered:
    """What happened to one model of a run: its version, alias and why."""

    name: str
    version: str
    alias: str
    reason: str
    champion_metrics: dict[str, Any] | None = None


def log_and_register(result: TrainingResult, target: TrackingTarget) -> dict[str, Registered]:
    """Log the run, register both models and run the promotion gate for each."""
    with using(target) as client:
        import mlflow

        experiment = _experiment(client, target)
        with mlflow.start_run(
            experiment_id=experiment, run_name=f"train {result.as_of:%Y-%m-%d}"
        ) as run:
            mlflow.log_params(_params(result.config))
            summary = result.data_summary()
            mlflow.log_params(
                {
                    "data.eval_window": " .. ".join(summary["eval_window"]),
                    "data.backtest_cutoff": summary["backtest_cutoff"],
                    "data.serving_cutoff": summary["serving_cutoff"],
                    "data.n_features": str(len(summary["features"])),
                }
            )
            mlflow.log_metrics(
                {"data.train_rows": summary["train_rows"], "data.eval_rows": summary["eval_rows"]}
            )
            for section, report in (("win", result.win), ("slip", result.slip)):
                mlflow.log_metrics(flat_metrics(section, report))
            with tempfile.TemporaryDirectory() as tmp:
                _artifacts(result, Path(tmp))
                mlflow.log_artifacts(tmp, artifact_path="evaluation")
            rows = result.evaluation.rows
            features = summary["features"]
            infos = {
                WIN_MODEL: _log_model(
                    mlflow, result.serving.win, WIN_MODEL, _example(rows, features)
                ),
                SLIP_MODEL: _log_model(
                    mlflow,
                    result.serving.slip,
                    SLIP_MODEL,
                    with_horizon(_example(rows, features), 30),
                ),
            }
            judged: dict[str, dict[str, Any]] = {}

            def judge(config: TrainingConfig) -> dict[str, Any]:
                key = config.fingerprint()  # one refit per champion recipe, for both models
                if key not in judged:
                    judged[key] = result.evaluate_recipe(config)
                return judged[key]

            out = {}
            for name, info in infos.items():
                version = str(info.registered_model_version)
                _tag_version(client, name, version, result, run.info.run_id)
                out[name] = _gate(client, name, version, result, judge)
            # Aliases move only once both models are registered and judged: a run that fails
            # earlier leaves the champions as they were.
            for decision in out.values():
                _apply(client, decision)
                mlflow.set_tag(f"{TAG}{decision.name}.alias", decision.alias)
                mlflow.set_tag(f"{TAG}{decision.name}.promotion_reason", decision.reason)
    return out


def _tag_version(client: Any, name: str, version: str, result: TrainingResult, run_id: str) -> None:
    section = SECTION[name]
    report = result.win if section == "win" else result.slip
    tags = {
        "config": result.config.model_dump_json(),
        "recipe": result.config.fingerprint(),
        "cutoff": result.as_of.isoformat(),
        "eval_rows": result.evaluation.fingerprint,
        "eval_window": " .. ".join(result.data_summary()["eval_window"]),
        "metrics": json.dumps(
            {k: v for k, v in report["eval"].items() if not isinstance(v, dict)}, default=_jsonable
        ),
        "run_id": run_id,
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, TAG + key, value)


def _champion(client: Any, name: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def _gate(
    client: Any,
    name: str,
    version: str,
    result: TrainingResult,
    judge: Callable[[TrainingConfig], dict[str, Any]],
) -> Registered:
    """Decide (without changing anything) whether ``version`` may take ``champion``."""
    section, metric = SECTION[name], PRIMARY[name]
    new = (result.win if section == "win" else result.slip)["eval"]
    champion = _champion(client, name)
    if champion is None:
        return Registered(name, version, CHAMPION, "first version: no champion yet")
    recipe = champion.tags.get(TAG + "recipe")
    if recipe == result.config.fingerprint():
        old = new
        how = f"same recipe as champion v{champion.version}, fitted on newer data"
    else:
        try:
            old = judge(config_from_json(champion.tags[TAG + "config"]))[section]
            how = f"champion v{champion.version}'s recipe refitted at the same cut-off"
        except (KeyError, InputError) as err:
            reason = f"champion v{champion.version}'s recipe cannot be refitted ({err})"
            return Registered(name, version, CHALLENGER, f"{reason}; promote by hand")
    tol = result.config.promotion_tolerance
    a, b = float(new[metric]), float(old[metric])
    text = f"{metric} {a:.4f} vs {b:.4f} ({how}, same {result.evaluation.fingerprint} rows)"
    if a <= b * (1 + tol):
        return Registered(name, version, CHAMPION, f"no worse than the champion: {text}", old)
    return Registered(name, version, CHALLENGER, f"worse than the champion: {text}", old)


def _apply(client: Any, decision: Registered) -> None:
    """Move the alias the gate decided on and record why on the version."""
    name, version = decision.name, decision.version
    client.set_registered_model_alias(name, decision.alias, version)
    if decision.alias == CHAMPION:
        _drop_alias(client, name, CHALLENGER, version)
    client.set_model_version_tag(name, version, TAG + "promotion_reason", decision.reason)


def _drop_alias(client: Any, name: str, alias: str, version: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        if str(client.get_model_version_by_alias(name, alias).version) == str(version):
            client.delete_registered_model_alias(name, alias)
    except MlflowException:
        pass


# --- listing, promoting, loading ------------------------------------------------------------------
def _versions(client: Any, name: str) -> list[Any]:
    from mlflow.exceptions import MlflowException

    try:
        found = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return []
    return sorted(found, key=lambda v: int(v.version), reverse=True)


def _aliases(client: Any, name: str) -> dict[str, str]:
    """alias -> version of a registered model (search results do not carry aliases)."""
    from mlflow.exceptions import MlflowException

    try:
        return {a: str(v) for a, v in (client.get_registered_model(name).aliases or {}).items()}
    except MlflowException:
        return {}


def _version(client: Any, name: str, version: str) -> Any:
    from mlflow.exceptions import MlflowException

    if name not in MODELS:
        raise ModelNotFoundError(f"unknown model {name!r}; pipecast registers {list(MODELS)}")
    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        known = [v.version for v in _versions(client, name)]
        raise ModelNotFoundError(f"{name} has no version {version}; versions: {known}") from None


def list_models(target: TrackingTarget) -> list[dict[str, Any]]:
    """Every registered version of both models with its aliases, metrics and reason."""
    out = []
    with using(target) as client:
        for name in MODELS:
            aliases = _aliases(client, name)
            for v in _versions(client, name):
                tags = v.tags or {}
                out.append(
                    {
                        "name": name,
                        "version": str(v.version),
                        "aliases": sorted(a for a, ver in aliases.items() if ver == str(v.version)),
                        "created": pd.Timestamp(v.creation_timestamp, unit="ms").isoformat(),
                        "cutoff": tags.get(TAG + "cutoff"),
                        "eval_window": tags.get(TAG + "eval_window"),
                        "recipe": tags.get(TAG + "recipe"),
                        "metrics": json.loads(tags.get(TAG + "metrics", "{}")),
                        "promotion_reason": tags.get(TAG + "promotion_reason"),
                    }
                )
    return out


def promote(target: TrackingTarget, name: str, version: str, *, force: bool = False) -> str:
    """Move ``champion`` to ``name`` version ``version``; without ``force`` only if the version
    was judged on the same rows as the champion and is no worse. Returns the reason logged."""
    with using(target) as client:
        import mlflow

        new = _version(client, name, version)
        champion = _champion(client, name)
        if champion is not None and str(champion.version) == str(version):
            return f"{name} v{version} is already the champion"
        reason = _manual_reason(name, new, champion, force)
        _apply(client, Registered(name, str(version), CHAMPION, reason))
        if force:
            client.set_model_version_tag(name, str(version), TAG + "forced", "true")
        experiment = _experiment(client, target)
        with mlflow.start_run(experiment_id=experiment, run_name=f"promote {name} v{version}"):
            mlflow.set_tags(
                {
                    f"{TAG}action": "promote",
                    f"{TAG}model": name,
                    f"{TAG}version": str(version),
                    f"{TAG}previous_champion": str(champion.version) if champion else "",
                    f"{TAG}forced": str(force).lower(),
                    f"{TAG}reason": reason,
                }
            )
    return reason


def _manual_reason(name: str, new: Any, champion: Any | None, force: bool) -> str:
    if champion is None:
        return "promoted by hand: no champion yet"
    metric = PRIMARY[name]
    a = json.loads(new.tags.get(TAG + "metrics", "{}")).get(metric)
    b = json.loads(champion.tags.get(TAG + "metrics", "{}")).get(metric)
    same_rows = new.tags.get(TAG + "eval_rows") == champion.tags.get(TAG + "eval_rows")
    if force:
        return f"forced by hand over champion v{champion.version} ({metric} {a} vs {b})"
    if not same_rows or a is None or b is None:
        raise PromotionRefused(
            f"{name} v{new.version} and champion v{champion.version} were evaluated on different "
            "rows, so they cannot be compared; run `pipecast train` (it compares recipes on the "
            "same rows) or use --force"
        )
    if float(a) > float(b) * (1 + 0.005):
        raise PromotionRefused(
            f"{name} v{new.version} is worse than champion v{champion.version} on the same rows "
            f"({metric} {a:.4f} vs {b:.4f}); use --force to promote it anyway"
        )
    return f"promoted by hand: no worse than champion v{champion.version} ({metric} {a} vs {b})"


def load_champion(target: TrackingTarget) -> FittedModels:
    """The champion versions of both models (``models:/NAME@champion``), ready to score."""
    with using(target) as client:
        import mlflow.sklearn

        loaded: dict[str, Any] = {}
        versions: dict[str, str | None] = {}
        for name in MODELS:
            champion = _champion(client, name)
            if champion is None:
                raise ModelNotFoundError(
                    f"no champion version of {name} in {target.uri}; run `pipecast train` first"
                )
            loaded[name] = mlflow.sklearn.load_model(f"models:/{name}@{CHAMPION}")
            versions[name] = str(champion.version)
            if name == WIN_MODEL:
                tags = champion.tags
        config = config_from_json(tags[TAG + "config"])
        return FittedModels(
            win=loaded[WIN_MODEL],
            slip=loaded[SLIP_MODEL],
            config=config,
            cutoff=pd.Timestamp(tags[TAG + "cutoff"]),
            versions=versions,
        )
