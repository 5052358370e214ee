"""Read a CRM export directory into validated canonical tables, reporting every problem at once.

An export is a directory of CSV or Parquet files. Without a mapping the files carry the canonical
names (``deals.csv``, ``stage_history.parquet``, ...; only ``deals`` is required; subfolders are
ignored). With a mapping (``features.data.mapping``) any file names and columns are converted.

What is derived, and why:

- ``outcome`` missing or empty: from the kind (open/won/lost) of the deal's stage.
- ``closed_at`` on an open deal is dropped: some CRMs (Salesforce ``CloseDate``, HubSpot
  ``Close Date``) use one column for both the expected and the actual close date.
- ``observed_at`` (when the deal row was true) is the export time: the ``exported_at`` argument,
  else the mapping's ``exported_at``, else a non-empty ``observed_at`` column of the file, else the
  latest *recorded* timestamp in the export (deals created/closed, stage and field changes,
  stakeholders added). Activities and planned dates are left out: CRMs export scheduled meetings and
  expected close dates in the future. Deterministic: the same files give the same value.
- A deals-only export (no stage history file): ``history_source='derived'`` and stage history holds
  only what the deal row proves, every row ``derived=True``: stage unknown (NULL) at ``created_at``;
  the current stage at ``observed_at`` for an open deal ("seen there at export"); the closed stage
  at ``closed_at`` for a closed deal (observed_at when unknown). The closing time is known, yet the
  row stays ``derived=True`` because it was inferred from the deal row, not read from a CRM history
  record, so a later import with real history can be told apart from it. No field history is
  made up.

Problems name the file, the 1-based data row (and the CSV line, row + 1 when no quoted field spans
lines), the user's own column name, and what is wrong. All checks are vectorised masks; only the
failing rows are formatted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.errors as pa_errors

from features.data.mapping import Mapping, TableMapping, _Conversions
from features.data.schema import (
    CUSTOM_PREFIX,
    PRIMARY_KEYS,
    TABLE_SCHEMAS,
    TIMESTAMP_COLUMNS,
    TRACKED_FIELDS,
    ActivityType,
    CanonicalTables,
    ForecastCategory,
    HistorySource,
    LossReason,
    Outcome,
    StakeholderRole,
    TargetScope,
    columns,
    empty_frame,
)
from features.data.stages import StageConfig, StageKind, load_stage_config

MAX_PRINTED_PROBLEMS = 50
_SRC, _ROW = "_src", "_row"

# Columns that must be present (and non-empty) in a source; the rest may be missing.
REQUIRED: dict[str, tuple[str, ...]] = {
    "deals": ("deal_id", "owner", "created_at", "stage"),
    "stage_history": ("deal_id", "stage", "entered_at"),
    "field_history": ("deal_id", "field", "changed_at"),
    "activities": ("activity_id", "deal_id", "type", "occurred_at"),
    "stakeholders": ("deal_id", "contact_id", "role", "added_at"),
    "targets": ("scope", "scope_id", "quarter", "amount"),
}
# stage_history.stage may be NULL (unknown) in canonical files, but a mapped CRM row names a stage.
_NULLABLE_REQUIRED = {("stage_history", "stage")}

ENUMS: dict[tuple[str, str], list[str]] = {
    ("deals", "forecast_category"): [e.value for e in ForecastCategory],
    ("deals", "outcome"): [e.value for e in Outcome],
    ("deals", "loss_reason"): [e.value for e in LossReason],
    ("field_history", "field"): list(TRACKED_FIELDS),
    ("activities", "type"): [e.value for e in ActivityType],
    ("stakeholders", "role"): [e.value for e in StakeholderRole],
    ("targets", "scope"): [e.value for e in TargetScope],
}
_FLOAT_COLUMNS = {("deals", "amount"), ("targets", "amount")}
_BOOL_COLUMNS = {("stage_history", "derived")}
_DATE_FIELDS = {"expected_close_date", "next_step_date"}
_HISTORY_TABLES = ("stage_history", "field_history", "activities", "stakeholders")
_TRUE = {"true", "t", "1", "yes", "y"}
_FALSE = {"false", "f", "0", "no", "n"}


@dataclass(frozen=True)
class ImportProblem:
    """One thing wrong with the export, located as the user sees it."""

    file: str
    row: int | None
    column: str | None
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.row is not None:
            where += f", row {self.row}"
            if self.file.lower().endswith(".csv"):
                where += f" (line {self.row + 1})"
        if self.column is not None:
            where += f", column {self.column!r}"
        return f"{where}: {self.message}"


class ImportValidationError(ValueError):
    """The export cannot be imported; ``problems`` lists everything wrong, not just the first."""

    def __init__(self, problems: list[ImportProblem]) -> None:
        self.problems = problems
        super().__init__(self._render())

    def _render(self) -> str:
        n = len(self.problems)
        lines = [f"{n} problem{'s' if n != 1 else ''} in the export:"]
        lines += [f"  - {p}" for p in self.problems[:MAX_PRINTED_PROBLEMS]]
        if n > MAX_PRINTED_PROBLEMS:
            lines.append(f"  ... and {n - MAX_PRINTED_PROBLEMS} more")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self._render()


@dataclass(frozen=True)
class ImportResult:
    tables: CanonicalTables
    notes: list[str]


@dataclass(frozen=True)
class _Source:
    """Where a table's rows came from: the file and each canonical column's user name."""

    file: str
    origin: dict[str, str]


@dataclass
class _Run:
    """State of one import: problems and notes accumulate; nothing is raised until the end."""

    stages: StageConfig
    mapping: Mapping | None
    problems: list[ImportProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sources: dict[str, list[_Source]] = field(default_factory=dict)
    _cells: set[tuple[str, int, str | None]] = field(default_factory=set)

    def problem(self, file: str, message: str, column: str | None = None) -> None:
        self.problems.append(ImportProblem(file, None, column, message))

    def report(
        self,
        table: str,
        frame: pd.DataFrame,
        mask: pd.Series | np.ndarray,
        column: str | None,
        message: Callable[[Any], str],
        values: pd.Series | None = None,
    ) -> None:
        """Add one problem per masked row; ``message`` gets the row's value of ``column``.

        ``values`` (aligned with ``frame``) replaces the column's values as the message input.
        """
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            return
        bad = frame.loc[mask]
        if values is not None:
            vals: Any = values.loc[mask]
        elif column is not None and column in bad:
            vals = bad[column]
        else:
            vals = [None] * len(bad)
        srcs = self.sources[table]
        for src, row, value in zip(bad[_SRC], bad[_ROW], vals, strict=True):
            s = srcs[int(src)]
            user_col = s.origin.get(column, column) if column is not None else None
            cell = (s.file, int(row), user_col)
            if cell in self._cells:  # one problem per cell: an unparsable date is not also empty
                continue
            self._cells.add(cell)
            self.problems.append(ImportProblem(s.file, int(row), user_col, message(value)))


def read_export(
    path: str | Path,
    *,
    mapping: Mapping | None = None,
    stages: StageConfig | None = None,
    exported_at: datetime | None = None,
    known_deal_ids: Iterable[str] = frozenset(),
) -> ImportResult:
    """Read and validate an export directory; raise ``ImportValidationError`` listing all problems.

    ``known_deal_ids`` are deals already in the store, so a history-only delta can refer to them.
    """
    root = Path(path)
    run = _Run(stages=stages or load_stage_config(), mapping=mapping)
    if not root.is_dir():
        raise ImportValidationError([ImportProblem(str(root), None, None, "not a directory")])

    frames: dict[str, pd.DataFrame] = {}
    for table in CanonicalTables.TABLES:
        frame = _read_table(run, root, table)
        if frame is not None:
            frames[table] = frame
    if "deals" not in frames:
        raise ImportValidationError(run.problems)

    deals = frames["deals"]
    _check_table(run, "deals", deals)
    _derive_outcome(run, deals)
    had_history = "stage_history" in frames

    allowed = set(deals["deal_id"].dropna()) | set(known_deal_ids)
    for table in _HISTORY_TABLES:
        if table in frames:
            frames[table] = _check_history(run, table, frames[table], allowed)
    if "targets" in frames:
        _check_table(run, "targets", frames["targets"])

    observed = _observed_at(run, frames, exported_at)
    if observed is not None:
        deals["observed_at"] = deals["observed_at"].fillna(observed)
    _check_deal_times(run, deals)
    deals["history_source"] = (HistorySource.CRM if had_history else HistorySource.DERIVED).value

    if run.problems:
        raise ImportValidationError(run.problems)

    if not had_history:
        frames["stage_history"] = _derive_stage_history(run, deals)
    tables = _finish(run, frames)
    return ImportResult(tables=tables, notes=run.notes)


# --- reading --------------------------------------------------------------------------------------
def _find_file(run: _Run, root: Path, name: str, table: str) -> Path | None:
    """The canonical file of a table: ``<table>.csv`` or ``<table>.parquet``, never both."""
    candidates = [root / f"{name}{ext}" for ext in (".csv", ".parquet")]
    found = [p for p in candidates if p.is_file()]
    if len(found) > 1:
        run.problem(found[0].name, f"both {found[0].name} and {found[1].name} exist for {table}")
        return None
    return found[0] if found else None


def _source_path(run: _Run, root: Path, name: str) -> Path | None:
    """A mapping's file name, or glob pattern matching exactly one file, in the export root."""
    if not any(ch in name for ch in "*?["):
        return root / name if (root / name).is_file() else None
    matches = sorted(p for p in root.glob(name) if p.is_file())
    if len(matches) > 1:
        run.problem(name, f"pattern matches several files: {[p.name for p in matches]}")
        return None
    return matches[0] if matches else None


