"""What the importer derives from the deal rows, and why (nothing is guessed):

- ``outcome`` missing or empty: from the kind (open/won/lost) of the deal's stage.
- ``closed_at`` on an open deal is dropped: some CRMs (Salesforce ``CloseDate``, HubSpot
  ``Close Date``) use one column for both the expected and the actual close date. A won or lost
  deal without one is kept as it is, with a note (closed by the export, when unknown).
- ``observed_at`` (when the deal row was true) is the export time: the ``exported_at`` argument,
  else the mapping's ``exported_at``, else a non-empty ``observed_at`` column of the file, else the
  latest timestamp of something that *happened* in the export: deals created or last modified
  (``modified_at``), stage and field changes, stakeholders added. Never a close date (people
  close deals with a close date months ahead), nor activities or other planned dates (CRMs
  export scheduled meetings in the future). Deterministic: the same files give the same value.
- A deal closed with a close date after the export time was closed by the export: it is closed
  as of the moment its closed stage was recorded (the export's stage history), else its last
  modification, else the export time, with a note; its close date stays its expected close date.
- ``entered_after_close``: a closed deal logged in the CRM after it closed: its close date is
  before the day it was created (back-filled), or the CRM's stage history starts it in a closed
  stage on its creation day (created closed; such a deal with a later close date is closed at
  its creation, since it was never open). They are facts, not errors: kept and counted as won or
  lost, reported once in a note, and left out of what measures an open deal's path (cycle
  length, time in stage, stage conversion, training snapshots).
- A deals-only export (no stage history file): ``history_source='derived'`` and stage history
  holds only what the deal row proves, every row ``derived=True``: stage unknown (NULL) at
  ``created_at``; the current stage at ``observed_at`` for an open deal ("seen there at export");
  the closed stage at ``closed_at`` for a closed deal (observed_at when unknown). The closing time
  is known, yet the row stays ``derived=True`` because it was inferred from the deal row, not read
  from a CRM history record, so a later import with real history can be told apart from it. No
  field history is made up.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd

from features.data.importer.problems import shown
from features.data.importer.run import ImportRun
from features.data.schema import HistorySource, Outcome
from features.data.stages import StageKind


def derive_outcome(run: ImportRun, deals: pd.DataFrame) -> None:
    """Fill outcome from the stage's kind; an outcome that contradicts the stage is a problem."""
    kind = {s.key: s.kind.value for s in run.stages.stages}
    if "stage" not in deals:
        deals["outcome"] = pd.Series(pd.NA, index=deals.index, dtype="str")
        return
    run.provide("deals", ["outcome"])
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
            lambda v: f"outcome {shown(v)} contradicts the kind of the deal's stage",
        )
        deals["outcome"] = given.fillna(from_stage)
    else:
        deals["outcome"] = from_stage
    if "closed_at" in deals:
        open_with_close = (deals["outcome"] == StageKind.OPEN.value) & deals["closed_at"].notna()
        if open_with_close.any():
            deals.loc[open_with_close, "closed_at"] = pd.NaT
            run.note(
                f"deals: closed_at ignored on {int(open_with_close.sum()):,} open deals "
                "(their close date is an expected one)"
            )
    _note_closes_without_date(run, deals)


def _note_closes_without_date(run: ImportRun, deals: pd.DataFrame) -> None:
    """A won or lost deal without ``closed_at`` is stored as the export says; the point-in-time
    rebuild counts it closed from its ``observed_at`` on (``pointintime.closing_time``)."""
    closed = deals["outcome"].isin([Outcome.WON.value, Outcome.LOST.value])
    undated = closed & deals["closed_at"].isna() if "closed_at" in deals else closed
    if undated.any():
        run.note(
            f"deals: {int(undated.sum()):,} won or lost deals have no closed_at: counted closed "
            "from the export time on; when they closed is unknown, so win rate, cycle length "
            "and velocity leave them out"
        )


