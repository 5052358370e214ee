"""Shared CLI plumbing: options, loading the store and stage config, output helpers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any

import pandas as pd
import typer

from features.data.calendar import to_timestamp
from features.data.schema import CanonicalTables
from features.data.stages import ConfigError, StageConfig, load_stage_config

DbOption = Annotated[str, typer.Option("--db", help="DuckDB store file", envvar="PIPECAST_DB")]
StagesOption = Annotated[
    str | None,
    typer.Option(
        "--stages", help="stage configuration YAML (default: the seed's)", envvar="PIPECAST_STAGES"
    ),
]
AsOfOption = Annotated[
    str, typer.Option("--as-of", help="date (YYYY-MM-DD, end of that day) or timestamp")
]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON instead of tables")]

DEFAULT_DB = "pipecast.duckdb"


@dataclass(frozen=True)
class Context:
    tables: CanonicalTables
    stages: StageConfig


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(message, fg="red", err=True)
    return typer.Exit(code)


def parse_as_of(value: str) -> pd.Timestamp:
    try:
        return to_timestamp(value)
    except ValueError as err:
        raise fail(f"--as-of: cannot read {value!r} as a date: {err}") from None


def load_stages(path: str | None) -> StageConfig:
    try:
        return load_stage_config(path)
    except ConfigError as err:
        raise fail(str(err)) from None


def open_context(db: str, stages: str | None) -> Context:
    """Read every table of the store (read-only use) and the stage configuration."""
    from pathlib import Path

    from features.data.store import Store

    if not Path(db).exists():
        raise fail(f"{db}: no such store; run `pipecast load DIR --db {db}` first")
    with Store(db) as store:
        tables = store.tables()
    return Context(tables=tables, stages=load_stages(stages))


def _default(o: Any) -> Any:
    if isinstance(o, pd.Timestamp | date):
        return o.isoformat()
    if hasattr(o, "item"):
        return o.item()
    if pd.isna(o):
        return None
    return str(o)


def print_json(payload: Any) -> None:
    typer.echo(json.dumps(payload, default=_default, indent=2, allow_nan=False))