def _read_file(run: _Run, path: Path) -> pd.DataFrame | None:
    try:
        if path.suffix.lower() == ".parquet":
            frame = pd.read_parquet(path)
        else:
            # Everything as text: ids keep leading zeros and "NA" stays a name, not a missing value.
            frame = pd.read_csv(
                path, dtype=str, keep_default_na=False, na_values=[""], engine="pyarrow"
            )
    except Exception as err:  # a reader failure is a problem of this file, reported with the rest
        run.problem(path.name, f"cannot be read: {err}")
        return None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame.reset_index(drop=True)


def _read_table(run: _Run, root: Path, table: str) -> pd.DataFrame | None:
    """All sources of one canonical table, converted and concatenated; None when absent."""
    run.sources[table] = []
    parts: list[pd.DataFrame] = []
    if run.mapping is None:
        path = _find_file(run, root, table, table)
        if path is None:
            if table == "deals" and not run.problems:
                run.problem("deals.csv", "file not found: deals.csv or deals.parquet is required")
            return None
        raw = _read_file(run, path)
        if raw is None:
            return None
        parts.append(_convert(run, table, raw, path.name, _Conversions(), None))
    else:
        tm = run.mapping.table(table)
        if tm is None:
            return None
        for source in tm.sources:
            path = _source_path(run, root, source.file)
            if path is None:
                if table == "deals":
                    run.problem(source.file, "file not found (named by the mapping for deals)")
                else:
                    run.notes.append(f"{source.file} not in the export: no {table} from it")
                continue
            raw = _read_file(run, path)
            if raw is not None:
                parts.append(_convert(run, table, raw, path.name, tm.merged(source), tm))
    if not parts:
        return None
    frame = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    return frame


