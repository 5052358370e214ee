"""Things an export may hold that are possible but worth a word: notes, never refusals.

- stage changes and field changes stamped after the export time (a clock off; a close dated
  after the export is settled in ``derive``);
- activities before the deal was created (a meeting held before the opportunity was logged);
- text with terminal control characters (an escape code would recolour or rewrite a terminal
  printing it) or starting like a spreadsheet formula (``=cmd|...``, ``@SUM(...)``: a spreadsheet
  opening a file of them runs them). They are stored as given; pipecast shows them escaped.

Every note names the files and first rows, never echoing the text itself.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.data.importer.run import BOOKKEEPING, SRC, ImportRun

# C0 controls but tab and newlines, DEL, and the C1 control-sequence introducer.
_CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\x9b]"
# Spreadsheets treat = + - @ as the start of a formula; "+31 20..." and "-5%" are not.
# (No \s: pandas would leave RE2 for Python's slower re, row by row.)
_FORMULA = r"^[ \t]*(?:[=@]|[+\-][ \t]*[A-Za-z(])"
_UNSAFE = (
    ("terminal control characters", _CONTROL),
    ("text starting like a spreadsheet formula", _FORMULA),
)


def note_after_export(run: ImportRun, frames: dict[str, pd.DataFrame]) -> None:
    deals = frames["deals"]
    if "observed_at" not in deals or deals["observed_at"].isna().all():
        return
    export = deals["observed_at"].max()
    for table, col, what in (
        ("stage_history", "entered_at", "stage changes"),
        ("field_history", "changed_at", "field changes"),
    ):
        frame = frames.get(table)
        if frame is not None and col in frame and "deal_id" in frame:
            seen = frame["deal_id"].map(_by_deal(deals, "observed_at"))
            late = frame[col] > seen.fillna(export)
            _note(run, table, frame, late, f"{what} after the export time ({export})")


def note_activities_before_creation(run: ImportRun, frames: dict[str, pd.DataFrame]) -> None:
    acts, deals = frames.get("activities"), frames["deals"]
    if acts is None or not {"deal_id", "occurred_at"} <= set(acts) or "created_at" not in deals:
        return
    created = acts["deal_id"].map(
        deals.drop_duplicates("deal_id").set_index("deal_id")["created_at"]
    )
    early = acts["occurred_at"] < created
    _note(run, "activities", acts, early, "activities before their deal was created")


def _by_deal(deals: pd.DataFrame, col: str) -> pd.Series:
    """``col`` by deal id (the first row of a repeated id: those are reported elsewhere)."""
    return deals.drop_duplicates("deal_id").set_index("deal_id")[col]


def note_unsafe_text(run: ImportRun, frames: dict[str, pd.DataFrame]) -> None:
    for table, frame in frames.items():
        for col in frame.columns:
            if col in BOOKKEEPING or frame[col].dtype != "str":
                continue
            s = frame[col]
            for what, pattern in _UNSAFE:
                hit = s.str.contains(pattern, na=False)
                if hit.any():
                    user = _user_column(run, table, frame.loc[hit], col)
                    _note(
                        run,
                        table,
                        frame,
                        hit,
                        f"values in column {user} with {what}: stored as given, shown escaped",
                    )


def _user_column(run: ImportRun, table: str, frame: pd.DataFrame, col: str) -> str:
    names = {run.sources[table][int(i)].user_column(col) for i in np.unique(frame[SRC])}
    return ", ".join(sorted(repr(n) for n in names))


def _note(
    run: ImportRun, table: str, frame: pd.DataFrame, mask: pd.Series | np.ndarray, what: str
) -> None:
    mask = np.asarray(mask, dtype=bool)
    n = int(mask.sum())
    if n:
        where = run.where(table, frame, mask) if SRC in frame else table
        run.note(f"{n:,} {what}: {where}")
