"""Training snapshots: rows only for open deals, labels from what happened later, censoring."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.data.calendar import to_timestamp
from features.data.schema import CanonicalTables
from features.data.stages import StageConfig
from features.signals import SIGNALS, compute_signals
from features.signals.pointintime import deal_states
from features.signals.snapshots import LABELS, build_snapshots, outcome_labels, snapshot_dates
from tests.factory import deal, tables

Serve = Callable[[CanonicalTables], dict[str, Any]]


def _data(w_outcome: str = "won") -> CanonicalTables:
    return tables(
        deals=[
            deal(
                "W",
                "2025-01-10",
                stage=f"closed_{w_outcome}",
                outcome=w_outcome,
                closed_at="2025-05-20",
                loss_reason="timing" if w_outcome == "lost" else None,
            ),
            deal(
                "L",
                "2025-02-01",
                stage="closed_lost",
                outcome="lost",
                closed_at="2025-04-02",
                loss_reason="price",
            ),
            deal("O", "2025-03-05", stage="needs_analysis"),  # open at the export
            deal("N", "2025-11-20"),
        ],
        stage_history=[
            ("W", "qualification", "2025-01-10"),
            ("W", "proposal", "2025-03-01"),
            ("W", f"closed_{w_outcome}", "2025-05-20"),
            ("L", "qualification", "2025-02-01"),
            ("L", "closed_lost", "2025-04-02"),
            ("O", "qualification", "2025-03-05"),
            ("O", "needs_analysis", "2025-04-15"),
            ("N", "qualification", "2025-11-20"),
        ],
        activities=[("W", "call", "2025-02-01"), ("O", "demo", "2025-06-01")],
    )


@pytest.fixture(scope="module")
def snaps(cfg: StageConfig) -> pd.DataFrame:
    return build_snapshots(_data(), cfg, start="2025-01-01", end="2026-03-31")


def _at(snaps: pd.DataFrame, deal_id: str, day: str) -> pd.Series:
    hit = snaps[(snaps["deal_id"] == deal_id) & (snaps["as_of"] == to_timestamp(day))]
    assert len(hit) == 1, (deal_id, day)
    return hit.iloc[0]


def test_snapshot_dates_are_mondays_at_end_of_day() -> None:
    dates = snapshot_dates("2025-01-01", "2025-01-31")
    assert [d.day for d in dates] == [6, 13, 20, 27]
    assert all(d == to_timestamp(d.date()) for d in dates)


def test_rows_only_while_open_one_per_deal_and_date(snaps: pd.DataFrame, cfg: StageConfig) -> None:
    assert not snaps.duplicated(["deal_id", "as_of"]).any()
    deals = _data().deals.set_index("deal_id")
    created = deals["created_at"].reindex(snaps["deal_id"]).to_numpy()
    closed = pd.to_datetime(deals["closed_at"].reindex(snaps["deal_id"]).to_numpy())
    assert (created <= snaps["as_of"].to_numpy()).all()
    assert not (closed <= snaps["as_of"].to_numpy()).any()
    # exactly the open deals of the point-in-time rebuild, date by date
    dates = snapshot_dates("2025-01-01", "2025-12-31")
    open_states = deal_states(_data(), dates, cfg, open_only=True)
    assert set(zip(open_states["deal_id"], open_states["as_of"], strict=True)) == set(
        zip(snaps["deal_id"], snaps["as_of"], strict=True)
    )
    assert snaps["as_of"].max() <= pd.Timestamp("2025-12-31")  # nothing past the data end
    assert _at(snaps, "W", "2025-05-19")["stage"] == "proposal"  # last Monday before its close
    assert not ((snaps["deal_id"] == "W") & (snaps["as_of"] > to_timestamp("2025-05-20"))).any()


def test_labels_of_a_won_deal(snaps: pd.DataFrame) -> None:
    q1 = _at(snaps, "W", "2025-01-13")
    assert q1["won"] == 1 and q1["closed_won_by_quarter_end"] == 0  # won in Q2, not Q1
    assert q1["days_to_close"] == 127 and q1["censored"] == 0
    q2 = _at(snaps, "W", "2025-04-07")
    assert q2["closed_won_by_quarter_end"] == 1 and q2["days_to_close"] == 43


def test_labels_of_a_lost_deal(snaps: pd.DataFrame) -> None:
    row = _at(snaps, "L", "2025-03-31")
    assert row["won"] == 0 and row["closed_won_by_quarter_end"] == 0
    assert row["days_to_close"] == 2 and row["censored"] == 0


def test_open_deals_are_censored_not_lost(snaps: pd.DataFrame) -> None:
    o = snaps[snaps["deal_id"] == "O"]
    assert (o["censored"] == 1).all()
    assert o["won"].isna().all() and o["days_to_close"].isna().all()
    # quarters that ended before the data did: it certainly did not close won in them
    assert _at(snaps, "O", "2025-06-30")["closed_won_by_quarter_end"] == 0
    assert _at(snaps, "O", "2025-09-29")["closed_won_by_quarter_end"] == 0
    # Q4 ends after the export (31 Dec 00:00): unknown
    assert np.isnan(_at(snaps, "O", "2025-10-06")["closed_won_by_quarter_end"])
    assert np.isnan(_at(snaps, "N", "2025-12-29")["closed_won_by_quarter_end"])


def test_signals_never_see_the_labels_future(snaps: pd.DataFrame, cfg: StageConfig) -> None:
    """Same past, different ending (W lost instead of won on 20 May): every row dated before
    that close has the same signals; only W's labels differ."""
    other = build_snapshots(_data("lost"), cfg, start="2025-01-01", end="2026-03-31")
    signal_cols = [c for c in snaps.columns if c not in LABELS]
    before = snaps["as_of"] < pd.Timestamp("2025-05-20")
    pd.testing.assert_frame_equal(snaps.loc[before, signal_cols], other.loc[before, signal_cols])
    # after the close, other deals' rep statistics rightly see it (it is no longer future)
    assert not snaps.loc[~before, "owner_win_rate"].equals(other.loc[~before, "owner_win_rate"])
    w = snaps["deal_id"] == "W"
    assert (snaps.loc[w, "won"] == 1).all() and (other.loc[w, "won"] == 0).all()


