"""One source file -> the canonical columns and types of its table, in named phases.

:func:`convert` runs ``COLUMN_PHASES`` (which file column feeds which canonical column, which
rows the mapping skips) and then ``VALUE_PHASES`` (the rows as canonical values). A snapshot
source (``Source.snapshot``) takes its own path, ``features.data.importer.snapshots``.
Problems are recorded on the run, never raised.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from features.data.importer.lookups import look_up
from features.data.importer.problems import printable
from features.data.importer.read import RawFile
from features.data.importer.run import BOOKKEEPING, ROW, SRC, ImportRun, SourceFile
from features.data.importer.values import (
    YEAR_RANGE,
    as_text_series,
    clean_text,
    map_category,
    map_stage,
    normalise_field_values,
    parse_amount,
    parse_bool,
    parse_currency,
    parse_times,
)
from features.data.mapping import ColumnRef, Conversions, as_text, fold
from features.data.schema import (
    CUSTOM_PREFIX,
    IMPORT_ONLY_COLUMNS,
    TIMESTAMP_COLUMNS,
    TRACKED_FIELDS,
    columns,
)

# Columns that must be present (and non-empty) in a source; the rest may be missing.
REQUIRED: dict[str, tuple[str, ...]] = {
    "deals": ("deal_id", "owner", "created_at", "stage"),
    "stage_history": ("deal_id", "stage", "entered_at"),
    "field_history": ("deal_id", "field", "changed_at"),
    "activities": ("activity_id", "deal_id", "type", "occurred_at"),
    "stakeholders": ("deal_id", "contact_id", "role", "added_at"),
    "targets": ("scope", "scope_id", "quarter", "amount"),
    "exchange_rates": ("currency", "rate"),
}
FLOAT_COLUMNS = {("deals", "amount"), ("targets", "amount"), ("exchange_rates", "rate")}
BOOL_COLUMNS = {("stage_history", "derived"), ("exchange_rates", "is_corporate")}
CURRENCY_COLUMNS = {("deals", "currency"), ("exchange_rates", "currency")}
# Salesforce's first dated rate of a currency starts on 0001-01-01: "since always".
SINCE_ALWAYS = f"{YEAR_RANGE[0]}-01-01"


@dataclass
class Conversion:
    """One source file on its way to canonical columns."""

    run: ImportRun
    table: str
    raw: pd.DataFrame  # the file's columns plus _src/_row; skipped rows are removed
    source: SourceFile
    conv: Conversions
    mapped: bool  # a mapping names this file (else it carries canonical names)
    duplicates: dict[str, tuple[int, ...]]
    picked: dict[str, str] = field(default_factory=dict)  # canonical column -> file column

    @property
    def file(self) -> str:
        return self.source.file

    def resolve(self, ref: ColumnRef) -> str | None:
        """The first of a column reference's alternatives that the file has."""
        for name in [ref] if isinstance(ref, str) else ref:
            if name in self.raw.columns:
                if name in self.duplicates:
                    places = ", ".join(str(i) for i in self.duplicates[name])
                    self.run.problem(
                        self.file,
                        f"the header names {name!r} more than once (columns {places}); "
                        "rename or remove the extra ones",
                        name,
                    )
                return name
        return None

    def use(self, canonical: str, name: str) -> None:
        self.picked[canonical] = name
        self.source.origin[canonical] = name


def start(run: ImportRun, table: str, raw: RawFile, conv: Conversions, mapped: bool) -> Conversion:
    """Register the file as a source of ``table`` and number its rows."""
    source = SourceFile(raw.name, is_csv=raw.is_csv, lines=raw.lines)
    index = run.add_source(table, source)
    frame = raw.frame  # read for this conversion alone: no copy
    frame[SRC] = np.full(len(frame), index, dtype=np.int32)
    frame[ROW] = np.arange(1, len(frame) + 1)
    return Conversion(run, table, frame, source, conv, mapped, raw.duplicates)


