"""What is wrong with an export: located problems, grouped for reading, written out in full.

Nothing here echoes a user's text raw: values, column names and file names go through
:func:`shown` / :func:`printable`, which escape control characters (a terminal escape code in a
cell must not recolour or rewrite the user's terminal) and cut long values short. The CSV
written by :func:`write_problems_csv` also defuses cells that a spreadsheet would run as a
formula.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from features.errors import DataImportError

MAX_PRINTED_PROBLEMS = 50  # groups of identical problems shown in the error message
FIRST_ROWS = 5  # rows shown for a group
_SHOWN_CHARS = 80
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def printable(text: str) -> str:
    """``text`` with every non-printable character escaped (``\\x1b``), nothing else changed."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def shown(value: Any) -> str:
    """A user's value as quoted, escaped text of bounded length, for messages and notes."""
    text = str(value)
    if len(text) > _SHOWN_CHARS:
        text = text[:_SHOWN_CHARS] + f"... ({len(text):,} characters)"
    return repr(text)


@dataclass(frozen=True)
class ImportProblem:
    """One thing wrong with the export, located as the user sees it.

    ``row`` is the 1-based data row of the file (the header not counted); ``line`` is the line of
    a CSV file on which that row starts (they differ after a quoted field spanning lines).
    """

    file: str
    row: int | None
    column: str | None
    message: str
    line: int | None = None

    def location(self, with_row: bool = True) -> str:
        where = printable(self.file)
        if with_row and (self.row is not None or self.line is not None):
            where += f", {self.at()}"
        if self.column is not None:
            where += f", column {self.column!r}"
        return where

    def at(self) -> str:
        """``row 7 (line 8)``, or ``row 7`` when the file has no lines (Parquet)."""
        if self.row is None:
            return "" if self.line is None else f"line {self.line}"
        return f"row {self.row}" + (f" (line {self.line})" if self.line is not None else "")

    def __str__(self) -> str:
        return f"{self.location()}: {self.message}"


@dataclass(frozen=True)
class ProblemGroup:
    """Identical problems (same file, column and message) at several rows."""

    problems: tuple[ImportProblem, ...]

    def __str__(self) -> str:
        first = self.problems[0]
        n = len(self.problems)
        if n == 1:
            return str(first)
        rows = ", ".join(p.at() for p in self.problems[:FIRST_ROWS])
        more = f" and {n - FIRST_ROWS:,} more" if n > FIRST_ROWS else ""
        return f"{first.location(with_row=False)}: {first.message} [{n:,} rows: {rows}{more}]"


def group_problems(problems: Iterable[ImportProblem]) -> list[ProblemGroup]:
    """Identical problems together, in the order their first one was found."""
    groups: dict[tuple[str, str | None, str], list[ImportProblem]] = {}
    for p in problems:
        groups.setdefault((p.file, p.column, p.message), []).append(p)
    return [ProblemGroup(tuple(g)) for g in groups.values()]


class ImportValidationError(DataImportError):
    """The export cannot be imported; ``problems`` lists everything wrong, not just the first.

    Its text shows identical problems once, with their count and first rows; every problem is in
    ``problems`` (and :func:`write_problems_csv` writes them all).
    """

    def __init__(self, problems: Sequence[ImportProblem]) -> None:
        self.problems = list(problems)
        super().__init__(self._render())

    def _render(self) -> str:
        n = len(self.problems)
        groups = group_problems(self.problems)
        head = f"{n:,} problem{'s' if n != 1 else ''} in the export"
        if len(groups) < n:
            head += f" ({len(groups):,} distinct)"
        lines = [head + ":"]
        lines += [f"  - {g}" for g in groups[:MAX_PRINTED_PROBLEMS]]
        if len(groups) > MAX_PRINTED_PROBLEMS:
            lines.append(
                f"  ... and {len(groups) - MAX_PRINTED_PROBLEMS} more "
                "(`pipecast load --problems-out FILE.csv` writes every one)"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self._render()


def _cell(value: object) -> object:
    """A spreadsheet runs a cell starting with = + - @ as a formula: make it text."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


PROBLEM_COLUMNS = ("file", "row", "line", "column", "message")


def write_problems_csv(problems: Iterable[ImportProblem], path: str | Path) -> int:
    """Write every problem (file, row, line, column, message) to a CSV file; returns the count."""
    n = 0
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(PROBLEM_COLUMNS)
        for p in problems:
            writer.writerow(
                [
                    _cell(v)
                    for v in (
                        printable(p.file),
                        p.row,
                        p.line,
                        printable(p.column or ""),
                        p.message,
                    )
                ]
            )
            n += 1
    return n