def _resolve(raw: pd.DataFrame, ref: str | list[str]) -> str | None:
    """The first of a column reference's alternatives that the file has."""
    for name in [ref] if isinstance(ref, str) else ref:
        if name in raw.columns:
            return name
    return None


def _as_text(series: pd.Series) -> pd.Series:
    if series.dtype == "str":
        return series
    if pd.api.types.is_bool_dtype(series):
        return series.map({True: "true", False: "false"}).astype("str")
    return series.astype("str")


def _convert(
    run: _Run,
    table: str,
    raw: pd.DataFrame,
    file: str,
    conv: _Conversions,
    tm: TableMapping | None,
) -> pd.DataFrame:
    """One source file -> canonical columns and types; problems are recorded, not raised."""
    src_index = len(run.sources[table])
    origin: dict[str, str] = {}
    source = _Source(file, origin)
    run.sources[table].append(source)
    raw = raw.copy()
    raw[_SRC] = np.full(len(raw), src_index, dtype=np.int32)
    raw[_ROW] = np.arange(1, len(raw) + 1)

    # Resolve each canonical column to a user column (or a constant).
    picked: dict[str, str] = {}
    for col in columns(table):
        if col in conv.constants:
            origin[col] = f"{col} (constant in mapping)"
            continue
        ref: str | list[str] | None = conv.columns.get(col, col if tm is None else None)
        if ref is None:
            if col in REQUIRED[table] and col not in conv.defaults:
                run.problem(file, f"the mapping names no column for required {table}.{col}")
            continue
        name = _resolve(raw, ref)
        if name is None:
            alts = ref if isinstance(ref, str) else " or ".join(ref)
            if col in REQUIRED[table] and col not in conv.defaults:
                run.problem(file, f"missing required column {alts!r} (for {table}.{col})", alts)
            elif tm is not None:
                run.notes.append(f"{file}: no column {alts!r}; {table}.{col} left empty")
            continue
        picked[col] = name
        origin[col] = name
    if table == "deals":
        customs = run.mapping.custom_columns() if run.mapping else {}
        if tm is None:
            customs = {c: c for c in raw.columns if str(c).startswith(CUSTOM_PREFIX)}
        for col, user in customs.items():
            if user in raw.columns:
                picked[col] = user
                origin[col] = user
            else:
                run.notes.append(f"{file}: no column {user!r}; custom column {col} left empty")
    if tm is None:
        ignored = sorted(set(raw.columns) - set(picked.values()) - {_SRC, _ROW})
        if ignored:
            run.notes.append(f"{file}: ignored columns {ignored}")

    # Skip rows by their raw values before anything else looks at them.
    if conv.skip:
        drop = np.zeros(len(raw), dtype=bool)
        for col, values in conv.skip.items():
            if col not in picked:
                continue
            s = _as_text(raw[picked[col]])
            wanted = [_key(v) for v in values if v is not None]
            drop |= s.isin(wanted).to_numpy()
            if any(v is None for v in values):
                drop |= s.isna().to_numpy()
        if drop.any():
            run.notes.append(f"{file}: skipped {int(drop.sum())} rows by the mapping's skip rule")
            raw = raw.loc[~drop]

    out = pd.DataFrame({_SRC: raw[_SRC].to_numpy(), _ROW: raw[_ROW].to_numpy()})
    for col, user in picked.items():
        out[col] = raw[user].to_numpy()
    for col, value in conv.constants.items():
        out[col] = _key(value)
    for col, value in conv.defaults.items():
        if col in out:
            out[col] = _as_text(out[col]).fillna(_key(value))
        else:
            out[col] = _key(value)

    tz = run.mapping.timezone if run.mapping else "UTC"
    for col in list(out.columns):
        if col in (_SRC, _ROW):
            continue
        if col in TIMESTAMP_COLUMNS[table]:
            out[col] = _parse_times(run, table, out, col, conv.dates.get(col), tz)
        elif (table, col) in _FLOAT_COLUMNS:
            out[col] = _parse_amount(run, table, out, col)
        elif (table, col) in _BOOL_COLUMNS:
            out[col] = _parse_bool(run, table, out, col)
        elif col in columns(table):  # custom columns keep the reader's type
            if table == "field_history" and col == "field":
                raw_field = _as_text(out[col])
            out[col] = _map_values(run, table, col, _as_text(out[col]), conv)

    if table == "field_history" and "field" in out and "field" in conv.values:
        out = _drop_unmapped_fields(run, file, out, raw_field)
    if table == "field_history" and "field" in out:
        _normalise_field_values(run, out)
    return out


