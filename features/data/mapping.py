"""Mapping files: how a foreign CRM export becomes the canonical tables of ``features.data.schema``.

A mapping is a user-edited YAML file. It names the source file(s) of each canonical table, renames
columns, converts values (stage names, outcomes, roles, activity types, field names), declares
date formats, the export's time zone and the files' text encoding, maps user columns into
``custom_<name>`` deal columns, and declares *snapshot* tables (one row per save of a record,
stating several fields at once) from which field changes are derived. It is validated on load;
errors name the file and the key, like the stage configuration.

Format (every key but ``tables`` optional)::

    name: Salesforce
    timezone: UTC               # zone of timestamps that carry no offset
    encoding: windows-1252      # text encoding of every file (default: UTF-8, see the importer)
    exported_at: 2024-06-30T18:00:00Z
    currency: USD               # the corporate currency, when the export does not name it
    stages: {Prospecting: qualification, Closed Won: closed_won}   # CRM stage -> stage key
    tables:
      deals:
        sources: [{file: Opportunity.csv}]
        columns: {deal_id: Id, stage: StageName, created_at: CreatedDate}  # canonical: source
        values: {forecast_category: {Best Case: best_case}}               # per canonical column
        dates: {created_at: "%Y-%m-%dT%H:%M:%S.%f%z"}                     # pandas format
        custom: {lead_source: LeadSource}                                 # -> custom_lead_source
        lookups:                  # a column's cells are keys of another file of the export
          owner: {file: User.csv, key: Id, value: [Name, "{FirstName} {LastName}"]}
          team:                   # a chain: the owner's role, then the role's name
            {file: User.csv, key: Id, value: UserRoleId, unmatched: empty,
             then: {file: UserRole.csv, key: Id, value: Name}}
      field_history:
        sources:
          - {file: OpportunityFieldHistory.csv, columns: {field: Field, ...}}
          - file: OpportunityHistory.csv          # a snapshot table
            columns: {deal_id: OpportunityId, changed_at: CreatedDate}
            snapshot: {amount: Amount, expected_close_date: CloseDate}   # tracked field: column
            previous: {amount: PrevAmount}        # the value before the row, where exported
      activities:
        unknown_deals: drop     # rows naming deals not in the export: error (default) or drop
        sources:
          - {file: Task.csv, columns: {type: TaskSubtype}, skip: {type: [Task, null]}}
          - {file: Event.csv, constants: {type: meeting}, encoding: utf-16}

Column keys are canonical names (and ``deals.modified_at``, the CRM's last modification, which the
importer reads for the export time and does not store); a value may list alternatives (the first
present in the file is used). A date format may list alternatives too (each value takes the first
that parses it). A lookup replaces a column's cells by the ``value`` of the row whose ``key``
matches in another file (``then``: look that up again); a value alternative with braces joins
columns (``"{FirstName} {LastName}"``). Cells not found stay as they are (``unmatched: keep``) or
become empty (``unmatched: empty``); a missing lookup file is noted.

Table-level ``columns``/``values``/``dates``/``constants``/``defaults``/``skip`` apply to
every source of the table; a source's own entries override them. In ``field_history``, ``dates``
may also name a date-valued tracked field (``expected_close_date``): the format of its values.

Value maps and stage maps match case- and space-insensitively (:func:`fold`); a canonical value
(``fit``) or its label (``Status quo``) needs no entry. Targets of a value map must be canonical
values of the column (``ENUMS``); two keys that differ only in case or spacing must agree.

A value written as ``"?"`` is a place ``pipecast mapping suggest`` could not fill: a mapping that
still holds one is refused, naming every such key.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from features.data.config import ConfigError, KeyedError, read_yaml, validate
from features.data.schema import (
    CURRENCY_CODE,
    CUSTOM_PREFIX,
    DATE_FIELDS,
    IMPORT_ONLY_COLUMNS,
    TABLE_SCHEMAS,
    TIMESTAMP_COLUMNS,
    TRACKED_FIELDS,
    ActivityType,
    ForecastCategory,
    LossReason,
    Outcome,
    StakeholderRole,
    TargetScope,
    columns,
)

_NAME = r"^[a-z][a-z0-9_]*$"

# Columns whose values are one of a fixed set: a value map may only map onto these.
ENUMS: dict[tuple[str, str], tuple[str, ...]] = {
    ("deals", "forecast_category"): tuple(e.value for e in ForecastCategory),
    ("deals", "outcome"): tuple(e.value for e in Outcome),
    ("deals", "loss_reason"): tuple(e.value for e in LossReason),
    ("field_history", "field"): TRACKED_FIELDS,
    ("activities", "type"): tuple(e.value for e in ActivityType),
    ("stakeholders", "role"): tuple(e.value for e in StakeholderRole),
    ("targets", "scope"): tuple(e.value for e in TargetScope),
}
# A snapshot source takes these from the snapshot itself.
SNAPSHOT_DERIVED = ("field", "old_value", "new_value")

_SPACES = re.compile(r"[\s_]+")


def fold(value: str) -> str:
    """The form in which mapped values are compared: case, spacing and underscores ignored."""
    return _SPACES.sub(" ", value).strip().casefold()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# A cell value in a mapping file: YAML may give numbers or booleans (e.g. IsWon: true).
Scalar = str | int | float | bool
ColumnRef = str | list[str]
# What ``pipecast mapping suggest`` writes where it could not decide.
UNFILLED = "?"


def as_text(value: Any) -> Any:
    """A mapping file's scalar as the text a CSV cell would hold (None stays None)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int | float) else value


