"""What the importer derives from the deal rows, and why (nothing is guessed):

- ``outcome`` missing or empty: from the kind (open/won/lost) of the deal's stage.
- ``closed_at`` on an open deal is dropped: some CRMs (Salesforce ``CloseDate``, HubSpot
  ``Close Date``) use one column for both the expected and the actual close date. A won or lost
  deal without one is kept as it is, with a note (closed by the export, when unknown).
- ``observed_at`` (when the deal row was true) is the export time: the ``exported_at`` argument,
  else the mapping's ``exported_at``, else a non-empty ``observed_at`` column of the file, else the
  latest *recorded* timestamp in the export (deals created/closed, stage and field changes,
  stakeholders added). Activities and planned dates are left out: CRMs export scheduled meetings
  and expected close dates in the future. Deterministic: the same files give the same value.
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
        run.note(f"observed_at (export time) taken as the latest recorded timestamp: {latest}")
    return pd.Timestamp(latest)


def check_deal_times(run: ImportRun, deals: pd.DataFrame) -> None:
    """Closed before created, created after the export: impossible, refused."""
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
