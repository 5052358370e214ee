"""Tests of the synthetic pipeline generator: consistency of the tables and realism of the world.

Realism checks use point-in-time snapshots where a plain comparison over final deals would be
confounded (a deal that lives longer has more time to collect pushes).
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.data.schema import TRACKED_FIELDS, CanonicalTables, LossReason
from features.data.stages import StageConfig
from features.synthetic.generator import GeneratedData, generate, write_dataset

SEED = 11
N = 2500


@pytest.fixture(scope="module")
def data() -> GeneratedData:
    return generate(N, seed=SEED)


@pytest.fixture(scope="module")
def tables(data: GeneratedData) -> CanonicalTables:
    return data.tables


@pytest.fixture(scope="module")
def closed(data: GeneratedData) -> pd.DataFrame:
    d = data.tables.deals.merge(data.truth, on="deal_id")
    d = d[d["outcome"] != "open"].copy()
    d["won"] = d["outcome"] == "won"
    return d


@pytest.fixture(scope="module")
def snapshots(tables: CanonicalTables) -> pd.DataFrame:
    """Deals open at quarterly as-of dates (and closed later), with signals known at that date."""
    d, sh, fh, act = tables.deals, tables.stage_history, tables.field_history, tables.activities
    ecd = fh[fh["field"] == "expected_close_date"]
    pushes = ecd[pd.to_datetime(ecd["new_value"]) > pd.to_datetime(ecd["old_value"])]
    rows = []
    for as_of in pd.date_range("2022-09-30", "2025-06-30", freq="QE"):
        o = d[(d["created_at"] <= as_of) & (d["closed_at"] > as_of)].copy()
        stage = sh[sh["entered_at"] <= as_of].sort_values("entered_at").groupby("deal_id")["stage"]
        o["stage_asof"] = o["deal_id"].map(stage.last())
        n_push = pushes[pushes["changed_at"] <= as_of].groupby("deal_id").size()
        o["pushes"] = o["deal_id"].map(n_push).fillna(0)
        last_act = act[act["occurred_at"] <= as_of].groupby("deal_id")["occurred_at"].max()
        seen = o["deal_id"].map(last_act).fillna(o["created_at"])
        o["idle_days"] = (as_of - seen).dt.days
        o["won"] = o["outcome"] == "won"
        rows.append(o)
    return pd.concat(rows, ignore_index=True)


def _stratified_gap(frame: pd.DataFrame, better: pd.Series, worse: pd.Series) -> float:
    """Win-rate gap (better - worse) averaged over stages, weighted by the smaller group."""
    gaps, weights = [], []
    for _, g in frame.groupby("stage_asof"):
        b, w = g[better.loc[g.index]], g[worse.loc[g.index]]
        if len(b) >= 20 and len(w) >= 20:
            gaps.append(b["won"].mean() - w["won"].mean())
            weights.append(min(len(b), len(w)))
    assert weights, "no stage with enough deals in both groups"
    return float(np.average(gaps, weights=weights))


# --- determinism and contract -----------------------------------------------------------------
def test_same_seed_gives_identical_tables_and_different_seed_does_not() -> None:
    a = generate(400, seed=3)
    np.random.seed(0)  # global state must not matter
    b = generate(400, seed=3)
    c = generate(400, seed=4)
    for (name, fa), (_, fb) in zip(a.tables.items(), b.tables.items(), strict=True):
        pd.testing.assert_frame_equal(fa, fb, obj=name)
    pd.testing.assert_frame_equal(a.truth, b.truth)
    assert not a.tables.deals["amount"].equals(c.tables.deals["amount"])
    assert not a.truth["quality"].equals(c.truth["quality"])


def test_tables_pass_the_canonical_schema(tables: CanonicalTables) -> None:
    checked = tables.validated()
    assert len(checked.deals) == N
    assert set(checked.deals["history_source"]) == {"crm"}
    custom = {
        "custom_industry",
        "custom_decision_criteria",
        "custom_buying_process",
        "custom_contract_sent_date",
    }
    assert custom <= set(checked.deals.columns)
    for col in custom - {"custom_industry"}:
        share = tables.deals[col].isna().mean()
        assert 0.02 < share < 0.95, (col, share)
    assert tables.deals["custom_industry"].notna().all()


def test_truth_has_one_row_per_deal(data: GeneratedData) -> None:
    t = data.truth
    assert list(t["deal_id"]) == list(data.tables.deals["deal_id"])
    assert t["p_win_true"].between(0, 1).all()
    assert {"quality", "p_win_true", "final_outcome"} <= set(t.columns)
    # Deals open at export have a simulated fate in the truth.
    open_ids = data.tables.deals.loc[data.tables.deals["outcome"] == "open", "deal_id"]
    assert set(t.loc[t["deal_id"].isin(open_ids), "final_outcome"]) <= {"won", "lost"}


def test_export_time_and_open_deals(tables: CanonicalTables) -> None:
    d = tables.deals
    assert (d["observed_at"] == pd.Timestamp(date(2025, 12, 31))).all()
    assert d["created_at"].min() >= pd.Timestamp(date(2022, 1, 1))
    assert d["created_at"].max() < pd.Timestamp(date(2025, 12, 31))
    is_open = d["outcome"] == "open"
    assert is_open.any() and d.loc[is_open, "closed_at"].isna().all()
    assert d.loc[~is_open, "closed_at"].notna().all()
    assert (d.loc[~is_open, "closed_at"] <= d["observed_at"].iloc[0]).all()
    for col in ("expected_close_date", "next_step_date"):
        v = d[col].dropna()
        assert (v == v.dt.normalize()).all(), f"{col} must be dates at midnight"


def test_progress_is_reported_to_completion() -> None:
    calls: list[tuple[int, int]] = []
    generate(200, seed=1, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (200, 200)
    assert len(calls) >= 3
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)


# --- history consistency ----------------------------------------------------------------------
def test_field_history_chains_are_consistent(tables: CanonicalTables) -> None:
    fh = tables.field_history.sort_values(["deal_id", "field", "changed_at"])
    assert set(fh["field"]) == set(TRACKED_FIELDS)
    g = fh.groupby(["deal_id", "field"], sort=False)
    nxt_old = g["old_value"].shift(-1)
    linked = nxt_old.notna() | fh["new_value"].notna()
    has_next = g.cumcount(ascending=False) > 0
    mismatch = has_next & linked & (fh["new_value"].fillna("<null>") != nxt_old.fillna("<null>"))
    assert not mismatch.any(), fh[mismatch].head()
    assert not fh.duplicated(["deal_id", "field", "changed_at"]).any()
    assert (fh["old_value"].fillna("<null>") != fh["new_value"].fillna("<null>")).all()

    last = g.tail(1).set_index(["deal_id", "field"])["new_value"]
    deals = tables.deals.set_index("deal_id")
    for fld in TRACKED_FIELDS:
        final = last.xs(fld, level="field")
        current = deals.loc[final.index, fld]
        if fld == "amount":
            assert np.allclose(final.astype(float), current.astype(float))
        elif fld in ("expected_close_date", "next_step_date"):
            pd.testing.assert_series_equal(
                pd.to_datetime(final), current, check_names=False, check_dtype=False
            )
        else:
            assert (final.fillna("<null>") == current.fillna("<null>")).all(), fld

    span = fh.merge(tables.deals[["deal_id", "created_at", "closed_at", "observed_at"]])
    end = span["closed_at"].fillna(span["observed_at"])
    assert ((span["changed_at"] > span["created_at"]) & (span["changed_at"] <= end)).all()


def test_amount_discount_and_close_date_pushes_are_recorded(tables: CanonicalTables) -> None:
    fh = tables.field_history
    amt = fh[fh["field"] == "amount"]
    cut = amt["new_value"].astype(float) < amt["old_value"].astype(float)
    won_ids = tables.deals.loc[tables.deals["outcome"] == "won", "deal_id"]
    assert amt.loc[cut, "deal_id"].isin(won_ids).sum() > 0.5 * len(won_ids)
    ecd = fh[fh["field"] == "expected_close_date"]
    pushed = pd.to_datetime(ecd["new_value"]) > pd.to_datetime(ecd["old_value"])
    assert ecd.loc[pushed, "deal_id"].nunique() > 0.3 * len(tables.deals)
    nsd = fh[fh["field"] == "next_step_date"].groupby("deal_id").size()
    assert nsd.median() >= 3, "next_step_date should move over a deal's life"


def test_stage_history_is_consistent(tables: CanonicalTables, cfg: StageConfig) -> None:
    sh = tables.stage_history.sort_values(["deal_id", "entered_at"])
    d = tables.deals.set_index("deal_id")
    assert not sh["derived"].any()
    assert set(sh["stage"]) <= set(cfg.by_key)
    first = sh.groupby("deal_id").head(1).set_index("deal_id")
    assert len(first) == len(d)
    assert (first["entered_at"] == d.loc[first.index, "created_at"]).all()
    assert (first["stage"] == cfg.open_keys[0]).all()
    last = sh.groupby("deal_id").tail(1).set_index("deal_id")
    assert (last["stage"] == d.loc[last.index, "stage"]).all()
    is_closed = d.loc[last.index, "outcome"] != "open"
    assert (last.loc[is_closed, "entered_at"] == d.loc[last.index[is_closed], "closed_at"]).all()
    order = sh["stage"].map({s.key: s.order for s in cfg.stages})
    same = sh["deal_id"].eq(sh["deal_id"].shift())
    assert (order.diff()[same] > 0).all(), "stages only move forward"
    assert (sh["entered_at"].diff()[same] > pd.Timedelta(0)).all()
    # Deals are lost from every open stage.
    lost_from = sh[same.shift(-1, fill_value=False)]
    nxt = sh["stage"].shift(-1)[same.shift(-1, fill_value=False)]
    assert set(lost_from.loc[nxt == cfg.lost_key, "stage"]) == set(cfg.open_keys)


def test_activities_and_stakeholders_lie_within_the_deal(
    tables: CanonicalTables, cfg: StageConfig
) -> None:
    span = tables.deals[["deal_id", "created_at", "closed_at", "observed_at"]]
    act = tables.activities.merge(span)
    end = act["closed_at"].fillna(act["observed_at"])
    assert act["activity_id"].is_unique
    assert ((act["occurred_at"] >= act["created_at"]) & (act["occurred_at"] <= end)).all()
    per_deal = len(act) / len(tables.deals)
    assert 15 <= per_deal <= 50, per_deal
    # Every deal that entered the proposal stage has a 'proposal' activity.
    proposal_ids = set(
        tables.stage_history.loc[tables.stage_history["stage"] == "proposal", "deal_id"]
    )
    with_proposal = set(act.loc[act["type"] == "proposal", "deal_id"])
    assert proposal_ids <= with_proposal
    sk = tables.stakeholders.merge(span)
    sk_end = sk["closed_at"].fillna(sk["observed_at"])
    assert ((sk["added_at"] >= sk["created_at"]) & (sk["added_at"] <= sk_end)).all()
    assert sk["role"].nunique() == 8
    assert not sk.duplicated(["deal_id", "contact_id", "role"]).any()


# --- realism ----------------------------------------------------------------------------------
def test_win_rate_and_cycle_lengths_are_realistic(closed: pd.DataFrame) -> None:
    win_rate = closed["won"].mean()
    assert 0.25 <= win_rate <= 0.42, win_rate
    won = closed[closed["won"]]
    cycle = (won["closed_at"] - won["created_at"]).dt.days
    assert 90 <= cycle.median() <= 270, cycle.median()
    assert cycle.quantile(0.9) <= 540
    assert cycle.quantile(0.99) >= 300, "complex deals should take a year or more"


def test_time_in_stage_follows_the_stage_config(tables: CanonicalTables, cfg: StageConfig) -> None:
    medians = _advancing_medians(tables, cfg)
    for s in cfg.open_stages:
        assert s.duration_days is not None
        assert s.duration_days.min <= medians[s.key] <= s.duration_days.max, (s.key, medians)


def _advancing_medians(tables: CanonicalTables, cfg: StageConfig) -> dict[str, float]:
    """Median days in each open stage, over deals that moved on to the next stage."""
    sh = tables.stage_history.sort_values(["deal_id", "entered_at"])
    g = sh.groupby("deal_id")
    days = (g["entered_at"].shift(-1) - sh["entered_at"]).dt.total_seconds() / 86400
    nxt = g["stage"].shift(-1)
    keys = [*cfg.open_keys, cfg.won_key]
    return {
        k: float(days[(sh["stage"] == k) & (nxt == keys[i + 1])].median())
        for i, k in enumerate(cfg.open_keys)
    }


def test_durations_are_read_from_the_stage_config(cfg: StageConfig) -> None:
    data = cfg.model_dump(mode="json")
    for s in data["stages"]:
        if s["duration_days"]:
            s["duration_days"] = {
                "min": s["duration_days"]["min"] * 3,
                "max": s["duration_days"]["max"] * 3,
            }
    slow = StageConfig.model_validate(data)
    gen = generate(1200, seed=5, stages=slow)
    medians = _advancing_medians(gen.tables, slow)
    for s in slow.open_stages:
        assert s.duration_days is not None
        assert s.duration_days.min <= medians[s.key] <= s.duration_days.max, (s.key, medians)


def test_a_shorter_process_uses_its_own_stage_keys(cfg: StageConfig) -> None:
    data = cfg.model_dump(mode="json")
    data["stages"] = [s for s in data["stages"] if s["key"] != "needs_analysis"]
    short = StageConfig.model_validate(data)
    gen = generate(300, seed=2, stages=short)
    gen.tables.validated()
    assert set(gen.tables.stage_history["stage"]) == set(short.by_key)


def test_win_rate_rises_with_latent_quality(closed: pd.DataFrame, data: GeneratedData) -> None:
    by_quintile = closed.groupby(pd.qcut(closed["quality"], 5), observed=True)["won"].mean()
    assert by_quintile.is_monotonic_increasing and by_quintile.iloc[-1] - by_quintile.iloc[0] > 0.3
    t = data.truth
    assert np.corrcoef(t["quality"], t["p_win_true"])[0, 1] > 0.6


def test_win_rate_rises_with_champion_and_decision_maker(
    closed: pd.DataFrame, tables: CanonicalTables
) -> None:
    sk = tables.stakeholders
    for role in ("champion", "decision_maker"):
        has = closed["deal_id"].isin(sk.loc[sk["role"] == role, "deal_id"])
        assert closed.loc[has, "won"].mean() > closed.loc[~has, "won"].mean() + 0.1, role


def test_win_rate_rises_with_recent_activity(snapshots: pd.DataFrame) -> None:
    recent = snapshots["idle_days"] <= 14
    quiet = snapshots["idle_days"].between(30, 120)
    assert _stratified_gap(snapshots, recent, quiet) > 0.15
    # ...but a quiet deal is not a certain loss: the signal is noisy.
    assert snapshots.loc[snapshots["idle_days"].between(30, 60), "won"].mean() > 0.03


def test_win_rate_falls_with_close_date_pushes(snapshots: pd.DataFrame) -> None:
    few = snapshots["pushes"] <= 1
    many = snapshots["pushes"] >= 2
    assert _stratified_gap(snapshots, few, many) > 0.05


def test_quarter_shock_moves_many_deals(closed: pd.DataFrame, data: GeneratedData) -> None:
    q = closed["closed_at"].dt.to_period("Q").astype(str)
    per_q = closed.groupby(q)["won"].agg(["mean", "size"])
    per_q = per_q[per_q["size"] >= 40]
    shock = data.quarter_shocks.set_index("quarter")["shock"].reindex(per_q.index)
    assert np.corrcoef(per_q["mean"], shock)[0, 1] > 0.4
    p = closed["won"].mean()
    dispersion = (((per_q["mean"] - p) ** 2) / (p * (1 - p) / per_q["size"])).sum()
    assert dispersion / (len(per_q) - 1) > 1.5, "quarter win rates vary beyond binomial noise"


def test_loss_reasons_follow_what_happened(tables: CanonicalTables) -> None:
    lost = tables.deals[tables.deals["outcome"] == "lost"]
    assert set(lost["loss_reason"]) == {r.value for r in LossReason}
    assert tables.deals.loc[tables.deals["outcome"] != "lost", "loss_reason"].isna().all()
    with_comp = (lost.loc[lost["competitor"].notna(), "loss_reason"] == "competitor").mean()
    without = (lost.loc[lost["competitor"].isna(), "loss_reason"] == "competitor").mean()
    assert with_comp > 2 * without


def test_zombie_deals_exist(tables: CanonicalTables, data: GeneratedData) -> None:
    d = tables.deals
    last = tables.activities.groupby("deal_id")["occurred_at"].max()
    open_deals = d[d["outcome"] == "open"]
    seen = open_deals["deal_id"].map(last).fillna(open_deals["created_at"])
    stale = (open_deals["observed_at"] - seen).dt.days >= 90
    assert 0.05 * len(open_deals) < stale.sum() < 0.6 * len(open_deals)
    # Others were closed lost long after going quiet, as timing or status quo.
    t = data.truth.set_index("deal_id")
    late = d[(d["outcome"] == "lost") & t.loc[d["deal_id"], "zombie"].to_numpy()]
    assert len(late) > 0 and set(late["loss_reason"]) <= {"timing", "status_quo"}
    quiet = (late["closed_at"] - late["deal_id"].map(last).fillna(late["created_at"])).dt.days
    assert (quiet >= 90).all()


def test_next_steps_are_mostly_set(tables: CanonicalTables) -> None:
    open_deals = tables.deals[tables.deals["outcome"] == "open"]
    missing = open_deals["next_step"].isna().mean()
    assert 0.02 < missing < 0.3, missing
    assert (open_deals["next_step"].isna() == open_deals["next_step_date"].isna()).all()


def test_forecast_categories_are_used(tables: CanonicalTables) -> None:
    d = tables.deals
    open_cats = set(d.loc[d["outcome"] == "open", "forecast_category"])
    assert {"pipeline", "best_case", "commit"} <= open_cats
    assert set(d.loc[d["outcome"] == "won", "forecast_category"]) == {"closed"}


def test_targets_per_team_and_quarter_give_healthy_coverage(tables: CanonicalTables) -> None:
    tg, d = tables.targets, tables.deals
    quarters = pd.period_range("2022Q1", "2025Q4", freq="Q").astype(str)
    teams = set(d["team"])
    team_t = tg[tg["scope"] == "team"]
    for quarter in quarters:
        assert set(team_t.loc[team_t["quarter"] == quarter, "scope_id"]) == teams, quarter
    company = tg[tg["scope"] == "company"].set_index("quarter")["amount"]
    assert np.allclose(company, team_t.groupby("quarter")["amount"].sum().reindex(company.index))
    coverage = []
    for quarter in quarters[4:]:
        start = pd.Period(quarter).start_time
        open_then = d[(d["created_at"] <= start) & ~(d["closed_at"] <= start)]
        coverage.append(open_then["amount"].sum() / company[quarter])
    assert 3.0 <= float(np.median(coverage)) <= 6.5, coverage


# --- writing ----------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_write_dataset_round_trip(tmp_path: Path, fmt: str) -> None:
    data = generate(150, seed=8)
    paths = write_dataset(data, tmp_path, fmt)  # type: ignore[arg-type]
    names = {p.name for p in tmp_path.iterdir() if p.is_file()}
    assert names == {f"{t}.{fmt}" for t in CanonicalTables.TABLES}
    assert (tmp_path / "truth" / "truth.parquet").is_file()
    assert all(p.exists() for p in paths)
    for name, frame in data.tables.items():
        path = tmp_path / f"{name}.{fmt}"
        back = pd.read_parquet(path) if fmt == "parquet" else pd.read_csv(path)
        assert len(back) == len(frame) and list(back.columns) == list(frame.columns)
    if fmt == "csv":
        deals = pd.read_csv(tmp_path / "deals.csv")
        assert deals["created_at"].str.match(r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}$").all()
        assert deals["expected_close_date"].str.match(r"^\d{4}-\d{2}-\d{2}").all()
    else:
        pd.testing.assert_frame_equal(
            pd.read_parquet(tmp_path / "deals.parquet"), data.tables.deals
        )
    truth = pd.read_parquet(tmp_path / "truth" / "truth.parquet")
    assert list(truth["deal_id"]) == list(data.truth["deal_id"])