def known_encoding(value: str | None) -> str | None:
    """``value`` if Python can decode text in that encoding (ValueError otherwise)."""
    if value is None:
        return None
    try:
        codecs.lookup(value)
    except LookupError:
        raise ValueError(f"unknown text encoding {value!r} (e.g. utf-8, windows-1252)") from None
    return value


Encoding = Annotated[str | None, AfterValidator(known_encoding)]


def currency_code(value: str | None) -> str | None:
    """An ISO 4217 code in upper case (ValueError otherwise)."""
    if value is None:
        return None
    code = value.strip().upper()
    if not re.fullmatch(CURRENCY_CODE, code):
        raise ValueError(f"{value!r} is not a currency code (three letters, e.g. USD, MXN, EUR)")
    return code


CurrencyCode = Annotated[str | None, AfterValidator(currency_code)]
_PLAIN_FILE = "must be a file name in the export directory, not a path"


class Lookup(_Strict):
    """Cells of a column as keys of another file: replaced by that row's ``value``."""

    file: Annotated[str, Field(min_length=1)]
    key: ColumnRef
    value: ColumnRef
    encoding: Encoding = None
    unmatched: Literal["keep", "empty"] = "keep"
    then: Lookup | None = None

    @field_validator("file")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if "/" in value or "\\" in value:
            raise ValueError(_PLAIN_FILE)
        return value


class Conversions(_Strict):
    """What a table and each of its sources may declare; a source's entries override the table's."""

    columns: dict[str, ColumnRef] = {}
    values: dict[str, dict[str, Scalar | None]] = {}
    dates: dict[str, str | list[str]] = {}
    constants: dict[str, Scalar] = {}
    defaults: dict[str, Scalar] = {}
    skip: dict[str, list[Scalar | None]] = {}
    lookups: dict[str, Lookup] = {}

    @field_validator("values", mode="before")
    @classmethod
    def _text_keys(cls, value: Any) -> Any:
        """YAML reads ``true:`` or ``10:`` as non-text keys; cells are text, so compare as text."""
        if isinstance(value, dict):
            return {
                col: {as_text(k): v for k, v in m.items()} if isinstance(m, dict) else m
                for col, m in value.items()
            }
        return value


class Source(Conversions):
    """One file of the export feeding a canonical table."""

    file: Annotated[str, Field(min_length=1)]
    encoding: Encoding = None
    snapshot: dict[str, ColumnRef] = {}
    previous: dict[str, ColumnRef] = {}

    @field_validator("file")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if "/" in value or "\\" in value:
            raise ValueError(_PLAIN_FILE)
        return value

    @property
    def is_snapshot(self) -> bool:
        return bool(self.snapshot)


class TableMapping(Conversions):
    sources: Annotated[list[Source], Field(min_length=1)]
    custom: dict[Annotated[str, Field(pattern=_NAME)], str] = {}
    collapse_repeats: bool = False
    unknown_deals: Literal["error", "drop"] = "error"

    def merged(self, source: Source) -> Conversions:
        """The conversions in force for one source: the table's, overridden by the source's."""
        return Conversions(
            columns={**self.columns, **source.columns},
            values={**self.values, **source.values},
            dates={**self.dates, **source.dates},
            constants={**self.constants, **source.constants},
            defaults={**self.defaults, **source.defaults},
            skip={**self.skip, **source.skip},
            lookups={**self.lookups, **source.lookups},
        )


