"""Signals of a few deals from their own rows (features.signals.perdeal) equal the whole store's.

The per-deal path is what the what-if endpoint scores with, so every column must match
:func:`compute_signals` on the whole store exactly: without changes, and with what-if changes
added to the part on one side and to the whole store on the other (the reference path).
"""

from __future__ import annotations

import inspect
from typing import Any

import pandas as pd
import pytest

from features.data.schema import CanonicalTables
from features.data.stages import StageConfig
from features.signals import compute_signals, registry
from features.signals.perdeal import DealRows, StoreFacts, deal_signals, part_signals
from serving.api.whatif import apply_changes
from tests import factory

DATES = ["2024-03-31 12:00", "2025-01-15", "2025-06-30 23:59"]

CHANGES: dict[str, dict[str, Any]] = {
    "nothing": {},
    "amount": {"amount": 250_000.0},
    "stage": {"stage": "negotiation"},
    "close date pushed": {"expected_close_date": "2026-09-30"},
    "close date pulled in": {"expected_close_date": "2024-01-01"},
    "forecast category": {"forecast_category": "commit"},
    "next step": {"next_step": "steering committee", "next_step_date": "2026-01-10"},
    "stakeholders": {"add_stakeholders": ["champion", "decision_maker"]},
    "activities": {"add_activities": ["meeting", "demo", "call"]},
    "everything": {
        "amount": 10.0,
        "stage": "proposal",
        "expected_close_date": "2025-12-31",
        "forecast_category": "best_case",
        "next_step": "send terms",
        "add_stakeholders": ["finance"],
        "add_activities": ["proposal"],
    },
}


def _reference(
    tables: CanonicalTables, stages: StageConfig, as_of: pd.Timestamp, changes: list[dict]
) -> pd.DataFrame:
    ids = [c["deal_id"] for c in changes]
    changed = apply_changes(tables, changes, as_of)
    return compute_signals(changed, as_of, stages, deal_ids=ids).reset_index(drop=True)


def _per_deal(
    tables: CanonicalTables,
    stages: StageConfig,
    as_of: pd.Timestamp,
    changes: list[dict],
    *,
    from_base: bool = False,
) -> pd.DataFrame:
    """The changed deals' signals from their own rows; ``from_base``: as the what-if endpoint
    computes them, from the same deals' signals without the changes (only what changed is
    recomputed)."""
    rows, facts = DealRows.of(tables), StoreFacts.of(tables, as_of, stages)
    ids = [c["deal_id"] for c in changes]
    if not from_base:
        part = apply_changes(rows.part(ids), changes, as_of)
        return deal_signals(part, facts, stages).reset_index(drop=True)
    base = part_signals(rows.part(ids), facts, stages)
    part = apply_changes(base.part, changes, as_of)
    return part_signals(part, facts, stages, base=base).signals.reset_index(drop=True)


def _open_ids(tables: CanonicalTables, stages: StageConfig, as_of: pd.Timestamp) -> list[str]:
    return list(compute_signals(tables, as_of, stages, signals=["stage"])["deal_id"])