def test_columns_are_signals_then_labels(snaps: pd.DataFrame, cfg: StageConfig) -> None:
    dates = snapshot_dates("2025-01-01", "2025-12-31")
    signals = compute_signals(_data(), dates, cfg)
    pd.testing.assert_frame_equal(snaps[list(signals.columns)], signals)
    labels = outcome_labels(signals[["deal_id", "as_of"]], _data().deals)
    pd.testing.assert_frame_equal(snaps[list(LABELS)], labels)
    assert set(SIGNALS) <= set(snaps.columns)


def test_chunking_and_progress_do_not_change_rows(cfg: StageConfig) -> None:
    calls: list[tuple[int, int]] = []
    a = build_snapshots(
        _data(),
        cfg,
        start="2025-01-01",
        end="2025-12-31",
        chunk_dates=5,
        progress=lambda done, total: calls.append((done, total)),
    )
    b = build_snapshots(_data(), cfg, start="2025-01-01", end="2025-12-31", chunk_dates=100)
    pd.testing.assert_frame_equal(a, b)
    assert calls[-1] == (52, 52) and len(calls) == 11


def test_no_dates_in_range_gives_empty_frame_with_columns(cfg: StageConfig) -> None:
    s = build_snapshots(_data(), cfg, start="2026-02-01", end="2026-03-01")
    assert s.empty and {"won", "days_in_stage"} <= set(s.columns)


def test_generated_data_labels_are_consistent(cfg: StageConfig) -> None:
    from features.synthetic.generator import generate

    data = generate(300, seed=5).tables
    s = build_snapshots(data, cfg, start="2023-01-01", end="2025-12-31", freq="4W-MON")
    assert len(s) > 0 and not s.duplicated(["deal_id", "as_of"]).any()
    final = data.deals.set_index("deal_id")["outcome"].reindex(s["deal_id"]).to_numpy()
    assert ((s["censored"] == 1) == (final == "open")).all()
    assert s.loc[s["censored"] == 1, "won"].isna().all()
    assert (s.loc[s["censored"] == 0, "days_to_close"] >= 0).all()
    won_q = s["closed_won_by_quarter_end"] == 1
    assert (s.loc[won_q, "won"] == 1).all()


def test_cli_snapshots_writes_parquet(serve_tables: Serve, cli: CliRunner, tmp_path: Path) -> None:
    from serving.cli import app

    serve_tables(_data())
    out = tmp_path / "snaps" / "train.parquet"
    res = cli.invoke(
        app, ["snapshots", "--start", "2025-01-01", "--end", "2025-12-31", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    back = pd.read_parquet(out)
    assert "wrote" in res.output and f"{len(back):,} rows" in res.output
    assert (
        set(LABELS) <= set(back.columns) and back["as_of"].nunique() == 51
    )  # no deal open on 6 Jan
    bad = cli.invoke(
        app, ["snapshots", "--start", "2025-06-01", "--end", "2025-01-01", "--out", str(out)]
    )
    assert bad.exit_code != 0 and "before --start" in bad.output


def test_custom_columns_in_snapshots_follow_the_point_in_time_rule(cfg: StageConfig) -> None:
    data = _data()
    deals = data.deals.assign(custom_region="EU", custom_close_note=None)
    deals.loc[deals["deal_id"] == "W", "custom_close_note"] = "PO received"
    data = CanonicalTables(**{**dict(data.items()), "deals": deals})
    s = build_snapshots(
        data,
        cfg,
        start="2025-01-01",
        end="2025-12-31",
        custom=["close_note"],
        static_custom=["region"],
    )
    assert (s["custom_region"] == "EU").all()
    assert s["custom_close_note"].isna().all()  # written at the close: never before the export