def _check_conversions(table: str, where: str, conv: Conversions) -> None:
    """Every canonical column a mapping names must exist; report the exact key if not."""
    known = set(columns(table)) | set(IMPORT_ONLY_COLUMNS.get(table, {}))
    for part in ("columns", "values", "dates", "constants", "defaults", "skip", "lookups"):
        for col in getattr(conv, part):
            if col not in known and not (part == "dates" and table == "field_history"):
                raise KeyedError(
                    f"tables.{table}.{where}{part}.{col}",
                    f"unknown column of {table}; known: {sorted(known)}",
                )
    dated = set(TIMESTAMP_COLUMNS[table]) | (DATE_FIELDS if table == "field_history" else set())
    dated |= set(IMPORT_ONLY_COLUMNS.get(table, {}))  # modified_at
    for col in conv.dates:
        if col not in dated:
            raise KeyedError(f"tables.{table}.{where}dates.{col}", "not a date/time column")
    for col, value_map in conv.values.items():
        _check_value_map(f"tables.{table}.{where}values.{col}", value_map, ENUMS.get((table, col)))


def _check_value_map(key: str, value_map: dict[str, Any], allowed: Iterable[str] | None) -> None:
    """Targets must be canonical values; keys equal after :func:`fold` must agree."""
    allowed = None if allowed is None else tuple(allowed)
    seen: dict[str, tuple[str, Any]] = {}
    for k, target in value_map.items():
        if allowed is not None and target is not None and as_text(target) not in allowed:
            raise KeyedError(f"{key}.{k}", f"{target!r} is not one of {list(allowed)}")
        folded = fold(str(k))
        if folded in seen and seen[folded][1] != target:
            other = seen[folded][0]
            raise KeyedError(
                f"{key}.{k}", f"{k!r} and {other!r} differ only in case or spacing, not in target"
            )
        seen[folded] = (str(k), target)


def _check_snapshot(table: str, i: int, source: Source, table_columns: Iterable[str]) -> None:
    where = f"tables.{table}.sources.{i}"
    if source.is_snapshot and table != "field_history":
        raise KeyedError(f"{where}.snapshot", "snapshot tables feed field_history only")
    for col in source.snapshot:
        if col not in TRACKED_FIELDS:
            raise KeyedError(
                f"{where}.snapshot.{col}", f"not a tracked field; known: {list(TRACKED_FIELDS)}"
            )
    for col in source.previous:
        if col not in source.snapshot:
            raise KeyedError(f"{where}.previous.{col}", "not a field of this source's snapshot")
    if source.is_snapshot:
        named = set(table_columns) | set(source.columns) | set(source.constants)
        clash = sorted(named & set(SNAPSHOT_DERIVED))
        if clash:
            raise KeyedError(
                f"{where}.columns",
                f"a snapshot source derives {clash} itself: name them on the other sources only",
            )


class Mapping(_Strict):
    name: str = "mapping"
    timezone: str = "UTC"
    encoding: Encoding = None
    exported_at: datetime | None = None
    currency: CurrencyCode = None
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
    def _consistent(self) -> Mapping:
        _check_value_map("stages", self.stages, None)
        for table, tm in self.tables.items():
            for where, conv in _conversions_of(tm):
                _check_conversions(table, where, conv)
            for i, source in enumerate(tm.sources):
                _check_snapshot(table, i, source, tm.columns)
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


def _conversions_of(tm: TableMapping) -> Iterator[tuple[str, Conversions]]:
    yield "", tm
    for i, source in enumerate(tm.sources):
        yield f"sources.{i}.", source


def unfilled_keys(data: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose value is the ``"?"`` that ``pipecast mapping suggest`` left to fill."""
    if isinstance(data, dict):
        items: Iterable[tuple[Any, Any]] = data.items()
    elif isinstance(data, list):
        items = enumerate(data)
    else:
        return [prefix] if data == UNFILLED else []
    return [
        k for key, v in items for k in unfilled_keys(v, f"{prefix}.{key}" if prefix else str(key))
    ]


def parse_mapping(data: Any, source: str = "<mapping>") -> Mapping:
    """Validate already-parsed YAML data; ``source`` names the file in error messages."""
    todo = unfilled_keys(data)
    if todo:
        shown = "\n".join(f"  {k}: fill in the '?'" for k in todo[:30])
        more = f"\n  ... and {len(todo) - 30} more" if len(todo) > 30 else ""
        raise ConfigError(
            f"{source}: {len(todo)} value{'s are' if len(todo) > 1 else ' is'} still marked '?' "
            f"(left by pipecast mapping suggest):\n{shown}{more}"
        )
    return validate(Mapping, data, source, "mapping", "tables")


def load_mapping(path: str | Path) -> Mapping:
    """Load and validate a mapping file; raises ``ConfigError`` naming the file and the key."""
    return parse_mapping(read_yaml(path, "mapping"), str(path))
