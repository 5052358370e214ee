"""The DuckDB store: whole-or-nothing loads, idempotent re-imports, newer exports update."""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from features.data.importer import ImportValidationError, read_export
from features.data.schema import CanonicalTables
from features.data.store import DEFAULT_DB, Store

FIXTURES = Path(__file__).parent / "fixtures"
JUNE = datetime(2024, 6, 1)
JULY = datetime(2024, 7, 1)


@pytest.fixture
def export(tmp_path: Path) -> Path:
    dest = tmp_path / "export"
    shutil.copytree(FIXTURES / "canonical", dest)
    return dest


@pytest.fixture
def store(tmp_path: Path) -> Store:
    with Store(tmp_path / "test.duckdb") as s:
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
    with Store(path) as s:
        s.load(read_export(export, exported_at=JUNE).tables)
    with Store(path) as s:
        assert s.counts()["deals"] == 5
    closed = Store(path)
    closed.close()
    with pytest.raises(RuntimeError, match="closed"):
        closed.counts()
    with pytest.raises(KeyError):
        Store(path).read("nope")


def test_default_path_is_in_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with Store() as s:
        assert s.counts()["deals"] == 0
    assert (tmp_path / DEFAULT_DB).is_file()


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
