"""The DuckDB store: whole-or-nothing loads, idempotent re-imports, newer exports update."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from features.data.importer import ImportValidationError, read_export
from features.data.schema import CanonicalTables
from features.data.stages import load_stage_config
from features.data.store import Store
from features.errors import NotFoundError, StoreBusyError, StoreError
from features.pipeline.metrics import compute_metrics
from features.settings import DEFAULT_DB, get_settings
from features.signals.pointintime import deal_states_as_of
from tests.checks import missing

FIXTURES = Path(__file__).parent / "fixtures"
JUNE = datetime(2024, 6, 1)
JULY = datetime(2024, 7, 1)


@pytest.fixture
def export(tmp_path: Path) -> Path:
    dest = tmp_path / "export"
    shutil.copytree(FIXTURES / "canonical", dest)
    return dest


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "test.duckdb", read_only=False) as s:
        yield s


def _snapshot(store: Store) -> dict[str, pd.DataFrame]:
    return {name: store.read(name) for name in CanonicalTables.TABLES}


def _assert_unchanged(store: Store, before: dict[str, pd.DataFrame]) -> None:
    for name, frame in before.items():
        pd.testing.assert_frame_equal(store.read(name), frame, check_like=False)


def test_load_then_read_round_trips(store: Store, export: Path) -> None:
    tables = read_export(export, exported_at=JUNE).tables
    report = store.load(tables)
    assert report.inserted == {name: len(f) for name, f in tables.items()}
    assert report.updated_deals == 0
    assert store.counts() == report.inserted
    for name, frame in tables.items():
        got = store.read(name)
        assert list(got.columns) == list(frame.columns), name
        keyed = frame.sort_values(list(got.columns[:1])).reset_index(drop=True)
        if name == "deals":
            pd.testing.assert_frame_equal(got, keyed)
    assert store.deal_ids() == set(tables.deals["deal_id"])
    again = store.tables()
    assert len(again.stage_history) == 12 and again.stage_history["derived"].dtype == bool


def test_reimport_is_idempotent(store: Store, export: Path) -> None:
    tables = read_export(export, exported_at=JUNE).tables
    store.load(tables)
    before = _snapshot(store)
    report = store.load(read_export(export, exported_at=JUNE).tables)
    assert set(report.inserted.values()) == {0}
    assert report.updated_deals == 0
    _assert_unchanged(store, before)


def test_newer_export_updates_deals_and_appends_history(store: Store, export: Path) -> None:
    store.load(read_export(export, exported_at=JUNE).tables)
    counts = store.counts()
    deals = pd.read_csv(export / "deals.csv", dtype=str, keep_default_na=False)
    deals.loc[deals["deal_id"] == "D1", ["stage", "amount", "closed_at", "outcome"]] = [
        "closed_won",
        "125000",
        "2024-06-20T00:00:00",
        "won",
    ]
    deals.to_csv(export / "deals.csv", index=False)
    history = pd.read_csv(export / "stage_history.csv", dtype=str)
    new_row = pd.DataFrame(
        {"deal_id": ["D1"], "stage": ["closed_won"], "entered_at": ["2024-06-20T00:00:00"]}
    )
    pd.concat([history, new_row]).to_csv(export / "stage_history.csv", index=False)
    acts = pd.read_csv(export / "activities.csv", dtype=str)
    new_act = pd.DataFrame(
        {"activity_id": ["A7"], "deal_id": ["D1"], "type": ["call"], "occurred_at": ["2024-06-19"]}
    )
    pd.concat([acts, new_act]).to_csv(export / "activities.csv", index=False)

    report = store.load(read_export(export, exported_at=JULY).tables)
    # every deal has a newer observed_at, so all five rows are replaced
    assert report.updated_deals == 5
    assert report.inserted["stage_history"] == 1 and report.inserted["activities"] == 1
    assert report.inserted["deals"] == 0
    after = store.counts()
    assert after["deals"] == counts["deals"]
    assert after["stage_history"] == counts["stage_history"] + 1
    d1 = store.read("deals").set_index("deal_id").loc["D1"]
    assert d1["stage"] == "closed_won" and d1["amount"] == 125000 and d1["outcome"] == "won"
    assert d1["observed_at"] == pd.Timestamp(JULY)


def test_older_export_does_not_overwrite_newer_values(store: Store, export: Path) -> None:
    store.load(read_export(export, exported_at=JULY).tables)
    deals = pd.read_csv(export / "deals.csv", dtype=str, keep_default_na=False)
    deals.loc[deals["deal_id"] == "D2", "amount"] = "1"
    deals.to_csv(export / "deals.csv", index=False)
    report = store.load(read_export(export, exported_at=JUNE).tables)
    assert report.updated_deals == 0
    assert store.read("deals").set_index("deal_id").loc["D2", "amount"] == 45000


def test_custom_columns_are_added_and_kept(store: Store, export: Path) -> None:
    store.load(read_export(export, exported_at=JUNE).tables)
    assert "custom_buying_process" in store.read("deals").columns
    deals = pd.read_csv(export / "deals.csv", dtype=str, keep_default_na=False)
    deals = deals.drop(columns=["custom_buying_process"]).assign(custom_region="EU")
    deals.to_csv(export / "deals.csv", index=False)
    store.load(read_export(export, exported_at=JULY).tables)
    stored = store.read("deals").set_index("deal_id")
    assert stored.loc["D1", "custom_region"] == "EU"
    # absent from the newer export: not known to be empty, so kept
    assert stored.loc["D1", "custom_buying_process"] == "RFQ, then board"


def test_validation_failure_changes_nothing(store: Store, export: Path) -> None:
    store.load(read_export(export, exported_at=JUNE).tables)
    before = _snapshot(store)
    deals = pd.read_csv(export / "deals.csv", dtype=str, keep_default_na=False)
    deals.loc[0, "stage"] = "nonsense"
    deals.loc[1, "amount"] = "999"
    deals.to_csv(export / "deals.csv", index=False)
    with pytest.raises(ImportValidationError):
        store.load(read_export(export, exported_at=JULY).tables)
    _assert_unchanged(store, before)


def test_failure_mid_load_rolls_everything_back(
    store: Store, export: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.load(read_export(export, exported_at=JUNE).tables)
    before = _snapshot(store)
    newer = pd.read_csv(export / "deals.csv", dtype=str, keep_default_na=False)
    newer = newer.assign(custom_new="x")
    newer.loc[len(newer)] = newer.loc[0].copy()
    newer.loc[len(newer) - 1, "deal_id"] = "D6"
    newer.to_csv(export / "deals.csv", index=False)
    tables = read_export(export, exported_at=JULY).tables

    original = Store._append

    def failing(self: Store, table: str, view: str, frame: pd.DataFrame) -> int:
        if table == "activities":  # after deals were upserted and stage history appended
            raise RuntimeError("disk full")
        return original(self, table, view, frame)

    monkeypatch.setattr(Store, "_append", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        store.load(tables)
    _assert_unchanged(store, before)
    assert "custom_new" not in store.read("deals").columns
    monkeypatch.undo()
    store.load(tables)
    assert "D6" in store.deal_ids()


def test_store_file_persists_and_closes(tmp_path: Path, export: Path) -> None:
    path = tmp_path / "p.duckdb"
    with Store(path, read_only=False) as s:
        s.load(read_export(export, exported_at=JUNE).tables)
    with Store(path) as s:
        assert s.counts()["deals"] == 5
    closed = Store(path)
    closed.close()
    with pytest.raises(StoreError, match="closed"):
        closed.counts()
    with Store(path) as s, pytest.raises(NotFoundError, match="unknown table 'nope'"):
        s.read("nope")


def test_default_path_is_in_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, export: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PIPECAST_DB", raising=False)
    get_settings.cache_clear()
    with Store(read_only=False) as s:
        assert s.counts()["deals"] == 0
        assert not (tmp_path / DEFAULT_DB).exists()  # created by the first load, not before
        s.load(read_export(export, exported_at=JUNE).tables)
    assert (tmp_path / DEFAULT_DB).is_file()
    with Store() as s:
        assert s.counts()["deals"] == 5


def test_store_path_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, export: Path
) -> None:
    monkeypatch.setenv("PIPECAST_DB", str(tmp_path / "env.duckdb"))
    get_settings.cache_clear()
    try:
        with Store(read_only=False) as s:
            s.load(read_export(export, exported_at=JUNE).tables)
        assert (tmp_path / "env.duckdb").is_file()
    finally:
        get_settings.cache_clear()


def test_deals_only_exports_add_observations_not_duplicates(tmp_path: Path, store: Store) -> None:
    export = tmp_path / "deals-only"
    export.mkdir()
    shutil.copy(FIXTURES / "canonical" / "deals.csv", export / "deals.csv")
    store.load(read_export(export, exported_at=JUNE).tables)
    n = store.counts()["stage_history"]
    store.load(read_export(export, exported_at=JUNE).tables)
    assert store.counts()["stage_history"] == n
    # a later export sees the open deals again: one new "seen in stage" row per open deal
    store.load(read_export(export, exported_at=JULY).tables)
    assert store.counts()["stage_history"] == n + 3
    assert store.counts()["field_history"] == 0


# --- issue 7: no silent data loss, readers beside writers, failed loads leave no trace ----------
JULY_END = pd.Timestamp("2024-07-01")


@pytest.fixture
def fresh_settings() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _write_deals(dest: Path, deals: pd.DataFrame) -> frozenset[str]:
    """Write deals.csv and return its columns: what the importer reports as provided."""
    dest.mkdir(exist_ok=True)
    deals.to_csv(dest / "deals.csv", index=False)
    return frozenset(deals.columns)


def _deals_csv(export: Path) -> pd.DataFrame:
    return pd.read_csv(export / "deals.csv", dtype=str, keep_default_na=False)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_narrower_reimport_leaves_columns_it_lacks_alone(store: Store, export: Path) -> None:
    store.load(read_export(export, exported_at=JUNE).tables)
    before = store.read("deals").set_index("deal_id")
    narrow = _deals_csv(export).drop(columns=["team", "loss_reason", "forecast_category"])
    narrow.loc[narrow["deal_id"] == "D2", "next_step"] = ""  # provided, and now empty
    extra = narrow.loc[narrow["deal_id"] == "D2"].assign(deal_id="D6")
    narrow = pd.concat([narrow, extra], ignore_index=True)
    provided = _write_deals(export, narrow)

    report = store.load(read_export(export, exported_at=JULY).tables, provided={"deals": provided})
    after = store.read("deals").set_index("deal_id")
    assert report.inserted["deals"] == 1 and report.updated_deals == 5
    for col in ("team", "loss_reason", "forecast_category"):
        pd.testing.assert_series_equal(after.loc[before.index, col], before[col])
    assert after.loc["D4", "loss_reason"] == "competitor"
    assert after.loc["D1", "team"] == "north" and after.loc["D1", "forecast_category"] == "commit"
    assert missing(after.loc["D2", "next_step"])  # a value the export emptied is emptied
    assert missing(after.loc["D6", "team"])  # a new deal: nothing to keep
    assert (after["observed_at"] == pd.Timestamp(JULY)).all()


def _deal_states(store: Store, when: str) -> pd.DataFrame:
    return deal_states_as_of(store.tables(), pd.Timestamp(when), load_stage_config())


def test_deals_only_import_merges_into_crm_history(
    store: Store, export: Path, tmp_path: Path
) -> None:
    crm = _deals_csv(export)
    # something must close in 2024Q2, or metrics trips over issue 7's item 5 (not this one)
    crm.loc[crm["deal_id"] == "D2", "expected_close_date"] = "2024-06-28"
    crm.to_csv(export / "deals.csv", index=False)
    store.load(read_export(export, exported_at=JUNE).tables)
    history_before = store.read("stage_history")
    past = {day: _deal_states(store, day) for day in ("2024-03-01", "2024-05-15", "2024-06-30")}

    deals = crm.drop(columns=["loss_reason"])
    deals.loc[deals["deal_id"] == "D2", "stage"] = "needs_analysis"
    deals.loc[deals["deal_id"] == "D1", "amount"] = "125000"
    provided = _write_deals(tmp_path / "deals-only", deals)
    result = read_export(tmp_path / "deals-only", exported_at=JULY)
    assert (result.tables.deals["history_source"] == "derived").all()
    report = store.load(result.tables, provided={"deals": provided})

    stored = store.read("deals").set_index("deal_id")
    assert (stored["history_source"] == "crm").all()
    assert stored.loc["D4", "loss_reason"] == "competitor"
    history = store.read("stage_history")
    added = history.merge(history_before, how="left", indicator=True)
    added = added[added["_merge"] == "left_only"].drop(columns="_merge")
    # the real history stays; only the stage change the deal row shows is recorded, as seen
    assert added.to_dict("records") == [
        {"deal_id": "D2", "stage": "needs_analysis", "entered_at": JULY_END, "derived": True}
    ]
    amount = store.read("field_history").query("deal_id == 'D1' and field == 'amount'")
    assert amount.iloc[-1][["old_value", "new_value", "changed_at"]].tolist() == [
        "120000.0",
        "125000.0",
        JULY_END,
    ]
    assert report.recorded_changes == 2
    for day, states in past.items():  # time in stage, stages and amounts before the export
        got = _deal_states(store, day)
        if day == "2024-06-30":
            # The June row spoke for 30 June; the stored row is July's now, and fields without
            # history (next step and its date, custom columns) are unknown before it speaks.
            lost = ["next_step", "next_step_date", "custom_buying_process"]
            replaced = ~got["deal_id"].isin(["D3", "D4"])  # D3, D4 closed before: rows hold
            assert got.loc[replaced, lost].isna().all().all()
            assert not got.loc[replaced, ["next_step_known", "row_known"]].any().any()
            unknown = [*lost, "next_step_known", "next_step_date_known", "row_known"]
            unknown.append("history_known")
            got, states = got.drop(columns=unknown), states.drop(columns=unknown)
        pd.testing.assert_frame_equal(got, states, check_like=True)
    now = _deal_states(store, "2024-07-01").set_index("deal_id")
    assert now.loc["D2", "stage"] == "needs_analysis" and now.loc["D1", "amount"] == 125000
    # metrics for a past date crashed on the mixed history
    compute_metrics(store.tables(), load_stage_config(), pd.Timestamp("2024-05-15"))


def test_newer_deal_rows_without_history_are_recorded_as_history(
    store: Store, export: Path
) -> None:
    store.load(read_export(export, exported_at=JUNE).tables)
    deals = _deals_csv(export)
    d2 = deals["deal_id"] == "D2"
    deals.loc[d2, ["stage", "amount", "expected_close_date", "forecast_category", "next_step"]] = [
        "needs_analysis",
        "50000",
        "2024-10-31",
        "best_case",
        "site visit",
    ]
    deals.to_csv(export / "deals.csv", index=False)
    report = store.load(read_export(export, exported_at=JULY).tables)
    before = _deal_states(store, "2024-06-30").set_index("deal_id").loc["D2"]
    assert (before["stage"], before["amount"], before["forecast_category"]) == (
        "qualification",
        45000,
        "pipeline",
    )
    assert before["expected_close_date"] == pd.Timestamp("2024-09-30")
    after = _deal_states(store, "2024-07-01").set_index("deal_id").loc["D2"]
    assert (after["stage"], after["amount"], after["next_step"]) == (
        "needs_analysis",
        50000,
        "site visit",
    )
    assert report.recorded_changes == 5

    changes = store.read("field_history").query("deal_id == 'D2'")
    assert changes[["field", "old_value", "new_value"]].values.tolist() == [
        ["amount", "45000.0", "50000.0"],
        ["expected_close_date", "2024-09-30", "2024-10-31"],
        ["forecast_category", "pipeline", "best_case"],
        ["next_step", "discovery call", "site visit"],
    ]
    assert (changes["changed_at"] == JULY_END).all()
    stage_rows = store.read("stage_history").query("deal_id == 'D2'")
    assert stage_rows[["stage", "entered_at", "derived"]].values.tolist()[-1] == [
        "needs_analysis",
        JULY_END,
        True,
    ]
    counts = store.counts()
    again = store.load(read_export(export, exported_at=JULY).tables)
    assert again.recorded_changes == 0 and store.counts() == counts


def test_history_in_the_export_is_not_recorded_twice(store: Store, export: Path) -> None:
    store.load(read_export(export, exported_at=JUNE).tables)
    deals = _deals_csv(export)
    deals.loc[deals["deal_id"] == "D5", "forecast_category"] = "commit"
    deals.to_csv(export / "deals.csv", index=False)
    fh = pd.read_csv(export / "field_history.csv", dtype=str)
    change = {"deal_id": "D5", "field": "forecast_category", "old_value": "best_case"}
    change |= {"new_value": "commit", "changed_at": "2024-06-10T12:00:00"}
    pd.concat([fh, pd.DataFrame([change])]).to_csv(export / "field_history.csv", index=False)
    report = store.load(read_export(export, exported_at=JULY).tables)
    assert report.recorded_changes == 0
    assert report.inserted["field_history"] == 1


def test_older_export_records_nothing(store: Store, export: Path) -> None:
    store.load(read_export(export, exported_at=JULY).tables)
    deals = _deals_csv(export)
    deals.loc[deals["deal_id"] == "D2", ["stage", "amount"]] = ["proposal", "1"]
    deals.to_csv(export / "deals.csv", index=False)
    counts = store.counts()
    report = store.load(read_export(export, exported_at=JUNE).tables)
    assert report.recorded_changes == 0 and report.updated_deals == 0
    assert store.counts() == counts


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("store.csv", b"deal_id,amount\nD1,5\n", "not a DuckDB store"),
        ("store.parquet", None, "must end in .duckdb"),
        ("empty.duckdb", b"", "empty file"),
        ("notes.duckdb", b"just some text\n" * 20, "not a DuckDB store"),
        ("crm.db", b"SQLite format 3\x00" + b"\x00" * 100, "SQLite"),
    ],
)
def test_a_file_that_is_not_a_store_is_refused(
    tmp_path: Path, export: Path, name: str, content: bytes | None, message: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    tables = read_export(export, exported_at=JUNE).tables
    with pytest.raises(StoreError, match=message), Store(path, read_only=False) as s:
        s.load(tables)
    if content is not None:
        assert path.read_bytes() == content  # untouched
        with pytest.raises(StoreError, match=message):
            Store(path)
    else:
        assert not path.exists()


def test_a_duckdb_file_of_another_program_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE invoices (id INTEGER)")
    with pytest.raises(StoreError, match="not a pipecast store"):
        Store(path)
    with pytest.raises(StoreError, match="not a pipecast store"):
        Store(path, read_only=False)


def test_missing_store_and_folder(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no such store"):
        Store(tmp_path / "nope.duckdb")
    with pytest.raises(StoreError, match="no such directory"):
        Store(tmp_path / "no" / "dir.duckdb", read_only=False)


def test_readers_share_the_store_and_keep_their_snapshot(tmp_path: Path, export: Path) -> None:
    path = tmp_path / "s.duckdb"
    with Store(path, read_only=False) as w:
        w.load(read_export(export, exported_at=JUNE).tables)
    deals = _deals_csv(export)
    extra = deals.loc[deals["deal_id"] == "D2"].assign(deal_id="D9")
    pd.concat([deals, extra]).to_csv(export / "deals.csv", index=False)
    with Store(path) as first, Store(path) as second:
        assert first.counts()["deals"] == second.counts()["deals"] == 5
        with Store(path, read_only=False) as writer:
            assert writer.deal_ids() == {"D1", "D2", "D3", "D4", "D5"}
            writer.load(read_export(export, exported_at=JULY).tables)
            assert "D9" in writer.deal_ids()  # the writer reads what it wrote
        assert first.counts()["deals"] == 5  # the store as it was when it opened
        with Store(path) as third:
            assert third.counts()["deals"] == 6
    with Store(path) as reader, pytest.raises(StoreError, match="opened for reading"):
        reader.load(read_export(export, exported_at=JULY).tables)


def test_a_second_writer_waits_then_is_told_the_store_is_busy(tmp_path: Path, export: Path) -> None:
    path = tmp_path / "s.duckdb"
    with Store(path, read_only=False) as w:
        w.load(read_export(export, exported_at=JUNE).tables)
        with pytest.raises(StoreBusyError, match=rf"busy: another load \(process {os.getpid()}"):
            Store(path, read_only=False, lock_timeout=0.2)
        with Store(path) as reader:  # readers do not wait for writers
            assert reader.counts()["deals"] == 5
    with Store(path, read_only=False, lock_timeout=0) as again:  # released on close
        assert again.counts()["deals"] == 5


def test_failed_load_leaves_the_file_byte_for_byte_and_no_copy(
    store: Store, export: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.load(read_export(export, exported_at=JUNE).tables)
    digest = _digest(store.path)
    tables = read_export(export, exported_at=JULY).tables

    def failing(self: Store, table: str, source: str, frame: pd.DataFrame) -> int:
        raise RuntimeError("boom")

    monkeypatch.setattr(Store, "_append", failing)
    with pytest.raises(RuntimeError, match="boom"):
        store.load(tables)
    assert _digest(store.path) == digest
    assert sorted(p.name for p in store.path.parent.iterdir()) == [
        "export",
        "test.duckdb",
        "test.duckdb.lock",
    ]
    assert store.counts()["deals"] == 5  # still readable through the same object


def test_next_writer_removes_what_a_killed_load_left(tmp_path: Path, export: Path) -> None:
    path = tmp_path / "s.duckdb"
    with Store(path, read_only=False) as w:
        w.load(read_export(export, exported_at=JUNE).tables)
    digest = _digest(path)
    left = [tmp_path / ".s.duckdb.load-999-dead", tmp_path / ".s.duckdb.load-999-dead.wal"]
    for junk in left:
        junk.write_bytes(b"\0" * 1_000_000)
    (tmp_path / ".s.duckdb.load-spill").mkdir()
    with Store(path) as reader:  # a reader never touches a writer's files
        assert reader.counts()["deals"] == 5
    assert all(p.exists() for p in left)
    with Store(path, read_only=False):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "s.duckdb", "s.duckdb.lock"]
    assert _digest(path) == digest


def test_full_disk_names_the_cause_and_changes_nothing(
    store: Store, export: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.load(read_export(export, exported_at=JUNE).tables)
    digest = _digest(store.path)
    original = Store._sql

    def full(self: Store, table: str, source: str, frame: pd.DataFrame) -> int:
        raise duckdb.IOException('Could not write file "x": No space left on device')

    def sql(self: Store, text: str, params: list[object] | None = None) -> list[tuple[object, ...]]:
        if text == "ROLLBACK":  # what DuckDB answers once a write error invalidated it
            raise duckdb.TransactionException("cannot rollback - no transaction is active")
        return original(self, text, params)

    monkeypatch.setattr(Store, "_append", full)
    monkeypatch.setattr(Store, "_sql", sql)
    with pytest.raises(StoreError, match=r"disk is full.*No space left on device.*unchanged"):
        store.load(read_export(export, exported_at=JULY).tables)
    assert _digest(store.path) == digest


def test_ctrl_c_inside_duckdb_is_an_interrupt(
    store: Store, export: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.load(read_export(export, exported_at=JUNE).tables)
    digest = _digest(store.path)

    def slow(self: Store, table: str, source: str, frame: pd.DataFrame) -> int:
        threading.Timer(0.2, self.con.interrupt).start()
        self._sql("SELECT count(*) FROM range(100000000000)")
        return 0

    monkeypatch.setattr(Store, "_append", slow)
    with pytest.raises(KeyboardInterrupt):
        store.load(read_export(export, exported_at=JULY).tables)
    assert _digest(store.path) == digest


def test_an_export_without_close_columns_still_reopens_a_deal(store: Store, export: Path) -> None:
    store.load(read_export(export, exported_at=JUNE).tables)
    narrow = _deals_csv(export).drop(columns=["closed_at", "outcome", "loss_reason"])
    narrow.loc[narrow["deal_id"] == "D4", "stage"] = "proposal"  # reopened
    provided = _write_deals(export, narrow)
    store.load(read_export(export, exported_at=JULY).tables, provided={"deals": provided})
    deals = store.read("deals").set_index("deal_id")
    assert deals.loc["D4", "outcome"] == "open" and missing(deals.loc["D4", "closed_at"])
    assert deals.loc["D3", "outcome"] == "won"  # still closed: its close date stays
    assert deals.loc["D3", "closed_at"] == pd.Timestamp("2024-04-22")
    states = _deal_states(store, "2024-07-01").set_index("deal_id")
    assert bool(states.loc["D4", "is_open"]) and states.loc["D4", "stage"] == "proposal"


def test_extensions_are_never_loaded_or_installed(store: Store, export: Path) -> None:
    store.load(read_export(export, exported_at=JUNE).tables)
    with Store(store.path) as reader:
        for s in (store, reader):
            settings = s.con.execute(
                "SELECT current_setting('autoload_known_extensions'), "
                "current_setting('autoinstall_known_extensions')"
            ).fetchone()
            assert settings == (False, False)


def test_tables_without_an_optional_flag_read_back_as_false(store: Store, export: Path) -> None:
    """Tables built in code (the generator's) may lack ``entered_after_close``: read as False."""
    tables = read_export(export, exported_at=JUNE).tables
    deals = tables.deals.drop(columns=["entered_after_close"], errors="ignore")
    store.load(CanonicalTables(**{**dict(tables.items()), "deals": deals}))
    flags = store.read("deals")["entered_after_close"]
    assert flags.dtype == bool and not flags.any()