def convert(
    run: ImportRun, table: str, raw: RawFile, conv: Conversions, mapped: bool
) -> pd.DataFrame:
    """One file -> canonical columns (see the module docstring)."""
    step = start(run, table, raw, conv, mapped)
    for phase in COLUMN_PHASES:
        phase(step)
    out = assemble(step)
    for value_phase in VALUE_PHASES:
        out = value_phase(step, out)
    return out


# --- column phases --------------------------------------------------------------------------------
def resolve_columns(step: Conversion, wanted: list[str] | None = None) -> None:
    """Each canonical column -> a file column, a constant, or nothing (noted or a problem)."""
    run, table, conv = step.run, step.table, step.conv
    every = [*columns(table), *IMPORT_ONLY_COLUMNS.get(table, {})]
    for col in wanted if wanted is not None else every:
        if col in conv.constants:
            step.source.origin[col] = f"{col} (constant in mapping)"
            continue
        ref = conv.columns.get(col, None if step.mapped else col)
        required = col in REQUIRED[table] and col not in conv.defaults
        if ref is None:
            if required:
                run.problem(step.file, f"the mapping names no column for required {table}.{col}")
            continue
        name = step.resolve(ref)
        if name is not None:
            step.use(col, name)
            continue
        alts = ref if isinstance(ref, str) else " or ".join(ref)
        if required:
            run.problem(step.file, f"missing required column {alts!r} (for {table}.{col})", alts)
        elif step.mapped:
            run.note(f"{printable(step.file)}: no column {alts!r}; {table}.{col} left empty")


def resolve_custom(step: Conversion) -> None:
    """``custom_*`` deal columns: named by the mapping, or carried by a canonical file."""
    if step.table != "deals":
        return
    run = step.run
    if step.mapped:
        customs = run.mapping.custom_columns() if run.mapping else {}
    else:
        customs = {c: c for c in step.raw.columns if str(c).startswith(CUSTOM_PREFIX)}
    for col, user in customs.items():
        if user in step.raw.columns:
            step.use(col, step.resolve(user) or user)
        else:
            run.note(f"{printable(step.file)}: no column {user!r}; custom column {col} left empty")


def note_ignored(step: Conversion) -> None:
    """A canonical file's columns that are not canonical are ignored, and said so."""
    if step.mapped:
        return
    ignored = sorted(set(step.raw.columns) - set(step.picked.values()) - set(BOOKKEEPING))
    if ignored:
        step.run.note(f"{printable(step.file)}: ignored columns {[printable(c) for c in ignored]}")


def skip_rows(step: Conversion) -> None:
    """Drop the rows the mapping's ``skip`` rule names, by their raw values, before all else."""
    if not step.conv.skip:
        return
    drop = np.zeros(len(step.raw), dtype=bool)
    for col, values in step.conv.skip.items():
        if col not in step.picked:
            continue
        s = clean_text(step.raw[step.picked[col]])
        wanted = {fold(as_text(v)) for v in values if v is not None}
        drop |= s.map(fold, na_action="ignore").isin(wanted).to_numpy()
        if any(v is None for v in values):
            drop |= s.isna().to_numpy()
    if drop.any():
        step.run.note(
            f"{printable(step.file)}: skipped {int(drop.sum())} rows by the mapping's skip rule"
        )
        step.raw = step.raw.loc[~drop]


COLUMN_PHASES: tuple[Callable[[Conversion], None], ...] = (
    resolve_columns,
    resolve_custom,
    note_ignored,
    skip_rows,
)


# --- value phases ---------------------------------------------------------------------------------
def assemble(step: Conversion) -> pd.DataFrame:
    """The picked columns under canonical names, plus the mapping's constants and defaults."""
    raw, conv = step.raw, step.conv
    raw = raw.reset_index(drop=True)  # (skipped rows leave gaps)
    out = raw[[SRC, ROW]].copy()
    for col, user in step.picked.items():
        out[col] = raw[user]
    for col, value in conv.constants.items():
        out[col] = as_text(value)
    for col, value in conv.defaults.items():
        if col in out:
            out[col] = clean_text(out[col]).fillna(as_text(value))
        else:
            out[col] = as_text(value)
    step.run.provide(step.table, [c for c in out.columns if c not in BOOKKEEPING])
    return out


