"""What a server process keeps in memory: the store's tables, reloaded when the file changes.

Reading every table of a 100k-deal store takes seconds, so a worker keeps one copy and checks the
file's identity (inode, size, modification time) on each request — a ``stat`` call. A load
replaces the store file (see ``features.data.store``), so a changed identity means new data;
requests already running keep the copy they started with.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from features.data.schema import CanonicalTables
from features.data.stages import StageConfig
from features.data.store import Store
from features.errors import StoreError
from serving.api.batching import Batcher
from serving.api.errors import ServiceUnavailable
from serving.api.models import ModelHolder, Registry

T = TypeVar("T")


@dataclass(frozen=True)
class Snapshot:
    """The store's tables as read at one version of the file."""

    version: str
    tables: CanonicalTables

    @property
    def data_end(self) -> pd.Timestamp | None:
        """The latest export time: the default as-of of every answer."""
        observed = self.tables.deals["observed_at"]
        return None if observed.empty else pd.Timestamp(observed.max())


def _version(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_ino}-{st.st_size}-{st.st_mtime_ns}"


def _read(path: Path) -> CanonicalTables:
    with Store(path, read_only=True) as store:
        return store.tables()


class StoreCache:
    """The current :class:`Snapshot` of one store file, reloaded when the file changes."""

    def __init__(self, path: Path, reader: Callable[[Path], CanonicalTables] = _read) -> None:
        self.path = path
        self._reader = reader
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None

    def current(self) -> Snapshot:
        if not self.path.exists():
            raise ServiceUnavailable(
                f"no store at {self.path}: load data first "
                "(`pipecast load` or POST /v1/data/import)"
            )
        version = _version(self.path)
        snap = self._snapshot
        if snap is not None and snap.version == version:
            return snap
        with self._lock:
            snap = self._snapshot
            if snap is not None and snap.version == version:
                return snap
            try:
                tables = self._reader(self.path)
            except StoreError:
                raise
            snap = Snapshot(version=_version(self.path), tables=tables)
            self._snapshot = snap
            return snap

    def reachable(self) -> bool:
        try:
            self.current()
        except Exception:
            return False
        return True


class ResultCache:
    """A small LRU of computed answers keyed by everything they depend on (store version...).

    Requests arriving together for an answer not computed yet wait for one computation instead
    of each running it (after a load, a page's first visitors would otherwise all pay for the
    same seconds of work, on a machine that has two cores)."""

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._computing: dict[Hashable, threading.Lock] = {}

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def _cached(self, key: Hashable) -> tuple[bool, Any]:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return True, self._items[key]
            return False, None

    def peek(self, key: Hashable) -> tuple[bool, Any]:
        """Whether ``key``'s answer is kept, and the answer (None when not)."""
        return self._cached(key)

    def seen(self, key: Hashable) -> bool:
        """Whether ``key`` was asked here before; notes it (kept and evicted like an answer)."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return True
            self._items[key] = True
            while len(self._items) > self._size:
                self._items.popitem(last=False)
            return False

    def get_or_compute(self, key: Hashable, compute: Callable[[], T]) -> T:
        found, value = self._cached(key)
        if found:
            return value  # type: ignore[no-any-return]
        with self._lock:
            turn = self._computing.setdefault(key, threading.Lock())
        with turn:  # one computation per key at a time; the others wait for its answer
            found, value = self._cached(key)
            if found:
                return value  # type: ignore[no-any-return]
            try:
                value = compute()
                with self._lock:
                    self._items[key] = value
                    while len(self._items) > self._size:
                        self._items.popitem(last=False)
            finally:
                with self._lock:
                    # A failed computation is not kept: the next caller tries again.
                    if self._computing.get(key) is turn:
                        del self._computing[key]
        return value  # type: ignore[no-any-return]


@dataclass
class AppState:
    """Everything a worker shares between requests."""

    store: StoreCache
    stages: StageConfig
    results: ResultCache
    models: ModelHolder
    registry: Registry
    # What-ifs of concurrent requests, scored together (serving.api.whatif.rescore).
    whatif: Batcher[Any, Any] = field(default_factory=Batcher)
    # Deals' signals as stored, what a what-if of them starts from (views.what_if_bases): kept
    # apart from ``results``, so what-ifs on many deals do not evict the ranked lists. About
    # 0.4 MB each (a hundred small pandas objects): 256 of them, about 100 MB at most.
    bases: ResultCache = field(default_factory=lambda: ResultCache(size=256))
    # Which deals were asked about once already (views.what_if_bases): a base from the second on.
    asked: ResultCache = field(default_factory=lambda: ResultCache(size=4096))