def _key(value: Any) -> str:
    """A mapping file's scalar as the text a CSV cell would hold."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _map_values(run: _Run, table: str, col: str, s: pd.Series, conv: _Conversions) -> pd.Series:
    table_map = conv.values.get(col, {})
    if col == "stage" and table in ("deals", "stage_history"):
        explicit: dict[str, str | None] = dict(run.mapping.stages) if run.mapping else {}
        explicit.update({_key(k): (None if v is None else _key(v)) for k, v in table_map.items()})
        # Unmapped values may be a stage key or, ignoring case, a stage label of the config.
        labels = {st.label.strip().lower(): st.key for st in run.stages.stages}
        hit = s.isin(list(explicit))
        by_label = s.str.strip().str.lower().map(labels)
        use_label = ~hit & ~s.isin(list(run.stages.by_key)) & by_label.notna()
        out = s.where(~use_label, by_label)
        return out.where(~hit, s.map(explicit)).astype("str")
    if not table_map:
        return s
    lookup = {_key(k): (None if v is None else _key(v)) for k, v in table_map.items()}
    hit = s.isin(list(lookup))
    return s.where(~hit, s.map(lookup)).astype("str")


def _parse_times(
    run: _Run, table: str, frame: pd.DataFrame, col: str, fmt: str | None, tz: str
) -> pd.Series:
    """Parse to naive UTC; timestamps without an offset are in the mapping's time zone."""
    s = frame[col]
    if pd.api.types.is_datetime64_any_dtype(s):
        parsed = s
    else:
        text = _as_text(s)
        try:
            parsed = pd.to_datetime(text, format=fmt or "ISO8601", errors="coerce", utc=tz == "UTC")
        except (ValueError, TypeError):  # offsets mixed with offset-less values
            parsed = pd.to_datetime(text, format=fmt or "ISO8601", errors="coerce", utc=True)
        bad = text.notna() & parsed.isna()
        expected = f"expected format {fmt!r}" if fmt else "expected ISO 8601, e.g. 2024-03-05"
        run.report(table, frame, bad, col, lambda v: f"unparsable date {v!r} ({expected})")
    if getattr(parsed.dt, "tz", None) is None:
        if tz != "UTC":
            dst = np.zeros(len(parsed), dtype=bool)  # ambiguous wall times: take standard time
            parsed = parsed.dt.tz_localize(tz, ambiguous=dst, nonexistent="shift_forward")
        else:
            return parsed.astype("datetime64[us]")
    return parsed.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[us]")