def parse_columns(step: Conversion, out: pd.DataFrame) -> pd.DataFrame:
    """Every column to its canonical type: timestamps, amounts, flags, stages, categories, text."""
    run, table, conv = step.run, step.table, step.conv
    tz = run.mapping.timezone if run.mapping else "UTC"
    for col in [c for c in out.columns if c not in BOOKKEEPING]:
        if (table, col) == ("exchange_rates", "valid_from"):
            out[col] = since_always(out[col])
        if col in TIMESTAMP_COLUMNS[table] or col in IMPORT_ONLY_COLUMNS.get(table, {}):
            out[col] = parse_times(run, table, out, col, conv.dates.get(col), tz)
        elif (table, col) in CURRENCY_COLUMNS:
            out[col] = parse_currency(run, table, out, col)
        elif (table, col) in FLOAT_COLUMNS:
            out[col] = parse_amount(run, table, out, col)
        elif (table, col) in BOOL_COLUMNS:
            out[col] = parse_bool(run, table, out, col)
        elif col == "stage":
            out[col] = clean_text(out[col])
            out[col] = map_stage(run, table, out, conv.values.get(col, {}))
        elif col in columns(table):
            out[col] = clean_text(out[col])
            out[col] = map_category(run, table, col, out, conv.values.get(col, {}))
        elif out[col].dtype == "str" or out[col].dtype == object:
            out[col] = clean_text(out[col])  # a custom column of text
    return out


def since_always(values: pd.Series) -> pd.Series:
    """Start dates before the years pipecast stores (Salesforce's 0001-01-01) mean "since
    always": the first day of those years."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return values
    text = clean_text(values)
    year = pd.to_numeric(text.str.extract(r"^\s*([0-9]{1,4})-", expand=False), errors="coerce")
    return text.where(~(year < YEAR_RANGE[0]), SINCE_ALWAYS)


def apply_lookups(step: Conversion, out: pd.DataFrame) -> pd.DataFrame:
    """Cells replaced through the mapping's lookups (``features.data.importer.lookups``)."""
    for col, spec in step.conv.lookups.items():
        if col in out.columns:
            user = step.source.user_column(col) or col
            out[col] = look_up(step.run, step.table, out, col, spec, user)
    return out


def field_history_values(step: Conversion, out: pd.DataFrame) -> pd.DataFrame:
    """Field history: drop fields the mapping does not convert; values in canonical text."""
    if step.table != "field_history" or "field" not in out:
        return out
    if step.mapped and "field" in step.conv.values:
        out = drop_unmapped_fields(step, out)
    for col in ("old_value", "new_value"):
        if col in out:
            out[col] = normalise_field_values(
                step.run, step.table, out, col, out["field"], step.conv.dates
            )
    return out


def drop_unmapped_fields(step: Conversion, out: pd.DataFrame) -> pd.DataFrame:
    """Changes of fields the mapping does not convert are dropped and counted, not an error."""
    keep = out["field"].isin(list(TRACKED_FIELDS)).to_numpy()
    if keep.all():
        return out
    dropped = as_text_series(out.loc[~keep, "field"]).fillna("(empty)").value_counts()
    detail = ", ".join(f"{printable(str(k))}: {v}" for k, v in dropped.items())
    step.run.note(
        f"{printable(step.file)}: dropped {int((~keep).sum())} field_history rows for unmapped "
        f"fields ({detail})"
    )
    return out.loc[keep].reset_index(drop=True)


VALUE_PHASES: tuple[Callable[[Conversion, pd.DataFrame], pd.DataFrame], ...] = (
    apply_lookups,
    parse_columns,
    field_history_values,
)
