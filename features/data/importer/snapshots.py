"""Field changes derived from snapshot tables, merged with a field history without double counting.

Some CRMs export a *snapshot* table: one row per save of a record, stating several fields as they
stood then (Salesforce ``OpportunityHistory``: StageName, Amount, CloseDate, ForecastCategory and
Probability as of CreatedDate). A mapping declares one as a ``field_history`` source with
``snapshot: {tracked field: column}``. For each deal and field, rows are ordered by time, and a
row is a change wherever its value differs from the previous row's:

- a deal's first row is a change from missing to its value at that time, so the value a deal
  was created with is covered by dated history;
- where the export carries the value before the row (``previous:``; Salesforce ``PrevAmount``,
  ``PrevCloseDate``, ``FromForecastCategory``), that is the change's old value; a row whose
  value differs from it is a change even if the previous row (perhaps not exported) agreed;
- a change the field history also records (same deal, field and new value, within
  ``SAME_CHANGE_WITHIN``: both are written by the same save, a second or so apart) is kept once,
  as the field history's row.

Stage changes come from the same file through ``stage_history`` (``collapse_repeats``).
"""

from __future__ import annotations

import pandas as pd

from features.data.importer.convert import (
    Conversion,
    assemble,
    parse_columns,
    resolve_columns,
    skip_rows,
    start,
)
from features.data.importer.problems import printable
from features.data.importer.read import RawFile
from features.data.importer.run import ROW, SRC, ImportRun
from features.data.importer.values import normalise_field_values
from features.data.mapping import Conversions, Source

SAME_CHANGE_WITHIN = pd.Timedelta(seconds=60)
FROM_SNAPSHOT = "_from_snapshot"
_TABLE = "field_history"
_KEEP = [SRC, ROW, "deal_id", "field", "old_value", "new_value", "changed_at"]


def convert_snapshot(run: ImportRun, raw: RawFile, conv: Conversions, spec: Source) -> pd.DataFrame:
    """A snapshot file -> field_history rows (one per change), flagged ``FROM_SNAPSHOT``."""
    step = start(run, _TABLE, raw, conv, mapped=True)
    resolve_columns(step, ["deal_id", "changed_at"])
    current = {f: step.resolve(ref) for f, ref in spec.snapshot.items()}
    for f, name in current.items():
        if name is None:
            alts = spec.snapshot[f]
            run.note(f"{printable(step.file)}: no column {alts!r}; no {f} changes from it")
    # Optional: many exports lack them, and the rows alone still give the changes.
    before = {f: step.resolve(ref) for f, ref in spec.previous.items()}
    skip_rows(step)
    base = parse_columns(step, assemble(step))
    parts = [
        _changes(step, base, f, name, before.get(f))
        for f, name in current.items()
        if name is not None
    ]
    used = [n for n in current.values() if n is not None]
    step.source.origin.update({"old_value": "/".join(used), "new_value": "/".join(used)})
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=_KEEP)
    out[FROM_SNAPSHOT] = True
    run.provide(_TABLE, ["field", "old_value", "new_value"])
    run.note(
        f"{printable(step.file)}: {len(out):,} field changes derived from {len(base):,} snapshot "
        f"rows ({', '.join(f for f, n in current.items() if n is not None)})"
    )
    return out


def _changes(
    step: Conversion, base: pd.DataFrame, field: str, name: str, before_name: str | None
) -> pd.DataFrame:
    """The rows of one field at which its value changed, with the value before."""
    part = base[[SRC, ROW, "deal_id", "changed_at"]].copy()
    fields = pd.Series(field, index=part.index)
    part["new_value"] = _values(step, part, field, name, fields)
    given = (
        _values(step, part, f"{field} before", before_name, fields)
        if before_name is not None
        else pd.Series(pd.NA, index=part.index, dtype="str")
    )
    part["_given"] = given
    part = part.sort_values(["deal_id", "changed_at", SRC, ROW], kind="stable")
    previous = part.groupby("deal_id", sort=False)["new_value"].shift()
    new, given = part["new_value"].fillna("\0"), part["_given"]
    differs = given.notna() & (given.fillna("\0") != new)
    changed = (previous.fillna("\0") != new) | differs
    part["old_value"] = given.where(differs, previous)
    part["field"] = field
    return part.loc[changed, _KEEP]


def _values(
    step: Conversion, part: pd.DataFrame, key: str, name: str, fields: pd.Series
) -> pd.Series:
    """One snapshot column as canonical text of ``fields``, problems located at its column."""
    step.source.origin[key] = name
    frame = part[[SRC, ROW]].assign(**{key: step.raw[name].to_numpy()})
    return normalise_field_values(step.run, _TABLE, frame, key, fields, step.conv.dates)


def merge_with_field_history(run: ImportRun, frame: pd.DataFrame) -> pd.DataFrame:
    """Drop snapshot changes that an exported field-history row records too (module docstring)."""
    if FROM_SNAPSHOT not in frame:
        return frame
    derived = frame[FROM_SNAPSHOT].fillna(False).astype(bool)
    if derived.all() or not derived.any():
        return frame.drop(columns=FROM_SNAPSHOT)
    keys = ["deal_id", "field", "_value"]
    left = frame.loc[derived].assign(
        _value=frame["new_value"].fillna("\0"), _i=frame.index[derived]
    )
    right = frame.loc[~derived, ["deal_id", "field", "new_value", "changed_at"]]
    right = right.assign(_value=right["new_value"].fillna("\0"), _match=True)
    right = right.drop(columns="new_value").dropna(subset=["deal_id", "changed_at"])
    left = left.dropna(subset=["deal_id", "changed_at"])
    matched = pd.merge_asof(
        left.sort_values("changed_at", kind="stable"),
        right.sort_values("changed_at", kind="stable"),
        on="changed_at",
        by=keys,
        tolerance=SAME_CHANGE_WITHIN,
        direction="nearest",
    )
    twice = matched.loc[matched["_match"].fillna(False).astype(bool), "_i"]
    if len(twice):
        run.note(
            f"field_history: {len(twice):,} changes found both in a snapshot table and in the "
            "field history: counted once"
        )
    kept = frame.loc[~frame.index.isin(twice.to_numpy())]
    return kept.drop(columns=FROM_SNAPSHOT).reset_index(drop=True)