def set_observed_at(
    run: ImportRun, frames: dict[str, pd.DataFrame], exported_at: datetime | None
) -> None:
    """``deals.observed_at``: the export time (see the module docstring), and history_source."""
    deals = frames["deals"]
    observed = _export_time(run, frames, exported_at)
    if observed is not None:
        deals["observed_at"] = deals["observed_at"].fillna(observed)
    source = HistorySource.CRM if "stage_history" in frames else HistorySource.DERIVED
    deals["history_source"] = source.value
    run.provide("deals", ["observed_at", "history_source"])


# What happened, and when: the export was taken after all of it.
_HAPPENED = (
    ("stage_history", "entered_at"),
    ("field_history", "changed_at"),
    ("stakeholders", "added_at"),
)


def _export_time(
    run: ImportRun, frames: dict[str, pd.DataFrame], exported_at: datetime | None
) -> pd.Timestamp | None:
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
    recorded: list[pd.Series] = [deals[c] for c in ("created_at", "modified_at") if c in deals]
    for table, col in _HAPPENED:
        if table in frames and col in frames[table]:
            recorded.append(frames[table][col])
    latest = max((s.max() for s in recorded if s.notna().any()), default=None)
    if latest is None or pd.isna(latest):
        return None
    if deals["observed_at"].isna().any():
        run.export_time_estimated = True
        run.note(
            f"observed_at (export time) taken as the latest time something happened in the "
            f"export (a deal created or modified, a stage or field change, a contact added): "
            f"{latest}; close dates and activities may lie ahead and are not used "
            "(pass --exported-at to set it)"
        )
    return pd.Timestamp(latest)


def close_after_export(run: ImportRun, frames: dict[str, pd.DataFrame]) -> None:
    """Deals closed with a close date after the export time: closed by the export (module
    docstring), noted once."""
    deals = frames["deals"]
    if "closed_at" not in deals or deals["observed_at"].isna().all():
        return
    late = (deals["closed_at"] > deals["observed_at"]).fillna(False).to_numpy(dtype=bool)
    if not late.any():
        return
    recorded = _closed_stage_entry(run, frames, deals)
    modified = deals.get("modified_at", pd.Series(pd.NaT, index=deals.index))
    modified = modified.where(
        (modified <= deals["observed_at"]) & (modified >= deals["created_at"])
    )
    when = recorded.fillna(modified).fillna(deals["observed_at"])
    how = np.where(recorded.notna(), 0, np.where(modified.notna(), 1, 2))[late]
    if "expected_close_date" in deals:
        deals["expected_close_date"] = deals["expected_close_date"].fillna(
            deals["closed_at"].where(late).dt.normalize()
        )
    where = run.where("deals", deals, late)
    deals.loc[late, "closed_at"] = when[late]
    counts = [int((how == i).sum()) for i in range(3)]
    ways = zip(
        counts,
        ("when its closed stage was recorded", "its last modification", "the export time"),
        strict=True,
    )
    run.note(
        f"{int(late.sum()):,} closed deals have a close date after the export time "
        f"({deals['observed_at'].max()}): taken as closed as of "
        + ", ".join(f"{what} ({n:,})" for n, what in ways if n)
        + f"; the close date stays the expected close date: {where}"
        + (
            " (the export time was estimated: if these deals closed before the export, pass "
            "--exported-at or map the CRM's last-modified column, and their close dates stand)"
            if run.export_time_estimated and modified.isna().all()
            else ""
        )
    )


def _closed_stage_entry(
    run: ImportRun, frames: dict[str, pd.DataFrame], deals: pd.DataFrame
) -> pd.Series:
    """Per deal row: the last entry into a closed stage in the export's CRM stage history, on or
    before the export time (NaT: none)."""
    sh = frames.get("stage_history")
    none = pd.Series(pd.NaT, index=deals.index, dtype="datetime64[us]")
    if sh is None or not {"deal_id", "stage", "entered_at"} <= set(sh):
        return none
    closed_keys = [s.key for s in run.stages.stages if s.kind != StageKind.OPEN]
    rows = sh[sh["stage"].isin(closed_keys)]
    if "derived" in rows:
        rows = rows[~rows["derived"].fillna(False).astype(bool)]
    last = rows.groupby("deal_id")["entered_at"].max()
    entry = pd.Series(deals["deal_id"].map(last).to_numpy(), index=deals.index)
    entry = pd.to_datetime(entry).astype("datetime64[us]")
    return entry.where(entry <= deals["observed_at"])


