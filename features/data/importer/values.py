"""Converting one column's cells: text, categories, stages, timestamps, amounts, booleans.

Categories are forgiving where a wrong guess costs little and strict where it would corrupt the
data:

- A value map matches case- and space-insensitively, and a canonical value or its label (``fit``,
  ``Status quo``) needs no entry.
- Descriptive categories (``DESCRIPTIVE``: loss reason, activity type, stakeholder role, forecast
  category, segment and product when mapped) store an unmapped value as ``other`` (or missing
  where the column has no ``other``) and say so once per value, with its row count and the line
  to add to the mapping; ``strict`` refuses it instead.
- Ids, stages, outcomes, dates and amounts refuse the import.

Timestamps without an offset are in the mapping's time zone, each value on its own (a column may
mix offset-carrying and naive values). Years outside ``YEAR_RANGE`` are refused: they are
placeholders (0001-01-01) or typos, and beyond what the store's timestamps hold. Amounts must be
finite, non-negative and below ``MAX_AMOUNT``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from features.data.importer.problems import shown
from features.data.importer.run import ROW, SRC, ImportRun
from features.data.mapping import ENUMS, as_text, fold
from features.data.schema import CURRENCY_CODE, DATE_FIELDS

# 10^15: above any deal in any currency (a billion dollars in Vietnamese dong is 2.5e13), and
# below 2^53, so every whole amount is exact in a float and prints in at most 16 digits.
MAX_AMOUNT = 1e15
YEAR_RANGE = (1900, 2199)
# Unmapped values of these columns are kept (as ``other`` or missing) unless ``strict``.
DESCRIPTIVE: dict[tuple[str, str], str | None] = {
    ("deals", "loss_reason"): None,
    ("deals", "forecast_category"): None,
    ("deals", "segment"): "other",
    ("deals", "product"): "other",
    ("activities", "type"): None,
    ("stakeholders", "role"): "other",
}
_TRUE = {"true", "t", "1", "yes", "y"}
_FALSE = {"false", "f", "0", "no", "n"}
# An ISO 8601 time followed by an offset (Z, +01:00, +0100, -05); a bare date never matches.
# (Plain [0-9] and spaces: RE2 runs it on the whole column at once.)
_OFFSET = r"[T ][0-9]{1,2}(?::?[0-9]{2}){0,2}(?:[.,][0-9]+)? *(?:Z|[+-][0-9]{2}(?::?[0-9]{2})?) *$"


def as_text_series(series: pd.Series) -> pd.Series:
    """Cells as text (Parquet may give numbers or booleans)."""
    if series.dtype == "str":
        return series
    if pd.api.types.is_bool_dtype(series):
        return series.map({True: "true", False: "false"}).astype("str")
    return series.astype("str").where(series.notna())


def clean_text(series: pd.Series) -> pd.Series:
    """Trimmed text; an empty or blank cell is missing (CSV and Parquet alike)."""
    s = as_text_series(series).str.strip()
    return s.where(s != "").astype("str")


# --- categories -----------------------------------------------------------------------------------
def _lookup(value_map: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    exact = {as_text(k): (None if v is None else as_text(v)) for k, v in value_map.items()}
    return exact, {fold(k): v for k, v in exact.items()}


def _resolve(
    values: pd.Series, exact: dict[str, Any], folded: dict[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """Each distinct value's target, and the values nothing matched."""
    resolved: dict[str, Any] = {}
    unmatched: list[str] = []
    for v in values.dropna().unique():
        v = str(v)
        if v in exact:
            resolved[v] = exact[v]
        elif fold(v) in folded:
            resolved[v] = folded[fold(v)]
        else:
            unmatched.append(v)
    return resolved, unmatched


def _suggestion(run: ImportRun, table: str, col: str, value: str, targets: str) -> str:
    where = f"tables.{table}.values.{col}" if col != "stage" else "stages"
    line = f"{json.dumps(value, ensure_ascii=False)}: <{targets}>"
    if run.mapping is None:
        return f"to map it, import with a mapping (--mapping) holding under {where}:  {line}"
    return f"to map it, add under {where} in the mapping:  {line}"


def map_category(
    run: ImportRun,
    table: str,
    col: str,
    frame: pd.DataFrame,
    value_map: Mapping[str, Any],
    category: tuple[str, str] | None = None,
) -> pd.Series:
    """Map ``frame[col]`` to canonical values (see the module docstring for the rules).

    ``category`` is the canonical column whose values these are, when not ``(table, col)``
    (a forecast category in field history's ``old_value``).
    """
    s = frame[col]
    kind = category or (table, col)
    allowed = ENUMS.get(kind)
    if not value_map and allowed is None:
        return s  # free text
    exact, folded = _lookup(value_map)
    if allowed is not None:
        folded = {**{fold(a): a for a in allowed}, **folded}
    resolved, unmatched = _resolve(s, exact, folded)
    keep_raw = allowed is None and kind not in DESCRIPTIVE
    if kind == ("field_history", "field") and value_map:
        keep_raw = True  # fields the mapping does not list are dropped and counted later
    for v in unmatched:
        resolved[v] = v if keep_raw else _unmatched(run, table, col, frame, v, kind)
    return s.map(resolved).astype("str")


