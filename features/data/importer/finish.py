"""The last step: canonical column order and dtypes, then the schema contract (pandera).

By now every user mistake should have been found and located; pandera is the safety net that
keeps a slip of the importer from reaching the store, mapped back to the user's file and row.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pandera.errors as pa_errors

from features.data.importer.problems import ImportProblem, ImportValidationError, shown
from features.data.importer.run import ROW, SRC, ImportRun
from features.data.schema import (
    CUSTOM_PREFIX,
    TABLE_SCHEMAS,
    TIMESTAMP_COLUMNS,
    CanonicalTables,
    columns,
    empty_frame,
)


def shape(table: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Canonical columns in order with their dtypes (missing ones empty), then custom columns."""
    template = empty_frame(table)
    shaped = pd.DataFrame(index=frame.index)
    for col in columns(table):
        dtype = template[col].dtype
        if col in frame:
            shaped[col] = frame[col].astype(dtype)
        elif dtype == np.dtype(bool):
            shaped[col] = pd.Series(False, index=frame.index)
        else:  # NaN / NaT / NA, whichever the dtype takes
            shaped[col] = pd.Series(np.nan, index=frame.index).astype(dtype)
    if table == "deals":
        for col in frame.columns:
            if str(col).startswith(CUSTOM_PREFIX):
                shaped[col] = frame[col]
    return shaped.reset_index(drop=True)


def finish(run: ImportRun, frames: dict[str, pd.DataFrame]) -> CanonicalTables:
    """Every table shaped and validated; raises ``ImportValidationError`` on a schema failure."""
    out: dict[str, pd.DataFrame] = {}
    problems: list[ImportProblem] = []
    for table in CanonicalTables.TABLES:
        frame = frames.get(table)
        if frame is None:
            out[table] = empty_frame(table)
            continue
        frame = frame.reset_index(drop=True)
        try:
            checked = TABLE_SCHEMAS[table].validate(shape(table, frame), lazy=True)
        except pa_errors.SchemaErrors as err:
            problems += _pandera_problems(run, table, frame, err)
            continue
        # pandera coerces timestamps to ns; keep the unit of ``schema.empty_frame``.
        for col in TIMESTAMP_COLUMNS[table]:
            checked[col] = checked[col].astype("datetime64[us]")
        out[table] = checked
    if problems:
        raise ImportValidationError(problems)
    return CanonicalTables(**out)


def _pandera_problems(
    run: ImportRun, table: str, frame: pd.DataFrame, err: pa_errors.SchemaErrors
) -> list[ImportProblem]:
    """Map pandera's failure cases back to the user's file, row and column."""
    problems: list[ImportProblem] = []
    for rec in err.failure_cases.to_dict("records"):
        col, idx = rec.get("column"), rec.get("index")
        msg = f"fails {rec.get('check')}: {shown(rec.get('failure_case'))}"
        pos = int(str(idx)) if idx is not None and str(idx).isdigit() else None
        if SRC in frame and pos is not None and pos < len(frame):
            src = run.sources[table][int(str(frame.at[pos, SRC]))]
            row = int(str(frame.at[pos, ROW]))
            user_col = src.user_column(None if col is None else str(col))
            problems.append(ImportProblem(src.file, row, user_col, msg, src.line(row)))
        else:
            problems.append(ImportProblem(table, None, None if col is None else str(col), msg))
    return problems