def _parse_amount(run: _Run, table: str, frame: pd.DataFrame, col: str) -> pd.Series:
    s = frame[col]
    num = pd.to_numeric(s, errors="coerce").astype("float64")
    run.report(table, frame, s.notna() & num.isna(), col, lambda v: f"not a number: {v!r}")
    run.report(table, frame, num < 0, col, lambda v: f"negative amount {v}")
    return num


def _parse_bool(run: _Run, table: str, frame: pd.DataFrame, col: str) -> pd.Series:
    s = frame[col]
    if pd.api.types.is_bool_dtype(s):
        return s.astype(bool)
    low = _as_text(s).str.strip().str.lower()
    bad = low.notna() & ~low.isin(_TRUE | _FALSE)
    run.report(table, frame, bad, col, lambda v: f"not true/false: {v!r}")
    return low.isin(_TRUE)


def _drop_unmapped_fields(
    run: _Run, file: str, out: pd.DataFrame, raw_field: pd.Series
) -> pd.DataFrame:
    """Field history of fields the mapping does not convert is dropped and counted, not an error."""
    keep = out["field"].isin(list(TRACKED_FIELDS)).to_numpy()
    if keep.all():
        return out
    dropped = raw_field.loc[~keep].fillna("(empty)").value_counts()
    detail = ", ".join(f"{k}: {v}" for k, v in dropped.items())
    run.notes.append(
        f"{file}: dropped {int((~keep).sum())} field_history rows for unmapped fields ({detail})"
    )
    return out.loc[keep].reset_index(drop=True)


def _normalise_field_values(run: _Run, out: pd.DataFrame) -> None:
    """Old/new values in the canonical text form: mapped categories, ISO dates, decimal amounts."""
    fc_map: dict[str, Any] = {}
    if run.mapping is not None and (deals_map := run.mapping.table("deals")) is not None:
        fc_map = {
            _key(k): (None if v is None else _key(v))
            for k, v in deals_map.values.get("forecast_category", {}).items()
        }
    for col in ("old_value", "new_value"):
        if col not in out:
            continue
        s = _as_text(out[col])
        is_fc = out["field"] == "forecast_category"
        if fc_map:
            hit = is_fc & s.isin(list(fc_map))
            s = s.where(~hit, s.map(fc_map))
        valid_fc = [e.value for e in ForecastCategory]
        run.report(
            "field_history",
            out,
            is_fc & s.notna() & ~s.isin(valid_fc),
            col,
            _invalid("forecast category", valid_fc),
        )
        is_date = out["field"].isin(list(_DATE_FIELDS)) & s.notna()
        if is_date.any():
            when = pd.to_datetime(s.where(is_date), format="ISO8601", errors="coerce", utc=True)
            when = when.dt.tz_localize(None)
            run.report(
                "field_history",
                out,
                is_date & when.isna(),
                col,
                lambda v: f"unparsable date {v!r} (expected ISO 8601)",
            )
            midnight = when == when.dt.normalize()
            iso = pd.Series(
                np.where(
                    midnight, when.dt.strftime("%Y-%m-%d"), when.dt.strftime("%Y-%m-%dT%H:%M:%S")
                ),
                index=s.index,
            )
            s = s.where(~(is_date & when.notna()), iso)
        is_amount = (out["field"] == "amount") & s.notna()
        if is_amount.any():
            num = pd.to_numeric(s.where(is_amount), errors="coerce")
            run.report(
                "field_history",
                out,
                is_amount & num.isna(),
                col,
                lambda v: f"not a number: {v!r}",
            )
            s = s.where(~(is_amount & num.notna()), num.astype("str"))
        out[col] = s.astype("str")


