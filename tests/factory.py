"""Build small canonical datasets by hand for tests: defaults for every column, override a few.

**Field history as a CRM that logs from the start writes it.** Under the point-in-time rule
(:mod:`features.signals.pointintime`) a tracked field is known before the export only where dated
history covers it. A hand-written dataset means "these are the deal's values, logged by the CRM"
unless it says otherwise, so :func:`tables` adds, by default, one *creation row* per deal and
tracked field: old value missing -> the value the deal was created with, stamped at
``created_at`` -- the form Salesforce's snapshot history takes after import
(``features/data/importer/snapshots.py``). The creation value is the old value of the deal's
first given change of that field, or, if none is given, the deal row's value (it never changed).
A field the deal was created without gets a row too (missing -> missing): the CRM logged that
it was empty, which the importer cannot write (an export has no row for it) but a one-deal
fixture needs, or a field no deal ever set would be untracked. Deals of a deals-only import
(``history_source='derived'``) get none (no history was exported).

``logged_from_creation`` opts out: ``()`` means the CRM logged only the changes given (a field
with no given change is untracked, unknown before the export), a subset names the fields logged
from creation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from features.data.schema import (
    DATE_FIELDS,
    TRACKED_FIELDS,
    CanonicalTables,
    HistorySource,
    columns,
    empty_frame,
)

DEAL_DEFAULTS: dict[str, Any] = {
    "account": "ACME",
    "owner": "alice",
    "team": "north",
    "segment": "mid",
    "product": "press",
    "amount": 100_000.0,
    "stage": "qualification",
    "expected_close_date": None,
    "forecast_category": "pipeline",
    "next_step": "call",
    "next_step_date": None,
    "competitor": None,
    "closed_at": None,
    "outcome": "open",
    "loss_reason": None,
    "history_source": "crm",
    "observed_at": "2025-12-31",
}

FieldChange = tuple[str, str, str | None, str | None, Any]


def deal(deal_id: str, created_at: Any, **overrides: Any) -> dict[str, Any]:
    row = {"deal_id": deal_id, "created_at": created_at, **DEAL_DEFAULTS}
    row.update(overrides)
    return row


def _frame(table: str, rows: Sequence[dict[str, Any]] | None) -> pd.DataFrame:
    if not rows:
        return empty_frame(table)
    frame = pd.DataFrame(rows)
    extra = [c for c in frame.columns if c not in columns(table)]
    return frame[[c for c in columns(table) if c in frame.columns] + extra]


def _text(field: str, value: Any) -> str | None:
    """A deal-row value as field-history text (what the importer stores)."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if field == "amount":
        return str(float(value))
    if field in DATE_FIELDS:
        return pd.Timestamp(value).date().isoformat()
    return str(value)


def creation_rows(
    deals: Sequence[dict[str, Any]], changes: Sequence[FieldChange], fields: Iterable[str]
) -> list[FieldChange]:
    """The creation row (deal, field, None, value at creation, created_at) of every deal and
    field in ``fields`` (module docstring)."""
    first: dict[tuple[str, str], FieldChange] = {}
    for change in sorted(changes, key=lambda c: pd.Timestamp(c[4])):
        first.setdefault((change[0], change[1]), change)
    out: list[FieldChange] = []
    for row in deals:
        if row.get("history_source") == HistorySource.DERIVED.value:
            continue
        for field in fields:
            given = first.get((row["deal_id"], field))
            value = given[2] if given is not None else _text(field, row.get(field))
            out.append((row["deal_id"], field, None, value, row["created_at"]))
    return out


def tables(
    deals: Sequence[dict[str, Any]],
    stage_history: Sequence[tuple[str, str | None, Any]] | None = None,
    field_history: Sequence[FieldChange] | None = None,
    activities: Sequence[tuple[str, str, Any]] | None = None,
    stakeholders: Sequence[tuple[str, str, str, Any]] | None = None,
    targets: Sequence[tuple[str, str, str, float]] | None = None,
    derived: bool = False,
    logged_from_creation: Iterable[str] = TRACKED_FIELDS,
) -> CanonicalTables:
    """Tuples: stage_history (deal, stage, entered_at); field_history (deal, field, old, new, at);
    activities (deal, type, at);
    stakeholders (deal, contact, role, at); targets (scope, id, q, amount).
    ``logged_from_creation``: see the module docstring.
    """
    sh = [
        {"deal_id": d, "stage": s, "entered_at": t, "derived": derived}
        for d, s, t in stage_history or []
    ]
    given = list(field_history or [])
    # Creation rows first: a given change stamped at the creation itself is the later statement.
    changes = creation_rows(deals, given, logged_from_creation) + given
    fh = [
        # parsed one by one: hand-written stamps may mix "2025-06-05" and "2025-06-05 09:00"
        {"deal_id": d, "field": f, "old_value": o, "new_value": n, "changed_at": pd.Timestamp(t)}
        for d, f, o, n, t in changes
    ]
    act = [
        {"activity_id": f"a{i}", "deal_id": d, "type": k, "occurred_at": t}
        for i, (d, k, t) in enumerate(activities or [])
    ]
    stk = [
        {"deal_id": d, "contact_id": c, "role": r, "added_at": t}
        for d, c, r, t in stakeholders or []
    ]
    tgt = [{"scope": s, "scope_id": i, "quarter": q, "amount": a} for s, i, q, a in targets or []]
    return CanonicalTables(
        deals=_frame("deals", list(deals)),
        stage_history=_frame("stage_history", sh),
        field_history=_frame("field_history", fh),
        activities=_frame("activities", act),
        stakeholders=_frame("stakeholders", stk),
        targets=_frame("targets", tgt),
    ).validated()
