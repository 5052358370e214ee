"""Mapping files: how a foreign CRM export becomes the canonical tables of ``features.data.schema``.

A mapping is a user-edited YAML file. It names the source file(s) of each canonical table, renames
columns, converts values (stage names, outcomes, roles, activity types, field names), declares
date formats and the export's time zone, and maps user columns into ``custom_<name>`` deal columns.
It is validated on load; errors name the file and the key, like the stage configuration.

Format (every key but ``tables`` optional)::

    name: Salesforce
    timezone: UTC               # zone of timestamps that carry no offset
    exported_at: 2024-06-30T18:00:00Z
    stages: {Prospecting: qualification, Closed Won: closed_won}   # CRM stage -> stage key
    tables:
      deals:
        sources: [{file: Opportunity.csv}]
        columns: {deal_id: Id, stage: StageName, created_at: CreatedDate}  # canonical: source
        values: {forecast_category: {Best Case: best_case}}               # per canonical column
        dates: {created_at: "%Y-%m-%dT%H:%M:%S.%f%z"}                     # pandas format
        custom: {lead_source: LeadSource}                                 # -> custom_lead_source
      activities:
        unknown_deals: drop     # rows naming deals not in the export: error (default) or drop
        sources:
          - {file: Task.csv, columns: {type: TaskSubtype}, skip: {type: [Task, null]}}
          - {file: Event.csv, constants: {type: meeting}}

Column keys are canonical names; a value may list alternatives (the first present in the file is
used). Table-level ``columns``/``values``/``dates``/``constants``/``defaults``/``skip`` apply to
every source of the table; a source's own entries override them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from features.data.config import KeyedError, read_yaml, validate
from features.data.schema import CUSTOM_PREFIX, TABLE_SCHEMAS, TIMESTAMP_COLUMNS, columns

_NAME = r"^[a-z][a-z0-9_]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# A cell value in a mapping file: YAML may give numbers or booleans (e.g. IsWon: true).
Scalar = str | int | float | bool
ColumnRef = str | list[str]


class _Conversions(_Strict):
    """What a table and each of its sources may declare; a source's entries override the table's."""

    columns: dict[str, ColumnRef] = {}
    values: dict[str, dict[str, Scalar | None]] = {}
    dates: dict[str, str] = {}
    constants: dict[str, Scalar] = {}
    defaults: dict[str, Scalar] = {}
    skip: dict[str, list[Scalar | None]] = {}

    @field_validator("values", mode="before")
    @classmethod
    def _text_keys(cls, value: Any) -> Any:
        """YAML reads ``true:`` or ``10:`` as non-text keys; cells are text, so compare as text."""
        if isinstance(value, dict):
            return {
                col: {_text(k): v for k, v in m.items()} if isinstance(m, dict) else m
                for col, m in value.items()
            }
        return value


def _text(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int | float) else value


class Source(_Conversions):
    """One file of the export feeding a canonical table."""

    file: Annotated[str, Field(min_length=1)]

    @field_validator("file")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if "/" in value or "\\" in value:
            raise ValueError("must be a file name in the export directory, not a path")
        return value


class TableMapping(_Conversions):
    sources: Annotated[list[Source], Field(min_length=1)]
    custom: dict[Annotated[str, Field(pattern=_NAME)], str] = {}
    collapse_repeats: bool = False
    unknown_deals: Literal["error", "drop"] = "error"

    def merged(self, source: Source) -> _Conversions:
        """The conversions in force for one source: the table's, overridden by the source's."""
        return _Conversions(
            columns={**self.columns, **source.columns},
            values={**self.values, **source.values},
            dates={**self.dates, **source.dates},
            constants={**self.constants, **source.constants},
            defaults={**self.defaults, **source.defaults},
            skip={**self.skip, **source.skip},
        )


class Mapping(_Strict):
    name: str = "mapping"
    timezone: str = "UTC"
    exported_at: datetime | None = None
    stages: dict[str, str] = {}
    tables: dict[str, TableMapping]

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @field_validator("exported_at")
    @classmethod
    def _naive_utc(cls, value: datetime | None) -> datetime | None:
        """Stored timestamps are naive UTC; an offset-less value is taken as UTC."""
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    @field_validator("tables")
    @classmethod
    def _known_tables(cls, value: dict[str, TableMapping]) -> dict[str, TableMapping]:
        unknown = sorted(set(value) - set(TABLE_SCHEMAS))
        if unknown:
            raise ValueError(f"unknown tables {unknown}; known: {list(TABLE_SCHEMAS)}")
        if "deals" not in value:
            raise ValueError("the 'deals' table needs a mapping")
        return value

    @model_validator(mode="after")
    def _known_columns(self) -> Mapping:
        """Every canonical column a mapping names must exist; report the exact key if not."""
        for table, tm in self.tables.items():
            known = set(columns(table))
            for where, conv in [
                ("", tm),
                *((f"sources.{i}.", s) for i, s in enumerate(tm.sources)),
            ]:
                for part in ("columns", "values", "dates", "constants", "defaults", "skip"):
                    for col in getattr(conv, part):
                        if col not in known:
                            raise KeyedError(
                                f"tables.{table}.{where}{part}.{col}",
                                f"unknown column of {table}; known: {sorted(known)}",
                            )
                for col in conv.dates:
                    if col not in TIMESTAMP_COLUMNS[table]:
                        raise KeyedError(
                            f"tables.{table}.{where}dates.{col}", "not a date/time column"
                        )
            if tm.custom and table != "deals":
                raise KeyedError(f"tables.{table}.custom", "custom columns exist on deals only")
            if tm.collapse_repeats and table != "stage_history":
                raise KeyedError(
                    f"tables.{table}.collapse_repeats", "only stage_history can collapse repeats"
                )
            if tm.unknown_deals == "drop" and table in ("deals", "targets"):
                raise KeyedError(f"tables.{table}.unknown_deals", "only for history tables")
        return self

    def table(self, name: str) -> TableMapping | None:
        return self.tables.get(name)

    def custom_columns(self) -> dict[str, str]:
        """Stored column name (``custom_<name>``) -> source column."""
        deals = self.tables["deals"]
        return {f"{CUSTOM_PREFIX}{k}": v for k, v in deals.custom.items()}


def parse_mapping(data: Any, source: str = "<mapping>") -> Mapping:
    """Validate already-parsed YAML data; ``source`` names the file in error messages."""
    return validate(Mapping, data, source, "mapping", "tables")


def load_mapping(path: str | Path) -> Mapping:
    """Load and validate a mapping file; raises ``ConfigError`` naming the file and the key."""
    return parse_mapping(read_yaml(path, "mapping"), str(path))
