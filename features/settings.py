"""Settings of a pipecast deployment, read from the environment (``PIPECAST_*``) when first asked.

Nothing is read at import time: :func:`get_settings` builds the object on first use and caches it;
tests and the API pass their own :class:`Settings` instead. Command-line options win over these.

| variable | meaning | default |
| --- | --- | --- |
| ``PIPECAST_DB`` | DuckDB store file | ``pipecast.duckdb`` |
| ``PIPECAST_STAGES`` | stage configuration YAML | the seed's stages |
| ``PIPECAST_LOCK_TIMEOUT`` | seconds a load waits for another load before "busy" | ``5`` |
| ``PIPECAST_CURRENCY`` | corporate currency of exports that name none (ISO code) | none |
| ``PIPECAST_DEBUG`` | ``1``: the CLI shows tracebacks (as ``--debug``) | off |
| ``PIPECAST_MLFLOW_TRACKING_URI`` | MLflow tracking and registry store | ``sqlite:///mlflow.db`` |
| ``PIPECAST_MLFLOW_ARTIFACTS`` | where a local tracking store keeps artifacts | ``./mlruns`` |
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from features.errors import ConfigError

DEFAULT_DB = "pipecast.duckdb"


class Settings(BaseSettings):
    """Where pipecast keeps its data and models, and how long a writer waits for another."""

    model_config = SettingsConfigDict(env_prefix="PIPECAST_", extra="ignore", frozen=True)

    db: Path = Path(DEFAULT_DB)
    stages: Path | None = None
    lock_timeout: Annotated[float, Field(ge=0, le=3600)] = 5.0
    # The currency amounts are reported in when neither the export, the mapping, --currency nor
    # the store names one (a single-currency CRM needs none: its amounts are simply summed).
    currency: Annotated[str | None, Field(pattern=r"^[A-Z]{3}$")] = None
    debug: bool = False
    mlflow_tracking_uri: str = "sqlite:///mlflow.db"
    mlflow_artifacts: str = "./mlruns"


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        name = "PIPECAST_" + "_".join(str(p) for p in e["loc"]).upper()
        parts.append(f"{name}={e.get('input')!r}: {e['msg']}")
    return "; ".join(parts)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings from the environment, built once (``get_settings.cache_clear()`` re-reads)."""
    try:
        return Settings()
    except ValidationError as err:
        raise ConfigError(f"invalid environment setting: {_describe(err)}") from None
