"""The embedded DuckDB store of the canonical tables.

One file (``pipecast.duckdb`` by default) holds every table of ``features.data.schema`` with its
natural key (``schema.PRIMARY_KEYS``) as primary key. A load is one transaction: it lands whole or
the store is left exactly as it was. Loads are idempotent; a newer export replaces the current
values of its deals and appends the history rows the store does not have yet.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import duckdb
import numpy as np
import pandas as pd

from features.data.schema import (
    CUSTOM_PREFIX,
    PRIMARY_KEYS,
    CanonicalTables,
    columns,
    empty_frame,
)

DEFAULT_DB = "pipecast.duckdb"

# Current values, not events: a newer row replaces the stored one. These small tables carry a
# DuckDB primary key; the large append-only history tables get none (an ART index on millions of
# text keys doubles the load time) and their natural key is kept by an anti-join on insert.
_UPSERT_TABLES = ("deals", "targets")
_counter = itertools.count()


@dataclass(frozen=True)
class LoadReport:
    """Rows each table gained, and how many stored deals got newer values."""

    inserted: dict[str, int]
    updated_deals: int


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


def _cols(names: list[str], prefix: str = "") -> str:
    return ", ".join(prefix + _q(c) for c in names)


class Store:
    """A DuckDB file of canonical tables. Use as a context manager so the file is released."""

    def __init__(self, path: str | Path = DEFAULT_DB) -> None:
        self.path = Path(path)
        self._con: duckdb.DuckDBPyConnection | None = duckdb.connect(str(self.path))
        self._sql("SET enable_progress_bar = false")  # no stray bars in CLI output
        self._create_tables()

    # --- lifecycle -----------------------------------------------------------------------------
    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

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
            raise RuntimeError(f"store {self.path} is closed")
        return self._con

    def _sql(self, sql: str, params: list[object] | None = None) -> list[tuple[object, ...]]:
        """Run a statement to completion (DuckDB 2 refuses new work on an unfinished result)."""
        return self.con.execute(sql, params or []).fetchall()

    def _create_tables(self) -> None:
        for table in CanonicalTables.TABLES:
            template = empty_frame(table)
            defs = [f"{_q(c)} {_sql_type(template[c].dtype)}" for c in template.columns]
            if table in _UPSERT_TABLES:
                defs.append(f"PRIMARY KEY ({_cols(list(PRIMARY_KEYS[table]))})")
            self._sql(f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(defs)})")

    # --- writing -------------------------------------------------------------------------------
    def load(self, tables: CanonicalTables) -> LoadReport:
        """Write all tables in one transaction; any failure rolls everything back."""
        con = self.con
        names: list[str] = []
        self._sql("BEGIN TRANSACTION")
        try:
            inserted: dict[str, int] = {}
            updated = 0
            for table, frame in tables.items():
                view = f"_incoming_{table}_{next(_counter)}"
                con.register(view, frame)
                names.append(view)
                if table == "deals":
                    self._add_custom_columns(frame)
                    inserted[table], updated = self._upsert(table, view, frame, "observed_at")
                elif table in _UPSERT_TABLES:
                    inserted[table], _ = self._upsert(table, view, frame, None)
                else:
                    inserted[table] = self._append(table, view, frame)
            self._sql("COMMIT")
        except BaseException:
            self._sql("ROLLBACK")
            raise
        finally:
            for view in names:
                con.unregister(view)
        return LoadReport(inserted=inserted, updated_deals=updated)

    def _count(self, table: str) -> int:
        return int(str(self._sql(f"SELECT count(*) FROM {table}")[0][0]))

    def _add_custom_columns(self, deals: pd.DataFrame) -> None:
        have = set(self._columns("deals"))
        for col in deals.columns:
            if col.startswith(CUSTOM_PREFIX) and col not in have:
                sql_type = _sql_type(deals[col].dtype)
                self._sql(f"ALTER TABLE deals ADD COLUMN {_q(col)} {sql_type}")

    def _append(self, table: str, view: str, frame: pd.DataFrame) -> int:
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
            f"SELECT DISTINCT ON ({_cols(key, 'i.')}) {_cols(cols, 'i.')} FROM {view} AS i "
            f"WHERE NOT EXISTS (SELECT 1 FROM {table} AS t WHERE {join})"
        )
        return self._count(table) - before

    def _upsert(
        self, table: str, view: str, frame: pd.DataFrame, newer_col: str | None
    ) -> tuple[int, int]:
        """Insert new keys; replace stored rows whose values differ (and are not newer).

        Only the columns the frame carries are replaced, so a custom column absent from this
        export keeps its stored value. Returns (inserted, updated).
        """
        if frame.empty:
            return 0, 0
        key = list(PRIMARY_KEYS[table])
        cols = [c for c in frame.columns if c in set(self._columns(table))]
        values = [c for c in cols if c not in key]
        join = " AND ".join(f"t.{_q(k)} = i.{_q(k)}" for k in key)
        changed = " OR ".join(f"t.{_q(c)} IS DISTINCT FROM i.{_q(c)}" for c in values) or "FALSE"
        newer = f"i.{_q(newer_col)} >= t.{_q(newer_col)}" if newer_col else "TRUE"
        before = self._count(table)
        sets = ", ".join(f"{_q(c)} = i.{_q(c)}" for c in values)
        result = self._sql(
            f"UPDATE {table} AS t SET {sets} FROM {view} AS i "
            f"WHERE {join} AND ({newer}) AND ({changed})"
        )
        updated = int(str(result[0][0])) if result else 0
        self._sql(
            f"INSERT INTO {table} ({_cols(cols)}) SELECT {_cols(cols, 'i.')} FROM {view} AS i "
            f"WHERE NOT EXISTS (SELECT 1 FROM {table} AS t WHERE {join})"
        )
        return self._count(table) - before, updated

    # --- reading -------------------------------------------------------------------------------
    def _columns(self, table: str) -> list[str]:
        rows = self._sql(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
            "ORDER BY ordinal_position",
            [table],
        )
        return [str(r[0]) for r in rows]

    def read(self, table: str) -> pd.DataFrame:
        """One table in canonical dtypes, ordered by its natural key."""
        if table not in CanonicalTables.TABLES:
            raise KeyError(f"unknown table {table!r}; known: {list(CanonicalTables.TABLES)}")
        order = _cols(list(PRIMARY_KEYS[table]))
        frame = self.con.execute(f"SELECT * FROM {table} ORDER BY {order}").df()
        template = empty_frame(table)
        for col in frame.columns:
            if col in template:
                frame[col] = frame[col].astype(template[col].dtype)
            elif frame[col].dtype == object:
                frame[col] = frame[col].astype("str")
        return frame

    def tables(self) -> CanonicalTables:
        return CanonicalTables(**{t: self.read(t) for t in CanonicalTables.TABLES})

    def counts(self) -> dict[str, int]:
        return {t: self._count(t) for t in CanonicalTables.TABLES}

    def deal_ids(self) -> set[str]:
        return {str(r[0]) for r in self._sql("SELECT deal_id FROM deals")}
