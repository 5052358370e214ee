"""What-if scoring: a deal as the store has it, plus changes made at ``as_of``, scored again.

A change becomes the event the CRM would have logged at ``as_of`` (a field change, a stage
entry, a stakeholder added, an activity), so the signals see it through the same point-in-time
rule as everything else. At or after a deal's export time its row speaks for it (see
:mod:`features.signals.pointintime`), so there the row's fields change too. The store itself is
never touched.

Two ways to the same numbers:

- :func:`rescore` (what the endpoint uses): the changed deals' own rows cut from the store
  (:class:`~features.signals.perdeal.DealRows`, found once per store version), the changes added to
  that part only, and its signals computed with what a deal reads of other deals — tracking
  starts and rep and team track records — taken from
  :class:`~features.signals.perdeal.StoreFacts` (once per store version and as-of). Then the
  models score those rows, with reasons but without next actions (the response has none, and
  they read the whole store's hygiene). Concurrent requests' what-ifs are scored in one call
  where that gives each the same answer (:mod:`serving.api.batching`, :func:`score_parts`):
  the cost of a call hardly grows with its deals.
- :func:`rescore_full`, the reference: the whole store copied with the changes added, scored as
  the ranked list is. ``tests/test_api_models.py`` holds the two equal over deals, dates and
  change kinds (``tests/test_perdeal.py`` the signals alone).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import pandas as pd

from features.data.schema import CanonicalTables
from features.data.stages import StageConfig
from features.signals.perdeal import DealRows, PartSignals, StoreFacts, deal_signals, part_signals
from serving.api.batching import Ask, Batcher
from training.fitting import FittedModels
from training.scoring import score_rows

FIELDS = ("amount", "expected_close_date", "forecast_category", "next_step", "next_step_date")


def _text(value: Any) -> str:
    if hasattr(value, "isoformat"):
        return str(value.isoformat())[:10]
    return str(value)


def apply_changes(
    tables: CanonicalTables, changes: list[dict[str, Any]], as_of: pd.Timestamp
) -> CanonicalTables:
    """``tables`` with every change of every deal added as an event stamped ``as_of``."""
    fields: list[dict[str, Any]] = []
    stages: list[dict[str, Any]] = []
    people: list[dict[str, Any]] = []
    acts: list[dict[str, Any]] = []
    for i, change in enumerate(changes):
        deal_id = change["deal_id"]
        for name in FIELDS:
            if change.get(name) is not None:
                fields.append(
                    {
                        "deal_id": deal_id,
                        "field": name,
                        "old_value": None,
                        "new_value": _text(change[name]),
                        "changed_at": as_of,
                    }
                )
        if change.get("stage") is not None:
            stages.append(
                {
                    "deal_id": deal_id,
                    "stage": change["stage"],
                    "entered_at": as_of,
                    "derived": False,
                }
            )
        for j, role in enumerate(change.get("add_stakeholders") or []):
            people.append(
                {
                    "deal_id": deal_id,
                    "contact_id": f"what-if-{i}-{j}",
                    "role": str(role),
                    "added_at": as_of,
                }
            )
        for j, kind in enumerate(change.get("add_activities") or []):
            acts.append(
                {
                    "activity_id": f"what-if-{i}-{j}",
                    "deal_id": deal_id,
                    "type": str(kind),
                    "occurred_at": as_of,
                }
            )

    def plus(frame: pd.DataFrame, rows: list[dict[str, Any]]) -> pd.DataFrame:
        if not rows:
            return frame
        extra = pd.DataFrame(rows, columns=list(frame.columns)).astype(frame.dtypes.to_dict())
        return pd.concat([frame, extra], ignore_index=True)

    return replace(
        tables,
        deals=_rows_changed(tables.deals, changes, as_of),
        field_history=plus(tables.field_history, fields),
        stage_history=plus(tables.stage_history, stages),
        stakeholders=plus(tables.stakeholders, people),
        activities=plus(tables.activities, acts),
    )


def _rows_changed(
    deals: pd.DataFrame, changes: list[dict[str, Any]], as_of: pd.Timestamp
) -> pd.DataFrame:
    out = deals.copy()
    for change in changes:
        at = out.index[(out["deal_id"] == change["deal_id"]) & (out["observed_at"] <= as_of)]
        if len(at) == 0:
            continue
        for name in (*FIELDS, "stage"):
            value = change.get(name)
            if value is None:
                continue
            if name in ("expected_close_date", "next_step_date"):
                value = pd.Timestamp(value)
            out.loc[at, name] = value
    return out


def changed_ids(changes: list[dict[str, Any]]) -> list[str]:
    return [str(c["deal_id"]) for c in changes]


def changed_part(
    rows: DealRows, as_of: pd.Timestamp, changes: list[dict[str, Any]]
) -> CanonicalTables:
    """The changed deals' rows of the store with their changes added at ``as_of``."""
    return apply_changes(rows.part(changed_ids(changes)), changes, as_of)