@pytest.mark.parametrize("when", DATES)
def test_every_open_deal_alone_equals_the_whole_store(
    generated_tables: CanonicalTables, cfg: StageConfig, when: str
) -> None:
    as_of = pd.Timestamp(when)
    full = compute_signals(generated_tables, as_of, cfg).set_index("deal_id")
    rows, facts = DealRows.of(generated_tables), StoreFacts.of(generated_tables, as_of, cfg)
    ids = list(full.index)
    assert len(ids) > 20
    # one part holding every open deal, and a few deals alone
    together = deal_signals(rows.part(ids), facts, cfg).set_index("deal_id")
    pd.testing.assert_frame_equal(together, full.loc[together.index])
    for deal_id in ids[:: max(1, len(ids) // 8)]:
        alone = deal_signals(rows.part([deal_id]), facts, cfg).set_index("deal_id")
        pd.testing.assert_frame_equal(alone, full.loc[[deal_id]])


@pytest.mark.parametrize("from_base", [False, True], ids=["afresh", "from-base"])
@pytest.mark.parametrize("kind", list(CHANGES))
@pytest.mark.parametrize("when", DATES)
def test_what_if_changes_give_the_same_signals_as_the_whole_store(
    generated_tables: CanonicalTables, cfg: StageConfig, kind: str, when: str, from_base: bool
) -> None:
    as_of = pd.Timestamp(when)
    ids = _open_ids(generated_tables, cfg, as_of)
    picked = ids[:: max(1, len(ids) // 5)][:5]
    changes = [{"deal_id": d, **CHANGES[kind]} for d in picked]
    pd.testing.assert_frame_equal(
        _per_deal(generated_tables, cfg, as_of, changes, from_base=from_base),
        _reference(generated_tables, cfg, as_of, changes),
    )


def _reads(name: str, table: str) -> bool:
    """Whether registry node ``name`` reads ``table`` (or the state column), directly or not."""
    if name == table:
        return True
    fn = registry.NODES.get(registry.EXTRACTED.get(name, name))
    return fn is not None and any(
        _reads(p, table) for p in inspect.signature(fn).parameters if p != name
    )


def test_a_what_if_from_its_base_recomputes_only_what_the_change_reaches(
    generated_tables: CanonicalTables, cfg: StageConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Added stakeholders reach the stakeholder signals only: the states are reused and no
    stage, activity or track-record node runs again; an amount change rebuilds the states."""
    as_of = pd.Timestamp(DATES[1])
    deal_id = _open_ids(generated_tables, cfg, as_of)[0]
    rows, facts = DealRows.of(generated_tables), StoreFacts.of(generated_tables, as_of, cfg)
    base = part_signals(rows.part([deal_id]), facts, cfg)
    ran: list[str] = []
    for name, fn in list(registry.NODES.items()):

        def spy(*args: Any, __fn: Any = fn, __name: str = name, **kw: Any) -> Any:
            ran.append(__name)
            return __fn(*args, **kw)

        spy.__signature__ = inspect.signature(fn)  # type: ignore[attr-defined]
        monkeypatch.setitem(registry.NODES, name, spy)
    monkeypatch.setattr(registry, "_params", lambda fn: tuple(inspect.signature(fn).parameters))

    people = [{"deal_id": deal_id, "add_stakeholders": ["champion"]}]
    part = apply_changes(base.part, people, as_of)
    part_signals(part, facts, cfg)
    afresh = set(ran)
    ran.clear()
    got = part_signals(part, facts, cfg, base=base)
    assert got.states is base.states
    assert set(ran) == {name for name in afresh if _reads(name, "stakeholders")}
    assert len(ran) < len(afresh) / 3, (len(ran), len(afresh))
    assert got.signals["n_stakeholders"].iloc[0] == base.signals["n_stakeholders"].iloc[0] + 1

    ran.clear()
    amount = [{"deal_id": deal_id, "amount": 123_456.0}]
    got = part_signals(apply_changes(base.part, amount, as_of), facts, cfg, base=base)
    assert got.states is not base.states
    assert got.signals["amount"].iloc[0] == 123_456.0
    assert "n_stakeholders" not in ran


def test_a_change_to_an_untracked_field_starts_its_tracking_as_in_the_store(
    cfg: StageConfig,
) -> None:
    """Only the close date is logged (a common Salesforce org): a what-if that sets the amount
    logs the first amount change of the whole export, so the amount becomes tracked at as_of —
    for the part exactly as for the store (the part alone has no other deal to say otherwise)."""
    tables = factory.tables(
        deals=[
            factory.deal("a", "2025-01-10", closed_at="2025-05-01", outcome="won"),
            factory.deal("b", "2025-02-01"),
            factory.deal("c", "2025-03-01", owner="bob"),
        ],
        logged_from_creation=("expected_close_date",),
    )
    as_of = pd.Timestamp("2025-06-01")
    for change in ({"amount": 5_000.0}, {"next_step": "call back"}, {}):
        changes = [{"deal_id": "b", **change}]
        got = _per_deal(tables, cfg, as_of, changes)
        pd.testing.assert_frame_equal(got, _reference(tables, cfg, as_of, changes))
    assert got["amount_known"].iloc[0] == 0.0  # untracked, no change asked: unknown
    changed = _per_deal(tables, cfg, as_of, [{"deal_id": "b", "amount": 5_000.0}])
    assert changed["amount_known"].iloc[0] == 1.0 and changed["amount"].iloc[0] == 5_000.0
