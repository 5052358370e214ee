"""Fixtures shared by the test modules: the stage configuration, the CLI, generated data, stores.

- ``cfg``: the packaged stage configuration (the seed's stages and hygiene thresholds);
- ``cli``: a Typer ``CliRunner`` (use with ``serving.cli.app``);
- ``serve_tables``: make every CLI command read the given tables instead of a store file;
- ``generated_tables``: 400 generated deals (seed 3), the same for the whole session;
- ``load_store``: build a real store file with ``pipecast load`` (the importer and the store, as a
  user runs them).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from features.data.schema import CanonicalTables
from features.data.stages import StageConfig, load_stage_config


@pytest.fixture(scope="session")
def cfg() -> StageConfig:
    return load_stage_config()


@pytest.fixture
def cli() -> CliRunner:
    return CliRunner()


@pytest.fixture
def serve_tables(
    monkeypatch: pytest.MonkeyPatch, cfg: StageConfig
) -> Callable[[CanonicalTables], dict[str, Any]]:
    """``serve(tables)`` makes the CLI read ``tables`` (and ``cfg``); it returns a dict that
    records the ``--db`` each command asked for."""
    from serving.cli import common as cli_common

    def serve(tables: CanonicalTables) -> dict[str, Any]:
        seen: dict[str, Any] = {}

        def fake(db: str, stages: str | None) -> cli_common.Context:
            seen["db"] = db
            return cli_common.Context(tables, cfg)

        monkeypatch.setattr(cli_common, "open_context", fake)
        return seen

    return serve


@pytest.fixture(scope="session")
def generated_tables() -> CanonicalTables:
    from features.synthetic.generator import generate

    return generate(400, 3).tables


class LoadFailed(AssertionError):
    """``pipecast load`` refused or crashed; the message holds its exit code and output."""


@pytest.fixture(scope="session")
def load_store(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``load_store(folder, *options)`` runs ``pipecast load folder --db NEW`` and returns NEW."""
    from serving.cli import app

    def load(folder: Path, *options: str) -> Path:
        db = tmp_path_factory.mktemp("store") / "pipecast.duckdb"
        result = CliRunner().invoke(app, ["load", str(folder), "--db", str(db), *options])
        if result.exit_code != 0:
            raise LoadFailed(f"pipecast load {folder} exited {result.exit_code}: {result.output}")
        return db

    return load
