"""Settings of the API server: the shared settings plus what only a server needs."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic_settings import SettingsConfigDict

from features.settings import Settings
from forecasting.model import ModelConfig

_SAMPLER = ModelConfig.model_fields


class ApiSettings(Settings):
    """``PIPECAST_*`` environment variables; see the README's API section."""

    model_config = SettingsConfigDict(env_prefix="PIPECAST_", extra="ignore", frozen=True)

    keys_file: Path = Path("pipecast-keys.json")
    # Where background jobs (retrains) write their status, so every worker can answer for them.
    jobs_dir: Path = Path(".pipecast-jobs")
    # How often a worker checks whether the champion alias moved (seconds).
    model_refresh_seconds: float = 5.0
    # Largest upload accepted by POST /v1/data/import (bytes).
    max_upload_bytes: int = 200 * 1024 * 1024
    # The quarter forecast (GET /v1/forecast): sampler size and scenarios. A cold forecast fits
    # the posterior (minutes on the 3,000-deal demo at the defaults); tests use the minimum.
    # The sampler's defaults are the model's own (one place).
    forecast_draws: int = _SAMPLER["draws"].default
    forecast_tune: int = _SAMPLER["tune"].default
    forecast_chains: int = _SAMPLER["chains"].default
    forecast_scenarios: int = 4000
    # How past quarters' deals are scored for the fit: the training models refitted per quarter,
    # or historical stage win rates (much faster; tests).
    forecast_history_scorer: Literal["models", "stage-history"] = "models"