def _unmatched(
    run: ImportRun, table: str, col: str, frame: pd.DataFrame, value: str, kind: tuple[str, str]
) -> str | None:
    """Report an unmapped value once (note) or per row (problem); returns what to store."""
    allowed = ENUMS.get(kind)
    targets = "|".join(allowed) if allowed else "a value"
    hint = _suggestion(run, *kind, value, targets)
    mask = (frame[col] == value).to_numpy()
    name = ".".join(kind)
    if kind in DESCRIPTIVE and not run.options.strict:
        fallback = DESCRIPTIVE[kind]
        stored = "missing" if fallback is None else repr(fallback)
        users = {run.sources[table][int(i)].user_column(col) for i in frame.loc[mask, SRC]}
        run.note(
            f"{run.where(table, frame, mask)}, column {', '.join(sorted(map(repr, users)))}: "
            f"{int(mask.sum()):,} rows hold {shown(value)}, which is not a {name} value: stored "
            f"as {stored}; {hint} (or import with --strict to refuse it)"
        )
        return fallback
    expected = f"; expected one of {list(allowed)}" if allowed else ""
    run.report(table, frame, mask, col, lambda v: f"invalid {kind[1]} {shown(v)}{expected}; {hint}")
    return None


def map_stage(
    run: ImportRun, table: str, frame: pd.DataFrame, value_map: Mapping[str, Any]
) -> pd.Series:
    """CRM stage names -> stage keys by the mapping, a stage key or a label; else refused."""
    s = frame["stage"]
    explicit = {**(run.mapping.stages if run.mapping else {}), **value_map}
    exact, folded = _lookup(explicit)
    config = run.stages
    by_name = {fold(st.label): st.key for st in config.stages} | {fold(k): k for k in config.by_key}
    resolved, unmatched = _resolve(s, exact, {**by_name, **folded})
    for v in unmatched:
        resolved[v] = v  # refused below, with the rest of the unknown stages
    out = s.map(resolved).astype("str")
    keys = list(config.by_key)

    def message(v: Any) -> str:
        origin = _mapped_from(explicit, v)
        hint = "" if origin else "; " + _suggestion(run, table, "stage", str(v), "|".join(keys))
        return f"unknown stage {shown(v)}{origin}; known stages: {keys}{hint}"

    run.report(table, frame, out.notna() & ~out.isin(keys), "stage", message, values=out)
    return out


def _mapped_from(explicit: Mapping[str, Any], target: Any) -> str:
    names = [k for k, v in explicit.items() if v == target]
    return f" (the mapping maps {', '.join(map(repr, names))} to it)" if names else ""


# --- timestamps -----------------------------------------------------------------------------------
DateFormat = str | list[str] | None


def parse_times(
    run: ImportRun, table: str, frame: pd.DataFrame, col: str, fmt: DateFormat, tz: str
) -> pd.Series:
    """Parse to naive UTC; each timestamp without an offset is in the zone ``tz``.

    ``fmt``: a pandas format, or several tried in turn (each value takes the first that parses
    it); None: ISO 8601.
    """
    s = frame[col]
    if pd.api.types.is_datetime64_any_dtype(s):
        parsed = s if getattr(s.dt, "tz", None) is not None else _localize(s, tz)
    else:
        text = clean_text(s)
        formats: list[str | None] = [fmt] if not isinstance(fmt, list) else list(fmt)
        parsed = _parse_text_times(text, formats[0], tz)
        for other in formats[1:]:
            todo = text.notna() & parsed.isna()
            if not todo.any():
                break
            parsed = parsed.where(~todo, _parse_text_times(text.where(todo), other, tz))
        bad = text.notna() & parsed.isna()
        if fmt is None:
            expected = "expected ISO 8601, e.g. 2024-03-05"
        else:
            expected = "expected format " + " or ".join(repr(f) for f in formats)
        run.report(table, frame, bad, col, lambda v: f"unparsable date {shown(v)} ({expected})")
    naive = parsed.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[us]")
    lo, hi = YEAR_RANGE
    years = naive.dt.year
    out_of_range = naive.notna() & ((years < lo) | (years > hi))
    run.report(
        table,
        frame,
        out_of_range,
        col,
        lambda v: f"date {shown(v)} is outside the years {lo}-{hi}",
        values=s.astype("str"),
    )
    return naive.where(~out_of_range)


def _parse_text_times(text: pd.Series, fmt: str | None, tz: str) -> pd.Series:
    """Aware (UTC) timestamps; values with an offset keep it, the others are wall time in ``tz``."""
    form = fmt or "ISO8601"
    if fmt is not None:
        has_offset = pd.Series("%z" in fmt or "%Z" in fmt, index=text.index)
    else:
        has_offset = text.str.contains(_OFFSET, na=False)
    out = pd.Series(pd.NaT, index=text.index, dtype="datetime64[us, UTC]")
    if has_offset.any():
        aware = pd.to_datetime(text.where(has_offset), format=form, errors="coerce", utc=True)
        out = out.where(~has_offset, aware.astype("datetime64[us, UTC]"))
    if not has_offset.all():
        wall = pd.to_datetime(text.where(~has_offset), format=form, errors="coerce")
        local = _localize(wall, tz).dt.tz_convert("UTC").astype("datetime64[us, UTC]")
        out = out.where(has_offset, local)
    return out


