"""Checks of whole tables once their files are converted: empty required values, keys, deal refs.

History tables are also tidied here: rows of unknown deals dropped where the mapping says so,
snapshot rows collapsed to stage changes, snapshot-derived field changes merged with the field
history, identical rows merged; two different values under one natural key are a problem.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from features.data.importer.convert import REQUIRED
from features.data.importer.problems import shown
from features.data.importer.run import ROW, SRC, ImportRun
from features.data.importer.snapshots import merge_with_field_history
from features.data.schema import PRIMARY_KEYS

# Columns a file must have whose cells may be empty: stage_history.stage (unknown, in canonical
# files; a mapped CRM row names a stage) and activities.type (a kind the mapping does not name).
_NULLABLE_REQUIRED = {("stage_history", "stage"), ("activities", "type")}
_UNIQUE: dict[str, tuple[str, ...]] = {
    "deals": ("deal_id",),
    "activities": ("activity_id",),
    "targets": PRIMARY_KEYS["targets"],
}
HISTORY_TABLES = ("stage_history", "field_history", "activities", "stakeholders")


def check_table(run: ImportRun, table: str, frame: pd.DataFrame) -> None:
    """Empty required values (ids are trimmed first: blank is empty), quarters, duplicate keys."""
    for col in REQUIRED[table]:
        if col in frame and (table, col) not in _NULLABLE_REQUIRED:
            run.report(table, frame, frame[col].isna(), col, lambda _v: "empty value")
    if table == "targets" and "quarter" in frame:
        q = frame["quarter"]
        bad = q.notna() & ~q.str.fullmatch(r"\d{4}Q[1-4]").fillna(False).astype(bool)
        run.report(
            table, frame, bad, "quarter", lambda v: f"invalid quarter {shown(v)}; e.g. 2025Q3"
        )
    key = _UNIQUE.get(table)
    if key and all(c in frame for c in key):
        _report_duplicates(run, table, frame, key)


def _report_duplicates(
    run: ImportRun, table: str, frame: pd.DataFrame, key: tuple[str, ...]
) -> None:
    cols = list(key)
    dup = frame.duplicated(cols, keep="first") & frame[cols].notna().all(axis=1)
    if not dup.any():
        return
    first = frame.groupby(cols, dropna=False, sort=False)[ROW].transform("first")
    shown_key = frame[cols[0]].astype("str")
    for c in cols[1:]:
        shown_key = shown_key + "/" + frame[c].astype("str")
    label = "/".join(cols)
    info = pd.Series(list(zip(shown_key, first, strict=True)), index=frame.index)
    run.report(
        table,
        frame,
        dup,
        cols[-1],
        lambda v: f"duplicate {label} {shown(v[0])} (first at row {v[1]})",
        values=info,
    )


def check_history(run: ImportRun, table: str, frame: pd.DataFrame, deals: set[str]) -> pd.DataFrame:
    """A history table: its own checks, references to known deals, then its tidying."""
    check_table(run, table, frame)
    frame = _known_deals(run, table, frame, deals)
    return _TIDY[table](run, frame)


def _known_deals(run: ImportRun, table: str, frame: pd.DataFrame, deals: set[str]) -> pd.DataFrame:
    if "deal_id" not in frame:
        return frame
    tm = run.mapping.table(table) if run.mapping else None
    unknown = frame["deal_id"].notna() & ~frame["deal_id"].isin(deals)
    if unknown.any() and tm is not None and tm.unknown_deals == "drop":
        run.note(f"dropped {int(unknown.sum()):,} {table} rows for deals not in the export")
        return frame.loc[~unknown].reset_index(drop=True)
    run.report(
        table,
        frame,
        unknown,
        "deal_id",
        lambda v: f"unknown deal {shown(v)} (not in this export nor in the store)",
    )
    return frame


def _tidy_stage_history(run: ImportRun, frame: pd.DataFrame) -> pd.DataFrame:
    if "derived" not in frame:
        frame["derived"] = False
    run.provide("stage_history", ["derived"])
    tm = run.mapping.table("stage_history") if run.mapping else None
    if tm is not None and tm.collapse_repeats and {"deal_id", "stage", "entered_at"} <= set(frame):
        frame = _collapse_repeats(run, frame)
    return _dedupe_history(run, "stage_history", frame, value_col="stage")


def _tidy_field_history(run: ImportRun, frame: pd.DataFrame) -> pd.DataFrame:
    frame = merge_with_field_history(run, frame)
    return _dedupe_history(run, "field_history", frame, value_col="new_value")


def _tidy_stakeholders(run: ImportRun, frame: pd.DataFrame) -> pd.DataFrame:
    key = list(PRIMARY_KEYS["stakeholders"])
    if not all(c in frame for c in key):
        return frame
    dup = frame.duplicated(key, keep="first")
    if dup.any():
        run.note(f"stakeholders: merged {int(dup.sum()):,} repeated deal/contact/role rows")
        frame = frame.loc[~dup].reset_index(drop=True)
    return frame


def _as_is(_run: ImportRun, frame: pd.DataFrame) -> pd.DataFrame:
    return frame


_TIDY: dict[str, Callable[[ImportRun, pd.DataFrame], pd.DataFrame]] = {
    "stage_history": _tidy_stage_history,
    "field_history": _tidy_field_history,
    "activities": _as_is,
    "stakeholders": _tidy_stakeholders,
}


def _collapse_repeats(run: ImportRun, frame: pd.DataFrame) -> pd.DataFrame:
    """Snapshot-per-change history: keep the first row of each run of the same stage."""
    frame = frame.sort_values(["deal_id", "entered_at", SRC, ROW], kind="stable")
    stage = frame["stage"].fillna("\0")
    repeat = (frame["deal_id"] == frame["deal_id"].shift()) & (stage == stage.shift())
    if repeat.any():
        run.note(
            f"stage_history: collapsed {int(repeat.sum()):,} snapshot rows without a stage change"
        )
    return frame.loc[~repeat].reset_index(drop=True)


def _dedupe_history(
    run: ImportRun, table: str, frame: pd.DataFrame, value_col: str
) -> pd.DataFrame:
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
        lambda v: f"conflicting {table} row for the same deal and time (value {shown(v)})",
    )
    return frame
