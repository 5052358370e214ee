"""Concurrent requests' work done together: one computation for all the requests waiting.

A what-if costs about as much for one deal as for a hundred: a few thousand small pandas and
LightGBM calls whose cost does not grow with the rows (``benchmarks/bench_api.py``). While one
batch is computed, requests that arrive wait; the next batch takes them all. No timer: an idle
server computes a lone request at once, a busy one computes as many requests per call as arrived
during the last one.

The leader of a batch is a request thread (no thread of its own): the first request for a key
computes; a request arriving meanwhile waits and is either answered by the next batch or woken to
lead it. A batch computes together only what gives the same answer together as alone, which the
caller states: ``group`` (asks with the same group key may share a computation) and the asks'
items (no item, a deal, may be in two asks of one computation). The same question asked by
several waiting requests (``same``) is computed once for all of them. An error computing a
shared batch is retried ask by ask, so one bad request fails alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

P = TypeVar("P")  # what one request asks (e.g. its deals' rows with its changes)
R = TypeVar("R")  # what it gets


@dataclass(eq=False)
class Ask(Generic[P, R]):
    """One request's part of a batch."""

    payload: P
    items: frozenset[str]
    group: Hashable
    # The question itself: asks that put the same one share one answer (None: never shared).
    same: Hashable = None
    done: threading.Event = field(default_factory=threading.Event)
    finished: bool = False
    result: R | None = None
    error: BaseException | None = None


Compute = Callable[[Sequence[P]], Sequence[R]]


def plan(asks: Sequence[Ask[P, R]]) -> list[list[Ask[P, R]]]:
    """Split asks into computations: same group key, no item in two asks of one computation
    (arrival order kept, first fit)."""
    runs: list[tuple[Hashable, set[str], list[Ask[P, R]]]] = []
    for ask in asks:
        for group, items, members in runs:
            if group == ask.group and not (items & ask.items):
                items |= ask.items
                members.append(ask)
                break
        else:
            runs.append((ask.group, set(ask.items), [ask]))
    return [members for _, _, members in runs]


def run_plan(asks: Sequence[Ask[P, R]], compute: Compute[P, R]) -> None:
    """Compute every ask (shared where :func:`plan` allows; a question asked twice once): its
    result or its error."""
    first: dict[Hashable, Ask[P, R]] = {}
    asked: list[Ask[P, R]] = []
    copies: list[tuple[Ask[P, R], Ask[P, R]]] = []
    for ask in asks:
        if ask.same is not None and ask.same in first:
            copies.append((ask, first[ask.same]))
            continue
        if ask.same is not None:
            first[ask.same] = ask
        asked.append(ask)
    _compute(asked, compute)
    for ask, original in copies:
        ask.result, ask.error = original.result, original.error


def _compute(asks: Sequence[Ask[P, R]], compute: Compute[P, R]) -> None:
    for members in plan(asks):
        try:
            results = compute([a.payload for a in members])
        except Exception as err:
            if len(members) == 1:
                members[0].error = err
                continue
            for ask in members:  # alone, so an error is its own
                try:
                    ask.result = compute([ask.payload])[0]
                except Exception as own:
                    ask.error = own
        else:
            for ask, result in zip(members, results, strict=True):
                ask.result = result


class Batcher(Generic[P, R]):
    """Runs the asks of concurrent requests in batches, per key (the things a batch must share:
    the store version, the models, the as-of)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[Hashable, list[Ask[P, R]]] = {}
        self._busy: set[Hashable] = set()

    def run(self, key: Hashable, ask: Ask[P, R], compute: Compute[P, R]) -> R:
        """``ask``'s result, computed in a batch with the asks of other requests for ``key``."""
        with self._lock:
            self._waiting.setdefault(key, []).append(ask)
            lead = key not in self._busy
            self._busy.add(key)
        if not lead:
            ask.done.wait()  # answered, or woken to lead the next batch
        if not ask.finished:
            self._lead(key, compute)
        if ask.error is not None:
            raise ask.error
        return ask.result  # type: ignore[return-value]

    def _lead(self, key: Hashable, compute: Compute[P, R]) -> None:
        with self._lock:
            batch = self._waiting.pop(key, [])
        try:
            run_plan(batch, compute)
        except BaseException as err:  # not the computation's: no ask may go unanswered
            for ask in batch:
                if ask.result is None and ask.error is None:
                    ask.error = err
        finally:
            with self._lock:
                for ask in batch:
                    ask.finished = True
                    ask.done.set()
                following = self._waiting.get(key)
                if following:
                    following[0].done.set()  # not finished: it leads the next batch
                else:
                    self._busy.discard(key)