def flag_entered_after_close(run: ImportRun, frames: dict[str, pd.DataFrame]) -> None:
    """``entered_after_close`` of every deal (module docstring), noted once with the count."""
    deals = frames["deals"]
    run.provide("deals", ["entered_after_close"])
    deals["entered_after_close"] = False
    if not {"closed_at", "created_at", "outcome"} <= set(deals):
        return
    closed = (
        deals["outcome"].isin([Outcome.WON.value, Outcome.LOST.value]) & deals["closed_at"].notna()
    )
    created_day = deals["created_at"].dt.normalize()
    back = (closed & (deals["closed_at"] < created_day)).fillna(False).astype(bool)
    first_stage, first_at = _first_crm_stage(frames, deals)
    kind = {s.key: s.kind for s in run.stages.stages}
    starts_closed = first_stage.map(lambda k: kind.get(k) not in (None, StageKind.OPEN))
    created_closed = (
        (closed & ~back & starts_closed.astype(bool) & (first_at.dt.normalize() <= created_day))
        .fillna(False)
        .astype(bool)
    )
    # Never open: one created closed with a later close date closed at its creation.
    later = created_closed & (deals["closed_at"] > first_at)
    deals.loc[later, "closed_at"] = first_at[later]
    flag = back | created_closed
    deals["entered_after_close"] = flag.to_numpy(dtype=bool)
    if flag.any():
        run.note(
            f"{int(flag.sum()):,} deals were entered in the CRM after they closed "
            f"({int(back.sum()):,} with a close date before the day they were created, "
            f"{int(created_closed.sum()):,} created in a closed stage): kept, flagged "
            "entered_after_close and counted in won and lost totals; left out of cycle length, "
            "time in stage, stage conversion and training snapshots (they were never open): "
            + run.where("deals", deals, flag)
        )


def _first_crm_stage(
    frames: dict[str, pd.DataFrame], deals: pd.DataFrame
) -> tuple[pd.Series, pd.Series]:
    """Per deal row: the stage and time of its first stage-history row read from the CRM."""
    sh = frames.get("stage_history")
    empty = pd.Series(pd.NA, index=deals.index, dtype="str")
    none = pd.Series(pd.NaT, index=deals.index, dtype="datetime64[us]")
    if sh is None or not {"deal_id", "stage", "entered_at"} <= set(sh):
        return empty, none
    rows = sh.dropna(subset=["deal_id", "entered_at"])
    if "derived" in rows:
        rows = rows[~rows["derived"].fillna(False).astype(bool)]
    first = rows.sort_values(["deal_id", "entered_at"], kind="stable").drop_duplicates("deal_id")
    first = first.set_index("deal_id")
    stage = pd.Series(deals["deal_id"].map(first["stage"]).to_numpy(), index=deals.index)
    at = pd.Series(deals["deal_id"].map(first["entered_at"]).to_numpy(), index=deals.index)
    return stage.astype("str"), pd.to_datetime(at).astype("datetime64[us]")


def check_deal_times(run: ImportRun, deals: pd.DataFrame) -> None:
    """Created after the export: impossible, refused. (Closed before created is a deal entered
    after it closed: :func:`flag_entered_after_close`.)"""
    if "created_at" in deals:
        late = deals["created_at"] > deals["observed_at"]
        run.report(
            "deals", deals, late, "created_at", lambda v: f"created after the export time ({v})"
        )


def derive_stage_history(run: ImportRun, deals: pd.DataFrame) -> pd.DataFrame:
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
    run.provide("stage_history", ["deal_id", "stage", "entered_at", "derived"])
    run.note(
        f"no stage history in the export: derived {len(out):,} rows from {len(deals):,} deals "
        "(stage at creation unknown)"
    )
    return out
