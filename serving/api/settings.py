"""Settings of the API server: the shared settings plus what only a server needs."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import SettingsConfigDict

from features.settings import Settings


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
