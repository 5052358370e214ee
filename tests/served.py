"""A served world for API, browser and end-to-end tests: a real store, a real MLflow (SQLite) with a
trained champion (a fast recipe), and API keys for every role."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from features.data.loading import load_export
from features.data.stages import load_stage_config
from features.data.store import Store
from features.synthetic.generator import generate, write_dataset
from serving.api.settings import ApiSettings
from serving.auth import KeyStore, Role

# A quick recipe: these tests check serving, not model quality.
FAST: dict[str, Any] = {
    "win": {"n_estimators": 40, "learning_rate": 0.1},
    "slip": {"n_estimators": 40, "learning_rate": 0.1},
}

# The smallest forecast the forecast model allows: serving is tested here, not the sampler.
FORECAST: dict[str, Any] = {
    "forecast_draws": 50,
    "forecast_tune": 50,
    "forecast_chains": 1,
    "forecast_scenarios": 1000,
    "forecast_history_scorer": "stage-history",
}


@dataclass
class World:
    root: Path
    db: Path
    tracking_uri: str
    artifacts: str
    keys: dict[str, str]  # role label -> bearer token
    rep: str
    team: str
    other_rep: str
    other_team: str
    registered: dict[str, str] = field(default_factory=dict)  # model -> version trained

    def settings(self, **over: Any) -> ApiSettings:
        values: dict[str, Any] = {
            "db": self.db,
            "keys_file": self.root / "keys.json",
            "jobs_dir": self.root / "jobs",
            "mlflow_tracking_uri": self.tracking_uri,
            "mlflow_artifacts": self.artifacts,
            "model_refresh_seconds": 0,
            **FORECAST,
        }
        return ApiSettings(**{**values, **over})

    def env(self, **over: str) -> dict[str, str]:
        """The same settings as ``PIPECAST_*`` variables, for a real server process."""
        values = {
            "PIPECAST_DB": str(self.db),
            "PIPECAST_KEYS_FILE": str(self.root / "keys.json"),
            "PIPECAST_JOBS_DIR": str(self.root / "jobs"),
            "PIPECAST_MLFLOW_TRACKING_URI": self.tracking_uri,
            "PIPECAST_MLFLOW_ARTIFACTS": self.artifacts,
            **{f"PIPECAST_{k.upper()}": str(v) for k, v in FORECAST.items()},
        }
        return {**values, **over}

    def headers(self, who: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"} if who else {}


def build_world(root: Path, *, deals: int = 900, seed: int = 17, champion: bool = True) -> World:
    """Generate and load a store; train and register a champion (unless ``champion=False``)."""
    write_dataset(generate(deals, seed=seed), root / "export")
    db = root / "store.duckdb"
    stages = load_stage_config()
    load_export(root / "export", db, stages=stages)
    with Store(db) as store:
        frame = store.read("deals")
    by_team = frame.groupby("team")["owner"].unique()
    team, other_team = str(by_team.index[0]), str(by_team.index[1])
    rep, other_rep = str(by_team.iloc[0][0]), str(by_team.iloc[1][0])
    keystore = KeyStore(root / "keys.json")
    keys = {
        "revops": keystore.create(Role.REVOPS)[1],
        "manager": keystore.create(Role.MANAGER, team=team)[1],
        "rep": keystore.create(Role.REP, owner=rep, team=team)[1],
        "other_rep": keystore.create(Role.REP, owner=other_rep, team=other_team)[1],
        "bad": "pc_not-a-key",
    }
    world = World(
        root=root,
        db=db,
        tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        artifacts=str(root / "mlruns"),
        keys=keys,
        rep=rep,
        team=team,
        other_rep=other_rep,
        other_team=other_team,
    )
    if champion:
        world.registered = train_champion(world)
    return world


def train_champion(world: World) -> dict[str, str]:
    from training.config import make_config
    from training.tracking import TrackingTarget, log_and_register
    from training.train import train

    with Store(world.db) as store:
        tables = store.tables()
    result = train(tables, load_stage_config(), config=make_config(**FAST))
    registered = log_and_register(result, TrackingTarget(world.tracking_uri, world.artifacts))
    return {name: r.version for name, r in registered.items()}
