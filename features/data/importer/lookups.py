"""Lookups: a column's cells as keys of another file of the export (an owner id -> its name).

Salesforce exports owners as ``005...`` user ids; their names are in ``User.csv``, and their
teams are their roles (``User.UserRoleId`` -> ``UserRole.Name``). A mapping declares, per
canonical column, ``lookups: {owner: {file: User.csv, key: Id, value: Name}}``; each cell is
replaced by the ``value`` of the row whose ``key`` matches, and ``then`` looks that up again (a
chain). A value alternative with braces joins columns (``"{FirstName} {LastName}"``).

A cell without a match stays as it is (``unmatched: keep``, the default: a name already in the
column passes through) or becomes empty (``unmatched: empty``: a user without a role has no
team); a lookup file missing from the export is noted and leaves the cells as they are
(``keep``) or empty (``empty``). Each lookup says once what it did.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pandas as pd

from features.data.importer.problems import printable
from features.data.importer.read import find_source, read_file
from features.data.importer.run import ImportRun
from features.data.importer.values import clean_text
from features.data.mapping import ColumnRef, Lookup

_FIELD = re.compile(r"\{([^{}]+)\}")


def _alternatives(ref: ColumnRef) -> list[str]:
    return [ref] if isinstance(ref, str) else list(ref)


def _row_value(cells: dict[str, list[str]], i: int) -> Callable[[re.Match[str]], str]:
    """The replacement of ``{Field}`` by row ``i``'s value of that field."""

    def value(m: re.Match[str]) -> str:
        return cells[m.group(1)][i]

    return value


def _column(frame: pd.DataFrame, ref: ColumnRef) -> pd.Series | None:
    """The first alternative the file has: a column, or a ``{A} {B}`` template of columns."""
    for alt in _alternatives(ref):
        fields = _FIELD.findall(alt)
        if not fields and alt in frame.columns:
            return clean_text(frame[alt])
        if fields and all(f in frame.columns for f in fields):
            cells = {f: clean_text(frame[f]).fillna("").tolist() for f in fields}
            joined = [
                " ".join(_FIELD.sub(_row_value(cells, i), alt).split()) for i in range(len(frame))
            ]  # split/join: a missing first name leaves no stray space
            out = pd.Series(joined, index=frame.index, dtype="str")
            return out.where(out != "")
    return None


def _key_values(run: ImportRun, spec: Lookup) -> dict[str, str] | None:
    """The lookup file as key -> value, read once per import; None if it cannot be used."""
    cache = (spec.file, str(spec.key), str(spec.value))
    if cache in run.lookup_files:
        return run.lookup_files[cache]
    table: dict[str, str] | None = None
    path = find_source(run, run.root, spec.file)
    if path is not None:
        mapping = run.mapping
        encoding = run.options.encoding or spec.encoding or (mapping.encoding if mapping else None)
        raw = read_file(run, path, encoding)
        if raw is not None:
            keys, values = _column(raw.frame, spec.key), _column(raw.frame, spec.value)
            for ref, found in ((spec.key, keys), (spec.value, values)):
                if found is None:
                    run.problem(spec.file, f"lookup: no column {' or '.join(_alternatives(ref))!r}")
            if keys is not None and values is not None:
                pairs = pd.DataFrame({"k": keys, "v": values}).dropna(subset=["k"])
                pairs = pairs.drop_duplicates("k")
                table = {str(k): v for k, v in zip(pairs["k"], pairs["v"], strict=True)}
    run.lookup_files[cache] = table
    return table


def _chain(run: ImportRun, cells: pd.Series, spec: Lookup) -> pd.Series | None:
    """Cells through the lookup and its ``then``s; None when a file of the chain is missing."""
    table = _key_values(run, spec)
    if table is None:
        return None
    found = cells.map(table).astype("str")
    found = found.where(found.notna() & (found != "nan"))
    return found if spec.then is None else _chain(run, found, spec.then)


def look_up(
    run: ImportRun, table: str, frame: pd.DataFrame, col: str, spec: Lookup, user_col: str
) -> pd.Series:
    """``frame[col]`` replaced through ``spec`` (module docstring), with one note saying how."""
    cells = clean_text(frame[col])
    found = _chain(run, cells, spec)
    keep = spec.unmatched == "keep"
    if found is None:
        fate = "kept as in the export" if keep else "left empty"
        run.note(
            f"lookup of {table}.{col}: {printable(spec.file)} (or a file it leads to) is not in "
            f"the export or cannot be used: {table}.{col} ({printable(user_col)}) {fate}"
        )
        return cells if keep else pd.Series(pd.NA, index=cells.index, dtype="str")
    missing = cells.notna() & found.isna()
    n_found = int((cells.notna() & found.notna()).sum())
    fate = "kept as they are" if keep else "left empty"
    detail = f"; {int(missing.sum()):,} not found, {fate}: {run.where(table, frame, missing)}"
    run.note(
        f"{table}.{col} ({printable(user_col)}) looked up in {printable(spec.file)}: "
        f"{n_found:,} rows found" + (detail if missing.any() else "")
    )
    return found.where(~missing, cells if keep else None).astype("str")
