"""Build small canonical datasets by hand for tests: defaults for every column, override a few."""

from __future__ import annotations

from typing import Any

import pandas as pd

from features.data.schema import CanonicalTables, columns, empty_frame

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


def deal(deal_id: str, created_at: str, **overrides: Any) -> dict[str, Any]:
    row = {"deal_id": deal_id, "created_at": created_at, **DEAL_DEFAULTS}
    row.update(overrides)
    return row


def _frame(table: str, rows: list[dict[str, Any]] | None) -> pd.DataFrame:
    if not rows:
        return empty_frame(table)
    frame = pd.DataFrame(rows)
    extra = [c for c in frame.columns if c not in columns(table)]
    return frame[[c for c in columns(table) if c in frame.columns] + extra]


def tables(
    deals: list[dict[str, Any]],
    stage_history: list[tuple[str, str | None, str]] | None = None,
    field_history: list[tuple[str, str, str | None, str | None, str]] | None = None,
    activities: list[tuple[str, str, str]] | None = None,
    stakeholders: list[tuple[str, str, str, str]] | None = None,
    targets: list[tuple[str, str, str, float]] | None = None,
    derived: bool = False,
) -> CanonicalTables:
    """Tuples: stage_history (deal, stage, entered_at); field_history (deal, field, old, new, at);
    activities (deal, type, at);
    stakeholders (deal, contact, role, at); targets (scope, id, q, amount).
    """
    sh = [
        {"deal_id": d, "stage": s, "entered_at": t, "derived": derived}
        for d, s, t in stage_history or []
    ]
    fh = [
        {"deal_id": d, "field": f, "old_value": o, "new_value": n, "changed_at": t}
        for d, f, o, n, t in field_history or []
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
        deals=_frame("deals", deals),
        stage_history=_frame("stage_history", sh),
        field_history=_frame("field_history", fh),
        activities=_frame("activities", act),
        stakeholders=_frame("stakeholders", stk),
        targets=_frame("targets", tgt),
    ).validated()
