"""The state of one import: the options in force, the files read, and the problems and notes so far.

Every frame the importer works on carries two bookkeeping columns, ``_src`` (which source file of
its table a row came from) and ``_row`` (its 1-based data row there), so a problem found at any
phase is reported at the user's own file, row, line and column. Nothing is raised until the end
of a phase: all problems are reported at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.data.importer.problems import FIRST_ROWS, ImportProblem, printable
from features.data.mapping import Mapping
from features.data.stages import StageConfig

SRC, ROW = "_src", "_row"
BOOKKEEPING = (SRC, ROW)


@dataclass(frozen=True)
class ImportOptions:
    """What the caller decided: stage configuration, mapping, strictness, encoding, export time,
    the corporate currency and a rates file, and what the store already holds (deals history
    rows may refer to, exchange rates and its corporate currency)."""

    stages: StageConfig
    mapping: Mapping | None = None
    strict: bool = False
    encoding: str | None = None  # of every CSV file, over the mapping's
    exported_at: datetime | None = None
    known_deal_ids: frozenset[str] = frozenset()
    currency: str | None = None  # the corporate currency the user names (--currency)
    default_currency: str | None = None  # when nothing names one (PIPECAST_CURRENCY)
    rates_file: Path | None = None  # exchange rates in canonical columns (--rates)
    known_rates: pd.DataFrame | None = None  # the store's exchange_rates


@dataclass
class SourceFile:
    """One file a table's rows came from: each canonical column's user name, and CSV lines."""

    file: str
    is_csv: bool = False
    origin: dict[str, str] = field(default_factory=dict)
    # lines[row - 1] is the line on which data row ``row`` starts; None when it is row + 1.
    lines: np.ndarray | None = None

    def line(self, row: int) -> int | None:
        if not self.is_csv:
            return None
        if self.lines is None:
            return row + 1
        return int(self.lines[row - 1])

    def user_column(self, column: str | None) -> str | None:
        return None if column is None else self.origin.get(column, column)


@dataclass
class ImportRun:
    options: ImportOptions
    root: Path = Path()  # the export directory
    problems: list[ImportProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sources: dict[str, list[SourceFile]] = field(default_factory=dict)
    provided: dict[str, set[str]] = field(default_factory=dict)
    lookup_files: dict[tuple[str, str, str], dict[str, str] | None] = field(default_factory=dict)
    export_time_estimated: bool = False  # no --exported-at, mapping or observed_at column
    _cells: set[tuple[str, int, str | None]] = field(default_factory=set)

    @property
    def stages(self) -> StageConfig:
        return self.options.stages

    @property
    def mapping(self) -> Mapping | None:
        return self.options.mapping

    def problem(
        self, file: str, message: str, column: str | None = None, line: int | None = None
    ) -> None:
        """A problem of a whole file or column (no row)."""
        self.problems.append(ImportProblem(file, None, column, message, line))

    def note(self, text: str) -> None:
        """Something the user should know that does not stop the import (said once)."""
        if text not in self.notes:
            self.notes.append(text)

    def add_source(self, table: str, source: SourceFile) -> int:
        """Register a file of ``table``; returns its ``_src`` number."""
        self.sources.setdefault(table, []).append(source)
        return len(self.sources[table]) - 1

    def provide(self, table: str, cols: Iterable[str]) -> None:
        """Record that the export gave values for these columns (see ``ImportResult.provided``)."""
        self.provided.setdefault(table, set()).update(cols)

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
        One problem per cell: an unparsable date is not also reported as empty.
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
        for src, row, value in zip(bad[SRC], bad[ROW], vals, strict=True):
            s = srcs[int(src)]
            user_col = s.user_column(column)
            cell = (s.file, int(row), user_col)
            if cell in self._cells:
                continue
            self._cells.add(cell)
            self.problems.append(
                ImportProblem(s.file, int(row), user_col, message(value), s.line(int(row)))
            )

    def where(self, table: str, frame: pd.DataFrame, mask: pd.Series | np.ndarray) -> str:
        """The first rows of a mask, per file: ``Task.csv rows 3, 9 and 4 more``."""
        bad = frame.loc[np.asarray(mask, dtype=bool), [SRC, ROW]]
        parts = []
        for src, rows in bad.groupby(SRC, sort=True)[ROW]:
            s = self.sources[table][int(str(src))]
            first = sorted(int(r) for r in rows)[:FIRST_ROWS]
            shown_rows = ", ".join(str(r) for r in first)
            more = f" and {len(rows) - len(first):,} more" if len(rows) > len(first) else ""
            word = "row" if len(rows) == 1 else "rows"
            parts.append(f"{printable(s.file)} {word} {shown_rows}{more}")
        return "; ".join(parts)
