"""No outcome leaks from a closed deal's final row (issue 6), on a generated export loaded through
the store the way a user loads one, then stripped of what real exports lack.

Real exports log few fields and overwrite the rest at the close: with the field history gone, the
deal rows still hold each closed deal's final forecast category (closed / omitted), its actual
close date as expected close date, its final amount. None of it may reach a snapshot row dated
before the close, and no signal may separate won from lost better than with the full history.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.data.importer import read_export
from features.data.schema import CanonicalTables
from features.data.stages import StageConfig
from features.data.store import Store
from features.signals import SIGNALS
from features.signals.audit import deal_folds, separation
from features.signals.snapshots import build_snapshots
from features.synthetic.generator import generate, write_dataset

# How much a signal's single-signal AUC for `won` may rise when history is removed (noise only).
AUC_RISE_LIMIT = 0.02


def _load(
    export: Path, db: Path, drop_fields: tuple[str, ...] | None, cfg: StageConfig
) -> CanonicalTables:
    """Import through the store, without the field history of ``drop_fields`` (all: None)."""
    tables = read_export(export, stages=cfg).tables
    fh = tables.field_history
    kept = fh.iloc[0:0] if drop_fields is None else fh[~fh["field"].isin(list(drop_fields))]
    with Store(db, read_only=False) as store:
        store.load(replace(tables, field_history=kept.reset_index(drop=True)))
    with Store(db) as store:
        return store.tables()


@pytest.fixture(scope="module")
def stores(
    tmp_path_factory: pytest.TempPathFactory, cfg: StageConfig
) -> dict[str, CanonicalTables]:
    root = tmp_path_factory.mktemp("leak")
    write_dataset(generate(700, seed=21), root / "export")
    export = root / "export"
    return {
        "full": _load(export, root / "full.duckdb", (), cfg),
        "no field history": _load(export, root / "none.duckdb", None, cfg),
        "no category history": _load(export, root / "cat.duckdb", ("forecast_category",), cfg),
    }


@pytest.fixture(scope="module")
def snaps(stores: dict[str, CanonicalTables], cfg: StageConfig) -> dict[str, pd.DataFrame]:
    return {
        name: build_snapshots(data, cfg, start="2023-01-01", end="2025-12-31", freq="2W-MON")
        for name, data in stores.items()
    }


def _labelled(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["censored"] == 0].reset_index(drop=True)


def _close_date_hits(frame: pd.DataFrame, data: CanonicalTables) -> float:
    """Share of labelled rows whose expected close date is the actual close date (same day)."""
    rows = _labelled(frame)
    closed = data.deals.set_index("deal_id")["closed_at"].reindex(rows["deal_id"])
    actual = pd.Series(closed.to_numpy()).astype("datetime64[us]").dt.normalize()
    expected = rows["as_of"].dt.normalize() + pd.to_timedelta(
        rows["days_to_expected_close"], unit="D"
    )
    return float((expected == actual).fillna(False).mean())


def test_history_removed_field_history_is_really_gone(stores: dict[str, CanonicalTables]) -> None:
    assert len(stores["full"].field_history) > 1000
    assert stores["no field history"].field_history.empty
    cat = stores["no category history"].field_history
    assert not cat.empty and "forecast_category" not in set(cat["field"])
    # the rows still carry the closed deals' final values: the leak is there to be made
    deals = stores["no field history"].deals
    closed = deals["closed_at"].notna()
    assert deals.loc[closed, "forecast_category"].isin(["closed", "omitted"]).all()


def test_no_snapshot_row_carries_a_closed_forecast_category(
    snaps: dict[str, pd.DataFrame],
) -> None:
    for name, frame in snaps.items():
        assert len(frame) > 5000, name
        assert not frame["forecast_category"].isin(["closed", "omitted"]).any(), name


def test_expected_close_date_is_not_the_actual_close_more_often_without_history(
    snaps: dict[str, pd.DataFrame], stores: dict[str, CanonicalTables]
) -> None:
    full = _close_date_hits(snaps["full"], stores["full"])
    bare = _close_date_hits(snaps["no field history"], stores["no field history"])
    assert full < 0.05  # reps' estimates rarely hit the day
    assert bare <= full


def _aucs(frame: pd.DataFrame) -> dict[str, float]:
    rows = _labelled(frame)
    won, folds = rows["won"].to_numpy(), deal_folds(rows["deal_id"])
    return {name: separation(rows[name], won, folds) for name in SIGNALS}


def test_removing_field_history_raises_no_single_signal_auc(
    snaps: dict[str, pd.DataFrame],
) -> None:
    """Less history can only hide information: no signal may separate won from lost better
    with the field history removed than with all of it (a rise means the final row leaked)."""
    full = _aucs(snaps["full"])
    assert max(full.values()) < 0.9  # nothing in the full export knows the outcome
    for name in ("no field history", "no category history"):
        stripped = _aucs(snaps[name])
        rises = {
            s: round(stripped[s] - full[s], 3)
            for s in SIGNALS
            if stripped[s] - full[s] > AUC_RISE_LIMIT
        }
        assert not rises, (name, rises)


def test_missing_values_do_not_tell_which_deals_close_before_the_export(
    snaps: dict[str, pd.DataFrame],
) -> None:
    """Forecast category untracked: it is missing on every row before the export, whether the
    deal closed before the export (labelled) or is still open (censored)."""
    frame = snaps["no category history"]
    before = frame["as_of"] < pd.Timestamp("2025-12-31")
    missing = frame.loc[before, "forecast_category"].isna()
    by_fate = missing.groupby(frame.loc[before, "censored"]).mean()
    assert set(by_fate.index) == {0.0, 1.0}
    assert np.allclose(by_fate.to_numpy(), 1.0)
    assert (frame.loc[before, "forecast_category_known"] == 0).all()
    assert frame.loc[before, "amount"].notna().all()  # amount is still tracked
