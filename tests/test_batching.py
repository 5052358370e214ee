"""What-ifs of concurrent requests scored together (serving.api.batching) answer each as alone.

The batcher merges only asks whose answers cannot change by it: the same tracking starts and no
deal in two asks. These tests show a merge that breaks the first rule would change an answer,
that the plan keeps such asks apart, and that waiting requests are answered by one shared call
with their own results (an error only for the ask that caused it).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pandas as pd
import pytest

from features.data.schema import CanonicalTables
from features.data.stages import StageConfig
from features.signals.perdeal import DealRows, StoreFacts, deal_signals
from serving.api.batching import Ask, Batcher, plan, run_plan
from serving.api.whatif import changed_part, merge_parts, tracking_key
from tests import factory

AS_OF = pd.Timestamp("2025-06-01")


@pytest.fixture(scope="module")
def store() -> CanonicalTables:
    """Only the close date is logged: a what-if setting an amount starts the amount's tracking."""
    return factory.tables(
        deals=[
            factory.deal("a", "2025-01-10", closed_at="2025-05-01", outcome="won"),
            factory.deal("b", "2025-02-01"),
            factory.deal("c", "2025-03-01", owner="bob"),
            factory.deal("d", "2025-03-15", team="south"),
        ],
        activities=[("b", "call", "2025-04-01"), ("c", "meeting", "2025-05-20")],
        logged_from_creation=("expected_close_date",),
    )


def _signals(
    parts: Sequence[CanonicalTables], facts: StoreFacts, cfg: StageConfig
) -> list[pd.DataFrame]:
    frame = deal_signals(merge_parts(parts), facts, cfg)
    ids = frame["deal_id"]
    return [frame[ids.isin(p.deals["deal_id"])].reset_index(drop=True) for p in parts]


def test_parts_merged_by_the_plan_give_each_its_answer_alone(
    store: CanonicalTables, cfg: StageConfig
) -> None:
    rows, facts = DealRows.of(store), StoreFacts.of(store, AS_OF, cfg)
    changes: list[list[dict[str, Any]]] = [
        [{"deal_id": "b", "add_activities": ["demo"], "expected_close_date": "2025-09-30"}],
        # a stage change adds a stage exit (the rep's stage-to-stage conversion): alone
        [{"deal_id": "c", "stage": "proposal"}, {"deal_id": "d", "add_stakeholders": ["other"]}],
        [{"deal_id": "d", "add_stakeholders": ["champion"]}],  # d again: not with the one above
        [{"deal_id": "c", "amount": 5_000.0}],  # starts the amount's tracking: alone
    ]
    parts = [changed_part(rows, AS_OF, c) for c in changes]
    asks: list[Ask[CanonicalTables, pd.DataFrame]] = [
        Ask(p, frozenset(x["deal_id"] for x in c), tracking_key(facts, p))
        for p, c in zip(parts, changes, strict=True)
    ]
    runs = plan(asks)
    assert [[asks.index(a) for a in run] for run in runs] == [[0, 2], [1], [3]]
    for run in runs:
        together = _signals([a.payload for a in run], facts, cfg)
        for ask, got in zip(run, together, strict=True):
            # values equal; a text column's dtype is inferred from what the frame holds (all
            # missing: object), so it may differ between one deal and several
            alone = _signals([ask.payload], facts, cfg)[0]
            pd.testing.assert_frame_equal(got, alone, check_dtype=False)


def test_merging_across_tracking_starts_would_change_an_answer(
    store: CanonicalTables, cfg: StageConfig
) -> None:
    """Why the plan keeps the amount change apart: merged, deal b's amount would count as known."""
    rows, facts = DealRows.of(store), StoreFacts.of(store, AS_OF, cfg)
    plain = changed_part(rows, AS_OF, [{"deal_id": "b", "add_activities": ["demo"]}])
    amount = changed_part(rows, AS_OF, [{"deal_id": "c", "amount": 5_000.0}])
    assert tracking_key(facts, plain) != tracking_key(facts, amount)
    alone = _signals([plain], facts, cfg)[0]
    merged = _signals([plain, amount], facts, cfg)[0]
    assert alone["amount_known"].iloc[0] == 0.0 and merged["amount_known"].iloc[0] == 1.0


def test_waiting_requests_share_one_call_and_get_their_own_results() -> None:
    batcher: Batcher[str, str] = Batcher()
    calls: list[list[str]] = []
    first_started, release = threading.Event(), threading.Event()

    def compute(payloads: Sequence[str]) -> list[str]:
        calls.append(list(payloads))
        if len(calls) == 1:
            first_started.set()
            assert release.wait(10)
        if "bad" in payloads:
            raise ValueError("bad payload")
        return [p.upper() for p in payloads]

    results: dict[str, object] = {}

    def ask(payload: str) -> None:
        try:
            results[payload] = batcher.run("k", Ask(payload, frozenset({payload}), 0), compute)
        except ValueError as err:
            results[payload] = err

    lead = threading.Thread(target=ask, args=("x",))
    lead.start()
    assert first_started.wait(10)
    others = [threading.Thread(target=ask, args=(p,)) for p in ("y", "bad", "z")]
    for t in others:
        t.start()
    while sum(len(v) for v in batcher._waiting.values()) < 3:  # all three queued behind x
        threading.Event().wait(0.01)
    release.set()
    for t in [lead, *others]:
        t.join(10)
    assert results["x"] == "X" and results["y"] == "Y" and results["z"] == "Z"
    assert isinstance(results["bad"], ValueError)
    # x alone; then the three together (the error), then each alone
    assert calls[0] == ["x"] and sorted(calls[1]) == ["bad", "y", "z"]
    assert sorted(map(tuple, calls[2:])) == [("bad",), ("y",), ("z",)]
    assert not batcher._busy and not batcher._waiting


def test_the_same_question_waiting_twice_is_computed_once() -> None:
    computed: list[list[str]] = []

    def compute(payloads: Sequence[str]) -> list[str]:
        computed.append(list(payloads))
        return [p.upper() for p in payloads]

    asks: list[Ask[str, str]] = [
        Ask("a", frozenset({"d1"}), 0, same="q1"),
        Ask("a", frozenset({"d1"}), 0, same="q1"),  # the same deal and change: one answer
        Ask("b", frozenset({"d1"}), 0, same="q2"),  # the same deal, another change: apart
        Ask("c", frozenset({"d2"}), 0),
    ]
    run_plan(asks, compute)
    assert [a.result for a in asks] == ["A", "A", "B", "C"]
    assert computed == [["a", "c"], ["b"]]