def merge_parts(parts: Sequence[CanonicalTables]) -> CanonicalTables:
    """Parts of one store (for other deals each) as one: each deal keeps its rows in order."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    merged = {
        f.name: pd.concat([getattr(p, f.name) for p in parts], ignore_index=True)
        for f in fields(first)
        if "deal_id" in getattr(first, f.name).columns
    }
    return replace(first, **merged)


def score_parts(
    models: FittedModels,
    facts: StoreFacts,
    stages: StageConfig,
    parts: Sequence[CanonicalTables],
    bases: Sequence[PartSignals | None] | None = None,
) -> list[pd.DataFrame]:
    """Each part's deals scored at ``facts.as_of`` (the models run once for all): p_win,
    p_won_this_quarter, expected_value and reasons, one row per deal open then, in the part's
    order. A part with a base (:func:`~features.signals.perdeal.part_signals` of its deals'
    rows without the changes) gets its signals from it, recomputing only what its changes
    reach; the parts without one get theirs in one call, which equals scoring each alone when
    no deal is in two parts and the parts give the same tracking starts (:func:`tracking_key`)."""
    bases = list(bases) if bases is not None else [None] * len(parts)
    custom, static_custom = models.custom, models.config.static_custom
    fresh = [p for p, b in zip(parts, bases, strict=True) if b is None]
    frames = (
        [
            deal_signals(
                merge_parts(fresh), facts, stages, custom=custom, static_custom=static_custom
            )
        ]
        if fresh
        else []
    )
    frames += [
        part_signals(p, facts, stages, base=b, custom=custom, static_custom=static_custom).signals
        for p, b in zip(parts, bases, strict=True)
        if b is not None
    ]
    signals = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    scored = score_rows(models, signals, stages, reasons=True)
    ids = scored["deal_id"]
    return [scored[ids.isin(p.deals["deal_id"])].reset_index(drop=True) for p in parts]


def tracking_key(facts: StoreFacts, part: CanonicalTables) -> Hashable:
    """Parts with the same key may be scored together: a change to a field the store had not
    tracked by as-of starts its tracking, and so would reach every deal scored with it; a stage
    change adds a stage exit, which reaches the rep's and team's stage-to-stage conversion of
    every deal scored with it (such a part gets a key of its own)."""
    tracking = tuple(sorted(facts.tracking(part).items()))
    if facts.adds_stage_rows(part):
        return (tracking, "own", id(part))
    return tracking


@dataclass(frozen=True)
class WhatIf:
    """One request's what-if: its deals' rows with the changes added, and the signals of the
    same rows without them (``base``, when known) to compute from."""

    part: CanonicalTables
    base: PartSignals | None = None


def base_signals(
    models: FittedModels,
    rows: DealRows,
    facts: StoreFacts,
    stages: StageConfig,
    ids: tuple[str, ...],
) -> PartSignals:
    """The deals' signals at ``facts.as_of`` as the store has them, kept with their states and
    registry nodes: a what-if of these deals starts from it (:func:`rescore`'s ``bases``)."""
    return part_signals(
        rows.part(ids),
        facts,
        stages,
        custom=models.custom,
        static_custom=models.config.static_custom,
    )


def rescore(
    models: FittedModels,
    rows: DealRows,
    facts: StoreFacts,
    stages: StageConfig,
    changes: list[dict[str, Any]],
    *,
    batcher: Batcher[WhatIf, pd.DataFrame] | None = None,
    key: Hashable = None,
    bases: Callable[[tuple[str, ...]], PartSignals | None] | None = None,
) -> pd.DataFrame:
    """The changed deals scored at ``facts.as_of`` with their changes (one row per changed deal
    open then, in the store's order): p_win, p_won_this_quarter, expected_value and reasons.
    ``rows`` and ``facts`` must come from the same store tables. ``bases`` gives the changed
    deals' :func:`base_signals` (kept between requests by the caller) or None: with one, the
    changes are added to its rows and only what they reach is recomputed. With a ``batcher``, scored
    together with the what-ifs of concurrent requests for the same ``key`` (which must name the
    store version, as-of and models) where that gives the same answer
    (:mod:`serving.api.batching`)."""
    ids = tuple(dict.fromkeys(changed_ids(changes)))
    base = bases(ids) if bases is not None else None
    part = apply_changes(base.part if base else rows.part(ids), changes, facts.as_of)

    def compute(asks: Sequence[WhatIf]) -> list[pd.DataFrame]:
        return score_parts(models, facts, stages, [a.part for a in asks], [a.base for a in asks])

    if batcher is None:
        return compute([WhatIf(part, base)])[0]
    ask: Ask[WhatIf, pd.DataFrame] = Ask(
        WhatIf(part, base),
        frozenset(ids),
        tracking_key(facts, part),
        same=json.dumps(changes, sort_keys=True, default=str),
    )
    return batcher.run(key, ask, compute)


def rescore_full(
    models: FittedModels,
    tables: CanonicalTables,
    stages: StageConfig,
    as_of: pd.Timestamp,
    changes: list[dict[str, Any]],
) -> pd.DataFrame:
    """:func:`rescore` the slow, obvious way (the reference its tests compare to): the whole
    store with the changes added, scored as the ranked list is."""
    changed = apply_changes(tables, changes, as_of)
    return models.score(changed, stages, as_of, reasons=True, deal_ids=changed_ids(changes))
