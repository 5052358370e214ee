"""The embedded DuckDB store of the canonical tables, readable while another process loads.

One file (``Settings.db``, ``pipecast.duckdb`` by default) holds every table of
``features.data.schema``. A load lands whole or not at all; re-loading an export changes nothing;
a newer export replaces the current values of its deals (only the columns the export carries) and
appends the history rows the store does not have yet.

Why readers never block, and how writers serialise (DuckDB lets one process open a file for
writing, and then nobody else may open it at all):

- A **reader** (``Store(path)``) attaches the file ``READ_ONLY`` in a private in-memory DuckDB.
  Read-only opens share the file, so any number of readers work side by side, also on a file
  the user may not write.
- A **writer** (``Store(path, read_only=False)``) never opens the store file for writing. It takes
  an exclusive ``fcntl`` lock on ``<store>.lock`` (a second writer waits ``lock_timeout`` seconds,
  then gets :class:`StoreBusyError`), copies the store to a hidden temporary file beside it,
  loads into the copy in one transaction, checkpoints it, and ``os.replace``-s it over the store.
  The rename is atomic: a reader opens either the old file or the new one, and a reader that had
  the old one open keeps reading it until it closes. A failed or interrupted load deletes its
  copy and leaves the store untouched (byte for byte, so no bloat either); a killed one leaves
  only the copy, which the next writer removes.

The price is a copy of the file per load (about a second per 100 MB), paid by the writer only.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

import duckdb
import numpy as np
import pandas as pd

from features.data.currency import corporate_currency
from features.data.schema import (
    CUSTOM_PREFIX,
    PRIMARY_KEYS,
    TRACKED_FIELDS,
    CanonicalTables,
    HistorySource,
    Outcome,
    columns,
    empty_frame,
)
from features.errors import NotFoundError, StoreBusyError, StoreError
from features.settings import get_settings

# Current values, not events: a newer row replaces the stored one. These small tables carry a
# DuckDB primary key; the large append-only history tables get none (an ART index on millions of
# text keys doubles the load time) and their natural key is kept by an anti-join on insert.
_UPSERT_TABLES = ("deals", "targets")
# Tables and deal columns newer than the first stores: a store without them is read as if they
# were empty (no rates: one unnamed currency; no currency: the corporate one), and a load adds
# them.
_ADDED_TABLES = ("exchange_rates",)
# Set by the importer on every deal row (outcome from the stage, which every export carries when
# it lacks an outcome column), so always replaced with a newer row.
_ALWAYS_PROVIDED = frozenset({"observed_at", "history_source", "outcome"})
# A new store file must say what it is: DuckDB opens an existing CSV or Parquet file as an empty
# in-memory database and "loads" into nothing.
STORE_SUFFIXES = (".duckdb", ".ddb", ".db")
# Never fetch an extension (DuckDB would, to read an SQLite file handed to it as a store).
_DUCKDB_CONFIG: dict[str, str | bool | int | float | list[str]] = {
    "autoload_known_extensions": False,
    "autoinstall_known_extensions": False,
}
_DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
_DISK_FULL_TEXT = ("no space left on device", "file too large", "disk quota exceeded")
_POLL_SECONDS = 0.05
_counter = itertools.count()


@dataclass(frozen=True)
class LoadReport:
    """Rows each table gained, how many stored deals got newer values, and how many history rows
    were recorded from changed deal rows that the export carried no history for."""

    inserted: dict[str, int]
    updated_deals: int
    recorded_changes: int = 0


def _sql_type(dtype: np.dtype | pd.api.extensions.ExtensionDtype) -> str:
    if pd.api.types.is_bool_dtype(dtype):
        return "BOOLEAN"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "TIMESTAMP"
    if pd.api.types.is_integer_dtype(dtype):
        return "BIGINT"
    if pd.api.types.is_float_dtype(dtype):
        return "DOUBLE"
    return "VARCHAR"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(text: str | Path) -> str:
    return "'" + str(text).replace("'", "''") + "'"


def _cols(names: list[str], prefix: str = "") -> str:
    return ", ".join(prefix + _q(c) for c in names)


def _as_text(expr: str, sql_type: str) -> str:
    """A stored value as field-history text, formatted as the importer formats it."""
    if sql_type == "TIMESTAMP":
        return (
            f"CASE WHEN {expr} = date_trunc('day', {expr}) THEN strftime({expr}, '%Y-%m-%d') "
            f"ELSE strftime({expr}, '%Y-%m-%dT%H:%M:%S') END"
        )
    return f"CAST({expr} AS VARCHAR)"


def check_store_file(path: Path) -> None:
    """Refuse a file that is not a DuckDB database (CSV, Parquet, SQLite, text, empty...)."""
    if path.is_dir():
        raise StoreError(f"{path} is a directory, not a store file")
    try:
        with path.open("rb") as f:
            head = f.read(16)
    except OSError as err:
        raise StoreError(f"{path}: cannot read the store file: {err.strerror}") from None
    if not head:
        raise StoreError(f"{path} is an empty file, not a DuckDB store; remove it or pick another")
    if head.startswith(b"SQLite format 3"):
        raise StoreError(f"{path} is an SQLite database, not a DuckDB store")
    if head[8:12] != b"DUCK":
        raise StoreError(
            f"{path} is not a DuckDB store (it looks like another kind of file: CSV, Parquet, "
            "text...); pick a .duckdb file"
        )


def _is_disk_full(err: BaseException) -> bool:
    if isinstance(err, OSError):
        return err.errno in _DISK_FULL
    return isinstance(err, duckdb.Error) and any(t in str(err).lower() for t in _DISK_FULL_TEXT)


def _is_interrupt(err: BaseException) -> bool:
    # DuckDB turns Ctrl-C during a query into an error of its own (RuntimeError "Query
    # interrupted" in DuckDB 2): it is still the user's Ctrl-C.
    interrupt = getattr(duckdb, "InterruptException", None)
    return (interrupt is not None and isinstance(err, interrupt)) or (
        isinstance(err, RuntimeError) and str(err).strip() == "Query interrupted"
    )


def _connect() -> duckdb.DuckDBPyConnection:
    """A private in-memory DuckDB (never the process-wide cached instance of a file, which
    would keep serving a replaced store), into which the store file is attached."""
    con = duckdb.connect(":memory:", config=_DUCKDB_CONFIG)
    con.execute("SET enable_progress_bar = false")  # no stray bars in CLI output
    return con


class _WriterLock:
    """An exclusive ``fcntl`` lock on ``<store>.lock``: one writer per store at a time.

    The lock file is left in place: removing it would let two writers lock two different files.
    The kernel releases the lock when the process dies, however it dies.
    """

    def __init__(self, store: Path) -> None:
        self.path = store.with_name(store.name + ".lock")
        self._file: IO[str] | None = None

    def acquire(self, timeout: float) -> None:
        try:
            handle = self.path.open("a+")
        except OSError as err:
            raise StoreError(
                f"{self.path.parent}: cannot write the store's lock file ({err.strerror})"
            ) from None
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = self._holder(handle)
                    handle.close()
                    raise StoreBusyError(
                        f"{self.path.with_suffix('')} is busy: another load{holder} is writing "
                        f"it (waited {timeout:g} s); try again when it is done"
                    ) from None
                time.sleep(_POLL_SECONDS)
        with contextlib.suppress(OSError):  # only said in a busy message; a full disk is not
            handle.seek(0)  # a reason to refuse the lock
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
        self._file = handle

    @staticmethod
    def _holder(handle: IO[str]) -> str:
        handle.seek(0)
        pid = handle.read().strip()
        return f" (process {pid})" if pid.isdigit() else ""

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None


class Store:
    """The canonical tables in a DuckDB file; use as a context manager so the file is released.

    ``Store(path)`` opens for reading (``NotFoundError`` if there is no store yet).
    ``Store(path, read_only=False)`` opens for loading: it takes the writer lock (waiting up to
    ``lock_timeout`` seconds, default ``Settings.lock_timeout``) and creates the file with the
    first successful :meth:`load`. ``path`` defaults to ``Settings.db``.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        read_only: bool = True,
        lock_timeout: float | None = None,
    ) -> None:
        self.path = Path(path) if path is not None else get_settings().db
        self.read_only = read_only
        wait = lock_timeout if lock_timeout is not None else get_settings().lock_timeout
        self._lock: _WriterLock | None = None
        self._con: duckdb.DuckDBPyConnection | None = _connect()
        try:
            if read_only:
                self._open_for_reading(wait)
            else:
                self._open_for_writing(wait)
        except BaseException:
            self.close()
            raise

    # --- lifecycle -----------------------------------------------------------------------------
    def _open_for_reading(self, wait: float) -> None:
        if not self.path.exists():
            raise NotFoundError(f"{self.path}: no such store; load an export into it first")
        self._attach_store(wait)

    def _open_for_writing(self, wait: float) -> None:
        folder = self.path.parent
        if not folder.is_dir():
            raise StoreError(f"{self.path}: no such directory {folder}")
        if self.path.exists():
            check_store_file(self.path)
            if not os.access(self.path, os.W_OK):
                raise StoreError(f"{self.path}: the store file is read-only")
        elif self.path.suffix.lower() not in STORE_SUFFIXES:
            raise StoreError(
                f"{self.path}: a new store file must end in .duckdb (or .ddb, .db), so that it "
                "is not mistaken for a data file"
            )
        self._lock = _WriterLock(self.path)
        self._lock.acquire(wait)
        self._remove_stale_copies()
        if self.path.exists():
            self._attach_store(wait)
        else:
            self._create_tables()  # in memory: an empty store to read until the first load

    def _attach_store(self, wait: float) -> None:
        """Attach the store file read-only as the default database and check it is ours."""
        check_store_file(self.path)
        deadline = time.monotonic() + wait
        while True:
            try:
                self._sql(f"ATTACH {_lit(self.path)} AS store (READ_ONLY)")
                break
            except duckdb.Error as err:
                # Only a process that opened the file read-write in place (not pipecast, whose
                # writers work on a copy) holds a conflicting lock; it may be about to finish.
                locked = "lock" in str(err).lower()
                if locked and time.monotonic() < deadline:
                    time.sleep(_POLL_SECONDS)
                    continue
                if locked:
                    raise StoreBusyError(
                        f"{self.path} is busy: another program has it open for writing"
                    ) from None
                raise StoreError(f"{self.path}: cannot open the store: {err}") from None
        self._sql("USE store")
        names = self._table_names()
        missing = [t for t in CanonicalTables.TABLES if t not in names and t not in _ADDED_TABLES]
        if not missing:
            return
        if not names and not self.read_only:
            self._sql("USE memory")  # an empty DuckDB file: read as an empty store, load into it
            self._create_tables()
            return
        raise StoreError(
            f"{self.path} is a DuckDB file but not a pipecast store (no tables {missing})"
        )

    def _remove_stale_copies(self) -> None:
        """Working copies of loads that were killed (only a writer holding the lock calls this)."""
        for stale in self.path.parent.glob(f".{self.path.name}.load-*"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    stale.unlink()

    def close(self) -> None:
        if self._con is not None:
            with contextlib.suppress(duckdb.Error):
                self._con.close()
            self._con = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            raise StoreError(f"store {self.path} is closed")
        return self._con

    def _sql(self, sql: str, params: list[object] | None = None) -> list[tuple[object, ...]]:
        """Run a statement to completion (DuckDB 2 refuses new work on an unfinished result)."""
        with self._interruptible():
            return self.con.execute(sql, params or []).fetchall()

    @contextlib.contextmanager
    def _interruptible(self) -> Iterator[None]:
        try:
            yield
        except Exception as err:
            if _is_interrupt(err):
                raise KeyboardInterrupt from err
            raise

    def _table_names(self) -> set[str]:
        rows = self._sql(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_catalog = current_database()"
        )
        return {str(r[0]) for r in rows}

    def _create_tables(self) -> None:
        """Every canonical table and column (a store made by an earlier pipecast gains the newer
        ones, empty)."""
        for table in CanonicalTables.TABLES:
            template = empty_frame(table)
            defs = [f"{_q(c)} {_sql_type(template[c].dtype)}" for c in template.columns]
            if table in _UPSERT_TABLES:
                defs.append(f"PRIMARY KEY ({_cols(list(PRIMARY_KEYS[table]))})")
            self._sql(f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(defs)})")
            have = set(self._columns(table))
            for col in template.columns:
                if col not in have:
                    sql_type = _sql_type(template[col].dtype)
                    default = " DEFAULT FALSE" if sql_type == "BOOLEAN" else ""
                    self._sql(f"ALTER TABLE {table} ADD COLUMN {_q(col)} {sql_type}{default}")

    # --- writing -------------------------------------------------------------------------------
    def load(
        self,
        tables: CanonicalTables,
        provided: Mapping[str, frozenset[str] | set[str]] | None = None,
    ) -> LoadReport:
        """Write all tables into the store at once; on any failure the store is left as it was.

        ``provided`` names, per table, the columns whose values came from the export
        (``ImportResult.provided``): a stored deal or target is updated in those columns only,
        so a column the export lacks keeps its stored values. ``None``: every column the frames
        carry. Deal rows newer than the stored ones that changed a tracked field or the stage
        without a history row for it get one (see :meth:`_record_row_changes`).
        """
        if self.read_only or self._lock is None:
            raise StoreError(f"{self.path} was opened for reading; open it with read_only=False")
        work = self.path.with_name(f".{self.path.name}.load-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            self._start_work(work)
            report = self._transaction(tables, provided)
            self._sql("CHECKPOINT work")
            self._sql("USE memory")
            self._sql("DETACH work")
            self._publish(work)
        except BaseException as err:
            self._discard(work)
            with contextlib.suppress(Exception):
                self._reopen()
            if _is_disk_full(err):
                raise StoreError(
                    f"{self.path}: cannot write in {self.path.parent}, the disk is full (or a "
                    f"file size limit is reached): {err}; the store is unchanged"
                ) from err
            raise
        self._reopen()
        return report

    def _start_work(self, work: Path) -> None:
        """Copy the store (if any) to ``work`` and make the copy the default database."""
        with contextlib.suppress(duckdb.Error):
            self._sql("USE memory")
            self._sql("DETACH DATABASE IF EXISTS store")
        if self.path.exists():
            shutil.copyfile(self.path, work)
            shutil.copymode(self.path, work)
            wal = Path(f"{self.path}.wal")  # left by a program that wrote the file in place
            if wal.exists():
                shutil.copyfile(wal, f"{work}.wal")
        # Large loads spill beside the store, not into the working directory.
        self._sql(f"SET temp_directory = {_lit(self._spill_dir())}")
        self._sql(f"ATTACH {_lit(work)} AS work")
        self._sql("USE work")
        self._create_tables()

    def _spill_dir(self) -> Path:
        return self.path.with_name(f".{self.path.name}.load-spill")

    def _publish(self, work: Path) -> None:
        """Make the loaded copy the store: durable first, then one atomic rename."""
        if Path(f"{work}.wal").exists():
            raise StoreError(f"{work}: the loaded copy was not checkpointed; store unchanged")
        with work.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(work, self.path)
        with contextlib.suppress(FileNotFoundError):
            Path(f"{self.path}.wal").unlink()  # it belonged to the old file
        folder = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
        shutil.rmtree(self._spill_dir(), ignore_errors=True)

    def _discard(self, work: Path) -> None:
        """Drop a failed load's connection and copy (DuckDB may have invalidated the database)."""
        with contextlib.suppress(Exception):
            self.con.close()
        self._con = None
        for leftover in (work, Path(f"{work}.wal")):
            with contextlib.suppress(OSError):
                leftover.unlink()
        shutil.rmtree(self._spill_dir(), ignore_errors=True)

    def _reopen(self) -> None:
        """After a load, read the store as it now is (or still is)."""
        if self._con is not None:
            with contextlib.suppress(duckdb.Error):
                self._con.close()
        self._con = _connect()
        if self.path.exists():
            self._attach_store(0)
        else:
            self._create_tables()

    def _transaction(
        self, tables: CanonicalTables, provided: Mapping[str, frozenset[str] | set[str]] | None
    ) -> LoadReport:
        con = self.con
        names: list[str] = []
        self._sql("BEGIN TRANSACTION")
        try:
            views: dict[str, tuple[str, pd.DataFrame]] = {}
            for table, frame in tables.items():
                view = f"_incoming_{table}_{next(_counter)}"
                con.register(view, frame)
                names.append(view)
                views[table] = (view, frame)
            report = self._write(views, provided)
            self._sql("COMMIT")
        except BaseException:
            # The copy is thrown away anyway; a failed ROLLBACK (after a disk error DuckDB
            # invalidates the database) must not hide the error that caused it.
            with contextlib.suppress(Exception):
                self._sql("ROLLBACK")
            raise
        finally:
            for view in names:
                with contextlib.suppress(Exception):
                    con.unregister(view)
        return report

    def _write(
        self,
        views: dict[str, tuple[str, pd.DataFrame]],
        provided: Mapping[str, frozenset[str] | set[str]] | None,
    ) -> LoadReport:
        """The load itself, inside the transaction: history first, then the deal rows."""
        deals_view, deals = views["deals"]
        self._add_custom_columns(deals)
        deal_cols = self._provided_columns("deals", deals, provided)
        changes = self._capture_row_changes(deals_view, deals, deal_cols)
        inserted: dict[str, int] = {}
        for table, (view, frame) in views.items():
            if table not in (*_UPSERT_TABLES, "exchange_rates"):
                source = self._history_source(table, view, deals_view, deals)
                inserted[table] = self._append(table, source, frame)
        recorded = self._record_row_changes(changes, deal_cols)
        inserted["stage_history"] += recorded[0]
        inserted["field_history"] += recorded[1]
        inserted["deals"], updated = self._upsert("deals", deals_view, deals, deal_cols)
        self._keep_crm_source(deals_view, deals)
        view, targets = views["targets"]
        inserted["targets"], _ = self._upsert(
            "targets", view, targets, self._provided_columns("targets", targets, provided)
        )
        inserted["exchange_rates"] = self._upsert_rates(*views["exchange_rates"])
        order = list(CanonicalTables.TABLES)
        return LoadReport(
            inserted=dict(sorted(inserted.items(), key=lambda kv: order.index(kv[0]))),
            updated_deals=updated,
            recorded_changes=sum(recorded),
        )

    def _count(self, table: str) -> int:
        return int(str(self._sql(f"SELECT count(*) FROM {table}")[0][0]))

    def _provided_columns(
        self,
        table: str,
        frame: pd.DataFrame,
        provided: Mapping[str, frozenset[str] | set[str]] | None,
    ) -> list[str]:
        """The stored columns this load may write: the frame's, narrowed to what was provided."""
        stored = set(self._columns(table))
        cols = [c for c in frame.columns if c in stored]
        if provided is None or table not in provided:
            return cols
        keep = set(provided[table]) | set(PRIMARY_KEYS[table])
        if table == "deals":
            keep |= _ALWAYS_PROVIDED
        return [c for c in cols if c in keep]

    def _add_custom_columns(self, deals: pd.DataFrame) -> None:
        have = set(self._columns("deals"))
        for col in deals.columns:
            if col.startswith(CUSTOM_PREFIX) and col not in have:
                sql_type = _sql_type(deals[col].dtype)
                self._sql(f"ALTER TABLE deals ADD COLUMN {_q(col)} {sql_type}")

    def _history_source(self, table: str, view: str, deals_view: str, deals: pd.DataFrame) -> str:
        """Incoming history rows to append: stage rows derived from a deals-only export are
        dropped for deals whose real CRM history is stored (it stays the truth)."""
        if table != "stage_history" or deals.empty:
            return view
        crm, derived = _lit(HistorySource.CRM.value), _lit(HistorySource.DERIVED.value)
        return (
            f"(SELECT h.* FROM {view} AS h WHERE NOT (h.derived AND EXISTS ("
            f"SELECT 1 FROM {deals_view} AS i JOIN deals AS t ON t.deal_id = i.deal_id "
            f"WHERE i.deal_id = h.deal_id AND i.history_source = {derived} "
            f"AND t.history_source = {crm})))"
        )

    def _append(self, table: str, source: str, frame: pd.DataFrame) -> int:
        """Insert rows whose natural key is new; rows already stored are left alone."""
        if frame.empty:
            return 0
        cols = columns(table)
        key = list(PRIMARY_KEYS[table])
        join = " AND ".join(f"t.{_q(k)} = i.{_q(k)}" for k in key)
        before = self._count(table)
        # DISTINCT ON: a key repeated within the incoming rows is stored once.
        self._sql(
            f"INSERT INTO {table} ({_cols(cols)}) "
            f"SELECT DISTINCT ON ({_cols(key, 'i.')}) {_cols(cols, 'i.')} FROM {source} AS i "
            f"WHERE NOT EXISTS (SELECT 1 FROM {table} AS t WHERE {join})"
        )
        return self._count(table) - before

    def _capture_row_changes(self, view: str, deals: pd.DataFrame, cols: list[str]) -> str | None:
        """Stored deal rows about to be replaced by newer ones: old and new values side by side.

        Kept in a temporary table because the upsert overwrites the old values.
        """
        if deals.empty:
            return None
        tracked = [c for c in ("stage", *TRACKED_FIELDS) if c in cols]
        name = f"_row_changes_{next(_counter)}"
        picks = ", ".join(
            f"t.{_q(c)} AS {_q('old_' + c)}, i.{_q(c)} AS {_q('new_' + c)}" for c in tracked
        )
        self._sql(
            f"CREATE TEMP TABLE {name} AS SELECT i.deal_id, t.observed_at AS old_at, "
            f"i.observed_at AS new_at{', ' + picks if picks else ''} "
            f"FROM {view} AS i JOIN deals AS t ON t.deal_id = i.deal_id "
            f"WHERE i.observed_at > t.observed_at"
        )
        return name

    def _record_row_changes(self, changes: str | None, cols: list[str]) -> tuple[int, int]:
        """History for what a newer deal row changed and no history row of the export says.

        A tracked field that differs gets a change old -> new at the new row's ``observed_at``
        unless the history has a change of that field after the old row's ``observed_at`` and
        up to the new one. A new stage gets a ``derived`` stage row (the deal was *seen* in it
        then) unless the stage history already has the deal in it at that time. So every date
        before the new export keeps the old values and the export date shows the new ones.
        Returns the (stage, field) rows added.
        """
        if changes is None:
            return 0, 0
        stage_rows = 0
        if "stage" in cols:
            before = self._count("stage_history")
            self._sql(
                "INSERT INTO stage_history (deal_id, stage, entered_at, derived) "
                f"SELECT c.deal_id, c.new_stage, c.new_at, TRUE FROM {changes} AS c "
                "LEFT JOIN (SELECT h.deal_id, h.stage, row_number() OVER (PARTITION BY h.deal_id "
                "ORDER BY h.entered_at DESC, h.derived) AS n FROM stage_history AS h "
                f"JOIN {changes} AS c2 ON c2.deal_id = h.deal_id AND h.entered_at <= c2.new_at"
                ") AS last ON last.deal_id = c.deal_id AND last.n = 1 "
                "WHERE c.new_stage IS DISTINCT FROM c.old_stage "
                "AND c.new_stage IS DISTINCT FROM last.stage "
                "AND NOT EXISTS (SELECT 1 FROM stage_history AS k WHERE k.deal_id = c.deal_id "
                "AND k.entered_at = c.new_at AND k.derived)"
            )
            stage_rows = self._count("stage_history") - before
        types = dict(self._column_types("deals"))
        before = self._count("field_history")
        for field in (f for f in TRACKED_FIELDS if f in cols):
            old = _as_text(f"c.{_q('old_' + field)}", types[field])
            new = _as_text(f"c.{_q('new_' + field)}", types[field])
            self._sql(
                "INSERT INTO field_history (deal_id, field, old_value, new_value, changed_at) "
                f"SELECT c.deal_id, {_lit(field)}, {old}, {new}, c.new_at FROM {changes} AS c "
                f"WHERE c.{_q('old_' + field)} IS DISTINCT FROM c.{_q('new_' + field)} "
                "AND NOT EXISTS (SELECT 1 FROM field_history AS h WHERE h.deal_id = c.deal_id "
                f"AND h.field = {_lit(field)} AND h.changed_at > c.old_at "
                "AND h.changed_at <= c.new_at)"
            )
        return stage_rows, self._count("field_history") - before

    def _upsert(
        self, table: str, view: str, frame: pd.DataFrame, cols: list[str]
    ) -> tuple[int, int]:
        """Insert new keys; replace stored rows whose values differ (and are not newer).

        Only ``cols`` are replaced, so a column absent from this export keeps its stored value.
        A stored ``crm`` deal stays ``crm`` (its history is real, whatever the new export
        carries). Returns (inserted, updated).
        """
        if frame.empty:
            return 0, 0
        key = list(PRIMARY_KEYS[table])
        values = [c for c in cols if c not in key]
        join = " AND ".join(f"t.{_q(k)} = i.{_q(k)}" for k in key)
        changed = " OR ".join(f"t.{_q(c)} IS DISTINCT FROM i.{_q(c)}" for c in values) or "FALSE"
        newer = "i.observed_at >= t.observed_at" if table == "deals" else "TRUE"
        before = self._count(table)
        assignments = [f"{_q(c)} = {self._new_value(table, c)}" for c in values]
        if table == "deals" and "closed_at" not in values and "outcome" in values:
            # An export without close dates still says a deal is open again: not closed then.
            open_ = _lit(Outcome.OPEN.value)
            assignments.append(
                f"closed_at = CASE WHEN i.outcome = {open_} THEN NULL ELSE t.closed_at END"
            )
        sets = ", ".join(assignments)
        updated = 0
        if sets:
            result = self._sql(
                f"UPDATE {table} AS t SET {sets} FROM {view} AS i "
                f"WHERE {join} AND ({newer}) AND ({changed})"
            )
            updated = int(str(result[0][0])) if result else 0
        stored = set(self._columns(table))
        all_cols = [c for c in frame.columns if c in stored]
        self._sql(
            f"INSERT INTO {table} ({_cols(all_cols)}) SELECT {_cols(all_cols, 'i.')} "
            f"FROM {view} AS i WHERE NOT EXISTS (SELECT 1 FROM {table} AS t WHERE {join})"
        )
        return self._count(table) - before, updated

    def _upsert_rates(self, view: str, rates: pd.DataFrame) -> int:
        """Rates by (currency, valid_from), a fixed rate's valid_from being NULL: a rate the
        export carries replaces the stored one; rates it lacks stay. Returns the new keys.

        A store keeps one corporate currency: rates against another are refused (their amounts
        would be mixed with the stored ones), store unchanged.
        """
        if rates.empty:
            return 0
        stored = self._sql("SELECT DISTINCT currency FROM exchange_rates WHERE is_corporate")
        incoming = corporate_currency(rates)
        if stored and incoming is not None and str(stored[0][0]) != incoming:
            raise StoreError(
                f"{self.path} holds amounts converted to {stored[0][0]}; this export's corporate "
                f"currency is {incoming}: load it into another store (a store never mixes two)"
            )
        same = "t.currency = i.currency AND t.valid_from IS NOT DISTINCT FROM i.valid_from"
        before = self._count("exchange_rates")
        self._sql(
            f"DELETE FROM exchange_rates AS t WHERE EXISTS (SELECT 1 FROM {view} AS i WHERE {same})"
        )
        cols = columns("exchange_rates")
        self._sql(
            f"INSERT INTO exchange_rates ({_cols(cols)}) SELECT DISTINCT ON (i.currency, "
            f"i.valid_from) {_cols(cols, 'i.')} FROM {view} AS i"
        )
        return self._count("exchange_rates") - before

    @staticmethod
    def _new_value(table: str, column: str) -> str:
        if table == "deals" and column == "history_source":
            crm = _lit(HistorySource.CRM.value)
            return f"CASE WHEN t.history_source = {crm} THEN {crm} ELSE i.history_source END"
        return f"i.{_q(column)}"

    def _keep_crm_source(self, view: str, deals: pd.DataFrame) -> None:
        """A deal whose export carried real history is ``crm``, even from an older export."""
        if deals.empty:
            return
        crm = _lit(HistorySource.CRM.value)
        self._sql(
            f"UPDATE deals AS t SET history_source = {crm} FROM {view} AS i "
            f"WHERE t.deal_id = i.deal_id AND i.history_source = {crm} "
            f"AND t.history_source <> {crm}"
        )

    # --- reading -------------------------------------------------------------------------------
    def _column_types(self, table: str) -> list[tuple[str, str]]:
        rows = self._sql(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = ? AND table_catalog = current_database() "
            "ORDER BY ordinal_position",
            [table],
        )
        return [(str(r[0]), str(r[1])) for r in rows]

    def _columns(self, table: str) -> list[str]:
        return [name for name, _ in self._column_types(table)]

    def read(self, table: str) -> pd.DataFrame:
        """One table in canonical dtypes, ordered by its natural key."""
        if table not in CanonicalTables.TABLES:
            raise NotFoundError(f"unknown table {table!r}; known: {list(CanonicalTables.TABLES)}")
        template = empty_frame(table)
        if table not in self._table_names():  # a store from before the table existed
            return template
        order = _cols(list(PRIMARY_KEYS[table]))
        with self._interruptible():
            frame = self.con.execute(f"SELECT * FROM {table} ORDER BY {order}").df()
        for col in template.columns:
            if col not in frame.columns:  # a store from before the column existed
                dtype = template[col].dtype
                empty = False if pd.api.types.is_bool_dtype(dtype) else np.nan
                frame[col] = pd.Series(empty, index=frame.index).astype(dtype)
        for col in frame.columns:
            if col in template:
                dtype = template[col].dtype
                if pd.api.types.is_bool_dtype(dtype):  # an optional flag not given: False
                    frame[col] = frame[col].fillna(False).infer_objects()
                frame[col] = frame[col].astype(dtype)
            elif frame[col].dtype == object:
                frame[col] = frame[col].astype("str")
        return frame

    def tables(self) -> CanonicalTables:
        return CanonicalTables(**{t: self.read(t) for t in CanonicalTables.TABLES})

    def counts(self) -> dict[str, int]:
        names = self._table_names()
        return {t: self._count(t) if t in names else 0 for t in CanonicalTables.TABLES}

    def deal_ids(self) -> set[str]:
        return {str(r[0]) for r in self._sql("SELECT deal_id FROM deals")}