def _invalid(name: str, allowed: list[str]) -> Callable[[Any], str]:
    return lambda v: f"invalid {name} {v!r}; expected one of {allowed}"


# --- checks ---------------------------------------------------------------------------------------
def _check_table(run: _Run, table: str, frame: pd.DataFrame) -> None:
    """Empty required values, enum values, unknown stages and duplicate keys."""
    for col in REQUIRED[table]:
        if col in frame and (table, col) not in _NULLABLE_REQUIRED:
            run.report(table, frame, frame[col].isna(), col, lambda _v: "empty value")
    for (t, col), allowed in ENUMS.items():
        if t == table and col in frame:
            s = frame[col]
            run.report(
                table,
                frame,
                s.notna() & ~s.isin(allowed),
                col,
                _invalid(col, allowed),
            )
    if "stage" in frame and table in ("deals", "stage_history"):
        keys = list(run.stages.by_key)
        s = frame["stage"]
        run.report(
            table,
            frame,
            s.notna() & ~s.isin(keys),
            "stage",
            lambda v: f"unknown stage {v!r}; known stages: {keys}",
        )
    if table == "targets" and "quarter" in frame:
        q = frame["quarter"]
        bad = q.notna() & ~q.str.fullmatch(r"\d{4}Q[1-4]").fillna(False).astype(bool)
        run.report(table, frame, bad, "quarter", lambda v: f"invalid quarter {v!r}; e.g. 2025Q3")
    unique_key: tuple[str, ...] | None = {
        "deals": ("deal_id",),
        "activities": ("activity_id",),
        "targets": PRIMARY_KEYS["targets"],
    }.get(table)
    if unique_key and all(c in frame for c in unique_key):
        _report_duplicates(run, table, frame, unique_key)


def _report_duplicates(run: _Run, table: str, frame: pd.DataFrame, key: tuple[str, ...]) -> None:
    cols = list(key)
    dup = frame.duplicated(cols, keep="first") & frame[cols].notna().all(axis=1)
    if not dup.any():
        return
    first = frame.groupby(cols, dropna=False, sort=False)[_ROW].transform("first")
    shown = frame[cols[0]].astype("str")
    for c in cols[1:]:
        shown = shown + "/" + frame[c].astype("str")
    label = "/".join(cols)
    info = pd.Series(list(zip(shown, first, strict=True)), index=frame.index)
    run.report(
        table,
        frame,
        dup,
        cols[-1],
        lambda v: f"duplicate {label} {v[0]!r} (first at row {v[1]})",
        values=info,
    )


def _check_history(run: _Run, table: str, frame: pd.DataFrame, allowed: set[str]) -> pd.DataFrame:
    _check_table(run, table, frame)
    tm = run.mapping.table(table) if run.mapping else None
    if "deal_id" in frame:
        unknown = frame["deal_id"].notna() & ~frame["deal_id"].isin(allowed)
        if unknown.any() and tm is not None and tm.unknown_deals == "drop":
            run.notes.append(
                f"dropped {int(unknown.sum())} {table} rows for deals not in the export"
            )
            frame = frame.loc[~unknown].reset_index(drop=True)
        else:
            run.report(
                table,
                frame,
                unknown,
                "deal_id",
                lambda v: f"unknown deal {v!r} (not in this export nor in the store)",
            )
    if table == "stage_history":
        if "derived" not in frame:
            frame["derived"] = False
        if (
            tm is not None
            and tm.collapse_repeats
            and {"deal_id", "stage", "entered_at"} <= set(frame.columns)
        ):
            frame = _collapse_repeats(run, frame)
        frame = _dedupe_history(run, table, frame, value_col="stage")
    elif table == "field_history":
        frame = _dedupe_history(run, table, frame, value_col="new_value")
    elif table == "stakeholders" and all(c in frame for c in PRIMARY_KEYS[table]):
        dup = frame.duplicated(list(PRIMARY_KEYS[table]), keep="first")
        if dup.any():
            run.notes.append(
                f"stakeholders: merged {int(dup.sum())} repeated deal/contact/role rows"
            )
            frame = frame.loc[~dup].reset_index(drop=True)
    return frame