def _localize(wall: pd.Series, tz: str) -> pd.Series:
    dst = np.zeros(len(wall), dtype=bool)  # ambiguous wall times: take standard time
    return wall.dt.tz_localize(tz, ambiguous=dst, nonexistent="shift_forward")


# --- numbers and flags ----------------------------------------------------------------------------
def parse_amount(run: ImportRun, table: str, frame: pd.DataFrame, col: str) -> pd.Series:
    s = frame[col] if _numeric(frame[col]) else clean_text(frame[col])
    num = pd.to_numeric(s, errors="coerce").astype("float64")
    finite = np.isfinite(num.fillna(0))
    run.report(table, frame, s.notna() & num.isna(), col, lambda v: f"not a number: {shown(v)}")
    run.report(table, frame, ~finite, col, lambda v: f"not a finite amount: {shown(v)}")
    run.report(table, frame, num < 0, col, lambda v: f"negative amount {v}")
    run.report(
        table,
        frame,
        num.abs() >= MAX_AMOUNT,
        col,
        lambda v: f"amount {shown(v)} is absurd (the limit is {MAX_AMOUNT:.0e})",
    )
    return num.where(finite & (num.abs() < MAX_AMOUNT))


def parse_currency(run: ImportRun, table: str, frame: pd.DataFrame, col: str) -> pd.Series:
    """ISO 4217 codes in upper case (``mxn`` is ``MXN``); anything else is refused."""
    code = clean_text(frame[col]).str.upper()
    bad = code.notna() & ~code.str.fullmatch(CURRENCY_CODE[1:-1]).fillna(False).astype(bool)
    run.report(
        table,
        frame,
        bad,
        col,
        lambda v: f"invalid currency code {shown(v)} (an ISO 4217 code such as USD, MXN, EUR)",
    )
    return code.where(~bad).astype("str")


def _numeric(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)


def parse_bool(run: ImportRun, table: str, frame: pd.DataFrame, col: str) -> pd.Series:
    s = frame[col]
    if pd.api.types.is_bool_dtype(s):
        return s.astype(bool)
    low = clean_text(s).str.lower()
    bad = low.notna() & ~low.isin(_TRUE | _FALSE)
    run.report(table, frame, bad, col, lambda v: f"not true/false: {shown(v)}")
    return low.isin(_TRUE)


# --- field history values -------------------------------------------------------------------------
def normalise_field_values(
    run: ImportRun,
    table: str,
    frame: pd.DataFrame,
    col: str,
    fields: pd.Series,
    date_formats: Mapping[str, str | list[str]],
) -> pd.Series:
    """Old/new values of tracked fields in canonical text: categories, ISO dates, amounts.

    ``fields`` (aligned with ``frame``) names each row's field. Categories use the deals table's
    value map of that column; a date field's format comes from ``date_formats`` (else ISO 8601).
    """
    s = clean_text(frame[col])
    out = s.copy()
    deals_map = run.mapping.table("deals") if run.mapping else None
    for field in fields.dropna().unique():
        rows = (fields == field).to_numpy() & s.notna().to_numpy()
        if not rows.any():
            continue
        part = frame.loc[rows, [SRC, ROW]].assign(**{col: s[rows]})
        if field == "forecast_category":
            value_map = deals_map.values.get(field, {}) if deals_map else {}
            kind = ("deals", "forecast_category")
            out[rows] = map_category(run, table, col, part, value_map, kind)
        elif field in DATE_FIELDS:
            out[rows] = _iso_dates(run, table, part, col, date_formats.get(field))
        elif field == "amount":
            num = parse_amount(run, table, part, col)
            out[rows] = num.astype("str").where(num.notna())
    return out.astype("str")


def _iso_dates(
    run: ImportRun, table: str, part: pd.DataFrame, col: str, fmt: DateFormat
) -> pd.Series:
    """``2024-03-05`` for a date, ``2024-03-05T14:22:00`` for a time of day."""
    when = parse_times(run, table, part, col, fmt, "UTC")
    text = clean_text(part[col])
    # Most values already are ISO dates: keep their text, format only the others.
    iso = text.str.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", na=False) & when.notna()
    out = text.where(iso)
    rest = (when.notna() & ~iso).to_numpy()
    if rest.any():
        stamps = when.to_numpy(dtype="datetime64[us]")[rest]
        midnight = stamps == stamps.astype("datetime64[D]")
        formatted = np.where(
            midnight,
            np.datetime_as_string(stamps, unit="D"),
            np.datetime_as_string(stamps, unit="s"),
        )
        out[rest] = formatted
    return out.astype("str")