def _collapse_repeats(run: _Run, frame: pd.DataFrame) -> pd.DataFrame:
    """Snapshot-per-change history: keep the first row of each run of the same stage."""
    frame = frame.sort_values(["deal_id", "entered_at", _SRC, _ROW], kind="stable")
    stage = frame["stage"].fillna("\0")
    repeat = (frame["deal_id"] == frame["deal_id"].shift()) & (stage == stage.shift())
    if repeat.any():
        run.notes.append(
            f"stage_history: collapsed {int(repeat.sum())} snapshot rows without a stage change"
        )
    return frame.loc[~repeat].reset_index(drop=True)


def _dedupe_history(run: _Run, table: str, frame: pd.DataFrame, value_col: str) -> pd.DataFrame:
    """Identical rows are merged; two different values under one natural key are a problem."""
    key = list(PRIMARY_KEYS[table])
    if not all(c in frame for c in key):
        return frame
    subset = key + ([value_col] if value_col in frame else [])
    frame = frame.loc[~frame.duplicated(subset, keep="first")].reset_index(drop=True)
    clash = frame.duplicated(key, keep="first") & frame[key].notna().all(axis=1)
    run.report(
        table,
        frame,
        clash,
        value_col if value_col in frame else key[0],
        lambda v: f"conflicting {table} row for the same deal and time (value {v!r})",
    )
    return frame


def _derive_outcome(run: _Run, deals: pd.DataFrame) -> None:
    """Fill outcome from the stage's kind; an outcome that contradicts the stage is a problem."""
    kind = {s.key: s.kind.value for s in run.stages.stages}
    if "stage" not in deals:
        deals["outcome"] = pd.Series(pd.NA, index=deals.index, dtype="str")
        return
    from_stage = deals["stage"].map(kind).astype("str")
    if "outcome" in deals:
        given = deals["outcome"]
        clash = (
            given.notna()
            & from_stage.notna()
            & given.isin(list(kind.values()))
            & (given != from_stage)
        )
        run.report(
            "deals",
            deals,
            clash,
            "outcome",
            lambda v: f"outcome {v!r} contradicts the kind of the deal's stage",
        )
        deals["outcome"] = given.fillna(from_stage)
    else:
        deals["outcome"] = from_stage
    if "closed_at" in deals:
        open_with_close = (deals["outcome"] == StageKind.OPEN.value) & deals["closed_at"].notna()
        if open_with_close.any():
            deals.loc[open_with_close, "closed_at"] = pd.NaT
            run.notes.append(
                f"deals: closed_at ignored on {int(open_with_close.sum())} open deals "
                "(their close date is an expected one)"
            )


def _check_deal_times(run: _Run, deals: pd.DataFrame) -> None:
    if {"closed_at", "created_at"} <= set(deals.columns):
        # A close *date* on the creation day is fine although it is midnight, before the hour.
        early = deals["closed_at"] < deals["created_at"].dt.normalize()
        run.report(
            "deals",
            deals,
            early,
            "closed_at",
            lambda v: f"closed before created ({pd.Timestamp(v).date()} is before the created day)",
        )
    if "created_at" in deals:
        late = deals["created_at"] > deals["observed_at"]
        run.report(
            "deals",
            deals,
            late,
            "created_at",
            lambda v: f"created after the export time ({v})",
        )


def _observed_at(
    run: _Run, frames: dict[str, pd.DataFrame], exported_at: datetime | None
) -> pd.Timestamp | None:
    """The export time; see the module docstring for the order of precedence."""
    deals = frames["deals"]
    if "observed_at" not in deals:
        deals["observed_at"] = pd.Series(pd.NaT, index=deals.index, dtype="datetime64[us]")
    chosen = exported_at or (run.mapping.exported_at if run.mapping else None)
    if chosen is not None:
        ts = pd.Timestamp(chosen)
        if ts.tzinfo is not None:
            ts = ts.tz_convert("UTC").tz_localize(None)
        deals["observed_at"] = pd.Series(ts, index=deals.index).astype("datetime64[us]")
        return ts
    recorded: list[pd.Series] = [deals[c] for c in ("created_at", "closed_at") if c in deals]
    for table, col in (
        ("stage_history", "entered_at"),
        ("field_history", "changed_at"),
        ("stakeholders", "added_at"),
    ):
        if table in frames and col in frames[table]:
            recorded.append(frames[table][col])
    latest = max((s.max() for s in recorded if s.notna().any()), default=None)
    if latest is None or pd.isna(latest):
        return None
    if deals["observed_at"].isna().any():
        run.notes.append(
            f"observed_at (export time) taken as the latest recorded timestamp: {latest}"
        )
    return pd.Timestamp(latest)


def _derive_stage_history(run: _Run, deals: pd.DataFrame) -> pd.DataFrame:
    """Stage history that a deal row proves, and nothing more (see the module docstring)."""
    created = pd.DataFrame(
        {
            "deal_id": deals["deal_id"],
            "stage": pd.Series(pd.NA, index=deals.index, dtype="str"),
            "entered_at": deals["created_at"],
        }
    )
    closed = deals["outcome"] != Outcome.OPEN.value
    closed_at = deals.get("closed_at", pd.Series(pd.NaT, index=deals.index))
    seen_at = deals["observed_at"].where(~closed | closed_at.isna(), closed_at)
    seen_at = seen_at.where(seen_at >= deals["created_at"], deals["created_at"])
    current = pd.DataFrame(
        {"deal_id": deals["deal_id"], "stage": deals["stage"], "entered_at": seen_at}
    )
    # A deal created at the moment it was seen started in the stage it was seen in.
    created = created.loc[created["entered_at"].to_numpy() != current["entered_at"].to_numpy()]
    out = pd.concat([created, current], ignore_index=True)
    out["derived"] = True
    out = out.sort_values(["deal_id", "entered_at"], kind="stable").reset_index(drop=True)
    run.notes.append(
        f"no stage history in the export: derived {len(out)} rows from {len(deals)} deals "
        "(stage at creation unknown)"
    )
    return out


# --- output ---------------------------------------------------------------------------------------
def _finish(run: _Run, frames: dict[str, pd.DataFrame]) -> CanonicalTables:
    """Canonical column order and dtypes, then the schema contract (pandera, lazily)."""
    out: dict[str, pd.DataFrame] = {}
    for table in CanonicalTables.TABLES:
        frame = frames.get(table)
        if frame is None:
            out[table] = empty_frame(table)
            continue
        template = empty_frame(table)
        cols = columns(table)
        extra = [c for c in frame.columns if table == "deals" and c.startswith(CUSTOM_PREFIX)]
        shaped = pd.DataFrame(index=frame.index)
        for col in cols:
            dtype = template[col].dtype
            if col in frame:
                shaped[col] = frame[col].astype(dtype)
            else:
                fill = False if dtype == np.dtype(bool) else pd.NA
                shaped[col] = pd.Series(fill, index=frame.index).astype(dtype)
        for col in extra:
            shaped[col] = frame[col]
        out[table] = shaped.reset_index(drop=True)
        frames[table] = frame.reset_index(drop=True)
    problems: list[ImportProblem] = []
    for table, frame in out.items():
        try:
            checked = TABLE_SCHEMAS[table].validate(frame, lazy=True)
            # pandera coerces timestamps to ns; keep the unit of ``schema.empty_frame``.
            for col in TIMESTAMP_COLUMNS[table]:
                checked[col] = checked[col].astype("datetime64[us]")
            out[table] = checked
        except pa_errors.SchemaErrors as err:
            problems += _pandera_problems(run, table, frames.get(table), err)
    if problems:
        raise ImportValidationError(problems)
    return CanonicalTables(**out)


def _pandera_problems(
    run: _Run, table: str, frame: pd.DataFrame | None, err: pa_errors.SchemaErrors
) -> list[ImportProblem]:
    """Map pandera's failure cases back to the user's file, row and column."""
    problems: list[ImportProblem] = []
    for rec in err.failure_cases.to_dict("records"):
        col, idx = rec.get("column"), rec.get("index")
        msg = f"fails {rec.get('check')}: {rec.get('failure_case')!r}"
        pos = int(str(idx)) if idx is not None and str(idx).isdigit() else None
        if frame is not None and pos is not None and pos < len(frame):
            src = run.sources[table][int(str(frame.at[pos, _SRC]))]
            user_col = src.origin.get(str(col), str(col)) if col is not None else None
            row = int(str(frame.at[pos, _ROW]))
            problems.append(ImportProblem(src.file, row, user_col, msg))
        else:
            problems.append(ImportProblem(table, None, None if col is None else str(col), msg))
    return problems
