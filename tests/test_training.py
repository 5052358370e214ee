"""Win and slip models: leak guard, labels at the cut-off, estimator contract, calibration,
baselines, oracle, reasons, scoring and the minimum-data refusal (fast: small generated data)."""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils._param_validation import InvalidParameterError

from features.data.calendar import to_timestamp
from features.data.schema import CanonicalTables
from features.data.stages import load_stage_config
from features.errors import InputError, NotEnoughDataError
from features.signals.snapshots import data_end
from features.synthetic.generator import GeneratedData, generate, write_dataset
from tests.factory import deal, tables
from training import FallbackScorer, fit_models, make_config
from training.baselines import NaiveBayesPeer, StageDefault, StageHistorical
from training.calibration import base_model, calibrate
from training.datasets import (
    IDENTIFIERS,
    censoring_survival,
    check_feature_columns,
    check_feature_values,
    labels_at,
    snapshot_rows,
)
from training.errors import LeakageError
from training.evaluation import scores
from training.explain import render
from training.features import SnapshotEncoder, custom_stage_orders
from training.models import HORIZON, SlipModel, WinModel
from training.oracle import Oracle

CFG = load_stage_config()
# Small models: these tests check contracts, not quality (tests/test_training_quality.py does).
FAST: dict[str, Any] = {
    "win": {"n_estimators": 40, "learning_rate": 0.1},
    "slip": {"n_estimators": 40, "learning_rate": 0.1},
}
END = to_timestamp("2025-12-31")


@pytest.fixture(scope="module")
def data() -> GeneratedData:
    return generate(2500, 5)


@pytest.fixture(scope="module")
def fitted(data: GeneratedData):
    return fit_models(data.tables, CFG, cutoff=END, **FAST)


@pytest.fixture(scope="module")
def rows(data: GeneratedData) -> pd.DataFrame:
    # Declared fixed at creation so that the encoder's own masks are what the test sees (without
    # it, the point-in-time rule leaves them unknown on every open row before the export).
    custom = [c for c in data.tables.deals.columns if c.startswith("custom_")]
    cfg = make_config(**FAST, static_custom=custom)
    return snapshot_rows(
        data.tables,
        CFG,
        start=to_timestamp("2023-01-01"),
        end=END,
        config=cfg,
        custom=custom,
    )


# --- the leak guard -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "column",
    [
        "closed_at",
        "outcome",
        "loss_reason",
        "final_stage",
        "won",
        "days_to_close",
        "censored",
        "closed_won_by_quarter_end",
        "custom_outcome",
        "custom_loss_reason",
    ],
)
def test_leak_guard_refuses_columns_known_only_after_as_of(column: str) -> None:
    with pytest.raises(LeakageError, match=column):
        check_feature_columns(["stage", "amount", column])


@pytest.mark.parametrize("column", sorted(IDENTIFIERS))
def test_leak_guard_refuses_identifiers(column: str) -> None:
    with pytest.raises(LeakageError, match="identifier"):
        check_feature_columns(["stage", column])


def test_model_refuses_a_leaky_feature_list(rows: pd.DataFrame, data: GeneratedData) -> None:
    leaky = rows.merge(data.tables.deals[["deal_id", "closed_at"]], on="deal_id")
    y = np.arange(len(leaky)) % 2
    with pytest.raises(LeakageError, match="closed_at"):
        WinModel(features=["stage", "amount", "closed_at"]).fit(leaky, y)


def test_builder_refuses_values_only_a_closed_deal_has(rows: pd.DataFrame) -> None:
    bad = rows.copy()
    bad.loc[bad.index[:3], "forecast_category"] = "closed"
    with pytest.raises(LeakageError, match="forecast_category 'closed'"):
        check_feature_values(bad, CFG)
    check_feature_values(rows, CFG)  # the real snapshots are clean


def test_training_rows_leak_nothing_known_after_the_cutoff(data: GeneratedData) -> None:
    """Rewrite every deal's ending after the cut-off (outcome flipped, closed later, stage
    changes, activities and stakeholders after it dropped): a model fitted at the cut-off must
    not change at all. (Field changes after the cut-off stay: the value a field had before a
    later change is that change's old value.)"""
    cutoff = to_timestamp("2024-12-31")
    t = data.tables
    deals = t.deals.copy()
    later = pd.to_datetime(deals["closed_at"]) > cutoff
    flip = {"won": "lost", "lost": "won"}
    deals.loc[later, "outcome"] = deals.loc[later, "outcome"].map(flip)
    deals.loc[later, "closed_at"] = pd.to_datetime(deals.loc[later, "closed_at"]) + pd.Timedelta(
        days=40
    )
    other = CanonicalTables(
        deals=deals,
        stage_history=t.stage_history[t.stage_history["entered_at"] <= cutoff],
        field_history=t.field_history,
        activities=t.activities[t.activities["occurred_at"] <= cutoff],
        stakeholders=t.stakeholders[t.stakeholders["added_at"] <= cutoff],
        targets=t.targets,
    )
    a = fit_models(t, CFG, cutoff=cutoff, **FAST)
    b = fit_models(other, CFG, cutoff=cutoff, **FAST)
    probe = snapshot_rows(
        t, CFG, start=to_timestamp("2024-06-03"), end=cutoff, config=a.config, custom=a.custom
    )
    assert a.train_rows == b.train_rows
    np.testing.assert_array_equal(a.predict_win(probe), b.predict_win(probe))
    np.testing.assert_array_equal(a.predict_quarter(probe), b.predict_quarter(probe))


def test_calibration_rows_are_scored_by_models_fitted_before_them(data, monkeypatch) -> None:
    """Every calibration row is scored by a fold model fitted only on earlier snapshots, with
    labels as known before the row's date: out of time, as the served model meets its future."""
    from training import fitting

    events: list[tuple[str, pd.Timestamp]] = []
    real_labels = fitting.labels_at

    def spy_labels(rows: pd.DataFrame, deals: pd.DataFrame, at: pd.Timestamp, **kw: Any):
        events.append(("labels", pd.Timestamp(at)))
        return real_labels(rows, deals, at, **kw)

    class Spy(WinModel):
        def fit(self, X, y, sample_weight=None):  # type: ignore[no-untyped-def]
            events.append(("fit", pd.Timestamp(X["as_of"].max())))
            return super().fit(X, y, sample_weight=sample_weight)

        def decision_function(self, X):  # type: ignore[no-untyped-def]
            events.append(("score", pd.Timestamp(X["as_of"].min())))
            return super().decision_function(X)

    monkeypatch.setattr(fitting, "labels_at", spy_labels)
    monkeypatch.setattr(fitting, "WinModel", Spy)
    cutoff = to_timestamp("2024-12-31")
    fitted = fit_models(data.tables, CFG, cutoff=cutoff, **FAST, calibration_folds=3)
    split = fitted.split
    assert split is not None and len(split.folds) == 3
    scored = [i for i, (kind, _) in enumerate(events) if kind == "score"]
    assert len(scored) == 3
    for i in scored:
        fit_at = max(j for j in range(i) if events[j][0] == "fit")
        labels_read = max(j for j in range(fit_at) if events[j][0] == "labels")
        first_scored = events[i][1]
        assert events[fit_at][1] < first_scored, (events[fit_at], events[i])
        assert events[labels_read][1] <= first_scored, (events[labels_read], events[i])
    # the served model saw every snapshot, the last fold's too
    served = [t for kind, t in events if kind == "fit"][-1]
    assert served >= split.folds[-1].start


# --- labels as known at the cut-off ---------------------------------------------------------------
def _two_deals() -> CanonicalTables:
    return tables(
        deals=[
            deal("W", "2025-01-10", stage="closed_won", outcome="won", closed_at="2025-05-20"),
            deal(
                "L",
                "2025-01-12",
                stage="closed_lost",
                outcome="lost",
                closed_at="2025-04-02",
                loss_reason="price",
            ),
            deal("O", "2025-01-15", stage="proposal"),
        ],
        stage_history=[
            ("W", "qualification", "2025-01-10"),
            ("W", "closed_won", "2025-05-20"),
            ("L", "qualification", "2025-01-12"),
            ("L", "closed_lost", "2025-04-02"),
            ("O", "qualification", "2025-01-15"),
            ("O", "proposal", "2025-03-01"),
        ],
    )


def test_a_deal_closed_after_the_cutoff_is_censored_even_in_earlier_rows() -> None:
    t = _two_deals()
    keys = pd.DataFrame({"deal_id": ["W", "L", "O"], "as_of": [to_timestamp("2025-03-03")] * 3})
    early = labels_at(keys, t.deals, to_timestamp("2025-04-30"), horizon_days=365)
    won, weight = early["won_h"].to_numpy(float), early["weight"].to_numpy(float)
    assert np.isnan(won[0]) and weight[0] == 0  # W closed later
    assert won[1] == 0 and weight[1] > 0  # L lost by then
    assert np.isnan(won[2])  # still open
    late = labels_at(keys, t.deals, to_timestamp("2025-06-30"), horizon_days=365)
    assert late.loc[0, "won_h"] == 1 and late.loc[0, "closed_days"] == 78
    # the quarter (2025Q1) ended by both cut-offs: W did not win in it
    assert early.loc[0, "won_by_quarter_end"] == 0


def test_censoring_weights_are_inverse_follow_up_shares() -> None:
    follow = np.array([10.0, 20.0, 30.0, 40.0])
    np.testing.assert_allclose(
        censoring_survival(follow, np.array([5.0, 15.0, 35.0])), [1, 0.75, 0.25]
    )
    t = _two_deals()
    keys = pd.DataFrame(
        {
            "deal_id": ["L", "O", "O", "O"],
            "as_of": [
                to_timestamp(d) for d in ("2025-03-03", "2025-03-13", "2025-03-23", "2025-04-02")
            ],
        }
    )
    lab = labels_at(keys, t.deals, to_timestamp("2025-04-12"), horizon_days=365)
    # L closed 30 days after its row; rows followed up >= 30 days: 2 of 4 -> weight 2
    assert lab.loc[0, "won_h"] == 0 and lab.loc[0, "weight"] == pytest.approx(2.0)
    assert (lab.loc[1:, "weight"] == 0).all()


# --- the estimators -------------------------------------------------------------------------------
def test_estimator_contract(rows: pd.DataFrame) -> None:
    y = (pd.to_numeric(rows["stage_order"]) >= 3).to_numpy().astype(int)
    model = WinModel(n_estimators=20)
    with pytest.raises(NotFittedError):
        model.predict_proba(rows.head())
    assert model.fit(rows, y) is model
    assert model.n_features_in_ == len(model.feature_names_)
    assert list(model.classes_) == [0, 1]
    assert set(model.feature_importances_.index) == set(model.feature_names_)
    twin = clone(model)
    assert twin.get_params() == model.get_params() and not hasattr(twin, "model_")
    p = model.predict_proba(rows.head(50))
    assert p.shape == (50, 2) and np.allclose(p.sum(axis=1), 1)
    contrib = model.contributions(rows.head(50))
    np.testing.assert_allclose(
        contrib.sum(axis=1), model.decision_function(rows.head(50)), atol=1e-6
    )


@pytest.mark.parametrize("model_class", [WinModel, SlipModel])
def test_scores_equal_what_lightgbm_reads_from_the_encoded_frame(
    rows: pd.DataFrame, model_class: type
) -> None:
    """Models predict from :meth:`SnapshotEncoder.transform_matrix` (no frame for LightGBM to
    convert); the numbers equal LightGBM's own conversion of :meth:`transform`'s frame, with
    categories unseen at fit, missing values, masked custom columns and date columns."""
    sample = rows.sample(400, random_state=3).reset_index(drop=True)
    sample[HORIZON] = np.resize([7.0, 45.0, 200.0], len(sample))
    y = (pd.to_numeric(sample["stage_order"]) >= 3).to_numpy().astype(int)
    model = model_class(
        n_estimators=30, min_child_samples=20, known_from_stage=custom_stage_orders(CFG)
    ).fit(sample, y)
    assert model.encoder_.date_columns_ and model.encoder_.categories_
    odd = sample.copy()
    cats = list(model.encoder_.categories_)
    odd.loc[::3, cats[0]] = "a value never seen at fit"
    odd.loc[1::3, cats[-1]] = None
    odd.loc[::4, "amount"] = np.nan
    frame = model._encode(odd)
    assert (frame.dtypes == "category").sum() == len(cats)
    # LightGBM's conversion of the frame: category codes, -1 (missing) as NaN, then floats
    as_read = frame.apply(
        lambda c: c.cat.codes.replace(-1, np.nan) if isinstance(c.dtype, pd.CategoricalDtype) else c
    ).to_numpy(dtype="float64")
    masked = odd["stage_order"] < 2  # custom_decision_criteria is asked for from stage 2 on
    assert (
        masked.any()
        and np.isnan(
            as_read[masked.to_numpy(), frame.columns.get_loc("custom_decision_criteria")]
        ).all()
    )
    np.testing.assert_array_equal(model._matrix(odd), as_read)
    np.testing.assert_array_equal(
        model.decision_function(odd), model.model_.predict(frame, raw_score=True)
    )
    np.testing.assert_array_equal(
        model.contributions(odd).to_numpy(), model.model_.predict(frame, pred_contrib=True)
    )


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("n_jobs", 8),
        ("learning_rate", 0.0),
        ("num_leaves", 1),
        ("subsample", 1.5),
        ("exclude", "x"),
    ],
)
def test_parameters_are_validated_in_fit(rows: pd.DataFrame, param: str, value: object) -> None:
    params: dict[str, Any] = {param: value}
    model = WinModel(**params)  # stored, not checked, in __init__
    with pytest.raises(InvalidParameterError, match=param):
        model.fit(rows, np.arange(len(rows)) % 2)


def test_labels_must_be_binary_and_known(rows: pd.DataFrame) -> None:
    y = np.where(np.arange(len(rows)) % 3 == 0, np.nan, 1.0)
    with pytest.raises(InputError, match="0 or 1"):
        WinModel(n_estimators=5).fit(rows, y)


def test_missing_signals_stay_missing_and_are_scored(fitted, rows: pd.DataFrame) -> None:
    """Deals-only imports lack history signals: the model scores them without imputing."""
    history = [
        "days_in_stage",
        "stage_norm_ratio",
        "amount_change_count",
        "close_date_push_count",
        "close_date_slip_days",
        "days_to_expected_close",
        "days_to_next_step",
        "amount",
    ]
    sample = rows.head(300)
    unknown = sample.copy()
    unknown[history] = np.nan
    unknown[["history_known", "field_changes_known", "stage_entry_known"]] = 0.0
    zeros = unknown.copy()
    zeros[history] = 0.0
    p_unknown = fitted.predict_win(unknown)
    assert np.isfinite(p_unknown).all()
    assert not np.allclose(p_unknown, fitted.predict_win(zeros))  # NaN is not read as 0
    encoded = base_model(fitted.win).encoder_.transform(unknown)
    assert encoded[history].isna().all().all()


def test_custom_columns_are_features_known_only_when_they_could_be(rows: pd.DataFrame) -> None:
    enc = SnapshotEncoder(known_from_stage=custom_stage_orders(CFG)).fit(rows)
    assert {"custom_industry", "custom_decision_criteria", "custom_contract_sent_date"} <= set(
        enc.feature_names_
    )
    assert enc.date_columns_ == ["custom_contract_sent_date"]
    out = enc.transform(rows)
    # required in needs_analysis (order 2): unknown while the deal is still qualifying
    early = rows["stage_order"] < 2
    assert out.loc[early, "custom_decision_criteria"].isna().all()
    assert (
        out.loc[~early & rows["custom_decision_criteria"].notna(), "custom_decision_criteria"]
        .notna()
        .any()
    )
    # a date after as-of had not happened yet
    sent = pd.to_datetime(rows["custom_contract_sent_date"], errors="coerce")
    future = sent.dt.normalize() > rows["as_of"].dt.normalize()
    assert future.any() and out.loc[future, "custom_contract_sent_date"].isna().all()
    past = (sent.dt.normalize() <= rows["as_of"].dt.normalize()) & (rows["stage_order"] >= 4)
    assert (out.loc[past, "custom_contract_sent_date"] >= 0).all()


def test_no_identifier_is_a_feature(fitted) -> None:
    names = set(base_model(fitted.win).feature_names_) | set(base_model(fitted.slip).feature_names_)
    assert not names & IDENTIFIERS
    assert "owner_win_rate_vs_company" in names and "owner_n_closed" not in names
    assert "owner_win_rate" not in names  # drifts with the calendar (training.features)


def test_slip_model_is_monotone_in_the_horizon(fitted, rows: pd.DataFrame) -> None:
    cdf = fitted.close_week_cdf(rows.sample(200, random_state=1))
    assert cdf.shape == (200, 26)
    assert (np.diff(cdf, axis=1) >= 0).all()
    raw = base_model(fitted.slip)
    plain = raw.cumulative(rows.head(100), [7, 30, 90, 180])
    assert (np.diff(plain, axis=1) >= -1e-12).all()
    assert isinstance(raw, SlipModel)


# --- calibration on a later, shifted window -------------------------------------------------------
@pytest.mark.parametrize("method", ["sigmoid", "isotonic"])
def test_calibration_on_a_time_shifted_window(
    rows: pd.DataFrame, method: Literal["sigmoid", "isotonic"]
) -> None:
    """The later windows win half as often as the base window for the same signals (a downturn
    the base model cannot know); calibrating on the first later window fixes the last."""
    rng = np.random.default_rng(3)
    order = pd.to_numeric(rows["stage_order"]).fillna(1).to_numpy()
    logit = -2.0 + 0.8 * order - 0.02 * rows["days_since_last_activity"].fillna(60).to_numpy()
    p_true = 1 / (1 + np.exp(-logit))
    dates = np.sort(rows["as_of"].unique())
    t1, t2 = dates[len(dates) // 2], dates[3 * len(dates) // 4]
    base, cal, test = (
        rows["as_of"] < t1,
        (rows["as_of"] >= t1) & (rows["as_of"] < t2),
        rows["as_of"] >= t2,
    )
    shifted = p_true / (p_true + 2 * (1 - p_true))  # odds halved after t1
    y = rng.random(len(rows)) < np.where(base, p_true, shifted)
    model = WinModel(n_estimators=60, learning_rate=0.1).fit(rows[base], y[base])
    calibrated = calibrate(model, rows[cal], y[cal], method=method)
    before = scores(y[test], model.predict_proba(rows[test])[:, 1], names=("ece", "brier"))
    after = scores(y[test], calibrated.predict_proba(rows[test])[:, 1], names=("ece", "brier"))
    assert before["ece"] > 0.05  # the shift is real
    assert after["ece"] < 0.02 and after["brier"] < before["brier"]


# --- baselines ------------------------------------------------------------------------------------
def _history() -> CanonicalTables:
    """Four closed deals: A won via every stage, B lost in proposal, C lost in qualification,
    D won; E still open."""
    path = ["qualification", "needs_analysis", "proposal", "negotiation"]
    deals_, sh = [], []
    for did, outcome, last, seg in (
        ("A", "won", 4, "SMB"),
        ("B", "lost", 3, "SMB"),
        ("C", "lost", 1, "Enterprise"),
        ("D", "won", 4, "Enterprise"),
    ):
        deals_.append(
            deal(
                did,
                "2024-01-05",
                outcome=outcome,
                stage=f"closed_{outcome}",
                closed_at="2024-06-01",
                segment=seg,
                loss_reason="price" if outcome == "lost" else None,
            )
        )
        sh += [(did, s, f"2024-0{i + 1}-10") for i, s in enumerate(path[:last])]
        sh.append((did, f"closed_{outcome}", "2024-06-01"))
    deals_.append(deal("E", "2024-05-05", stage="proposal"))
    return tables(deals=deals_, stage_history=sh)


def test_stage_baselines_by_hand() -> None:
    t = _history()
    cutoff = to_timestamp("2024-12-31")
    rows = pd.DataFrame(
        {
            "stage": ["qualification", "proposal", "negotiation", None],
            "stage_win_probability": [0.1, 0.5, 0.7, np.nan],
        }
    )
    np.testing.assert_allclose(
        StageDefault().fit(t, CFG, cutoff).predict(rows), [0.1, 0.5, 0.7, 0.5]
    )
    hist = StageHistorical().fit(t, CFG, cutoff)
    # reached qualification: A B C D (2 won) -> 3/6; proposal: A B D (2 won) -> 3/5;
    # negotiation: A D -> 3/4; unknown stage: the prior 3/6
    np.testing.assert_allclose(hist.predict(rows), [3 / 6, 3 / 5, 3 / 4, 3 / 6])


def test_naive_bayes_counts_stages_as_odoo_does() -> None:
    t = _history()
    nb = NaiveBayesPeer().fit(t, CFG, to_timestamp("2024-12-31"))
    assert nb.stage_lost_ == {
        "qualification": 2.0,
        "needs_analysis": 1.0,
        "proposal": 1.0,
        "negotiation": 0.0,
    }
    rows = pd.DataFrame(
        {
            "stage": ["proposal"],
            "segment": ["SMB"],
            "product": ["press"],
            "competitor_present": [0.0],
        }
    )
    # won: prior 3, stage (2+1)/(2+5), SMB (1+1)/(2+3), product (2+1)/(2+2), competitor alike
    # lost: prior 3, stage (1+1)/(2+5), segment SMB (1+1)/(2+3), product (2+1)/(2+2), comp alike
    w = 3 * (3 / 7) * (2 / 5) * (3 / 4) * (3 / 4)
    lo = 3 * (2 / 7) * (2 / 5) * (3 / 4) * (3 / 4)
    assert nb.predict(rows)[0] == pytest.approx(w / (w + lo))


# --- the oracle -----------------------------------------------------------------------------------
def test_oracle_by_hand(tmp_path: Path) -> None:
    truth = pd.DataFrame(
        {
            "deal_id": ["A", "B"],
            "logit_common": [0.5, -1.0],
            "zombie": [False, True],
            "stale_at": [pd.NaT, pd.Timestamp("2025-03-01")],
            "entered_s1": [pd.Timestamp("2025-01-01")] * 2,
            "entered_s2": [pd.Timestamp("2025-02-01"), pd.NaT],
        }
    )
    truth.to_parquet(tmp_path / "truth.parquet")
    (tmp_path / "oracle.json").write_text(
        json.dumps(
            {
                "stages": ["s1", "s2"],
                "advance_intercepts": [0.2, 1.0],
                "exit_shock_coef": 0.6,
                "shock_sd": 0.0,
            }
        )
    )
    oracle = Oracle.from_dir(tmp_path)
    rows = pd.DataFrame(
        {
            "deal_id": ["A", "A", "B", "B"],
            "as_of": pd.to_datetime(["2025-01-15", "2025-02-15", "2025-01-15", "2025-03-15"]),
        }
    )
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    expected = [sig(0.7) * sig(1.5), sig(1.5), sig(-0.8) * sig(0.0), 0.0]  # B silent by March
    np.testing.assert_allclose(oracle.predict(rows), expected)
    with pytest.raises(InputError, match=r"no truth\.parquet"):
        Oracle.from_dir(tmp_path / "nowhere")


def test_generated_truth_feeds_the_oracle(data: GeneratedData, tmp_path: Path, rows) -> None:
    write_dataset(data, tmp_path)
    p = Oracle.from_dir(tmp_path).predict(rows.head(500))
    assert np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()


# --- reasons and scores ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("group", "values", "text"),
    [
        ("activity_recency", {"days_since_last_activity": 41.0}, "no activity for 41 days"),
        (
            "activity_recency",
            {"days_since_last_activity": 41.0, "days_since_last_touch": 30.0},
            "no activity for 41 days; nothing logged for 30 days",
        ),
        ("champion", {"champion_identified": 1.0}, "champion identified"),
        ("champion", {"champion_identified": 0.0}, "no champion identified"),
        (
            "close_date_pushes",
            {"close_date_push_count": 3.0, "close_date_slip_days": 95.0},
            "close date pushed 3 times (95 days in all)",
        ),
        (
            "time_in_stage",
            {"days_in_stage": 41.0, "stage_norm_ratio": 0.98, "stage": "needs_analysis"},
            "41 days in 2 Needs Analysis, 1.0x the stage norm",
        ),
        (
            "next_step",
            {"next_step_defined": 1.0, "days_to_next_step": -4.0},
            "next step 4 days overdue",
        ),
        (
            "pace",
            {"stage_pace": 1.62, "stage": "proposal"},
            "reached 3 Proposal / Quote in 1.6x the norm of the stages before",
        ),
        (
            "forecast_category",
            {"forecast_category": "best_case", "forecast_category_mean": 0.3},
            "forecast category 'best case' (its categories so far average 30%)",
        ),
        (
            "rep_record",
            {"owner_win_rate": 0.31, "owner_advance_skill": -0.2},
            "the rep's win rate is 31%, stage conversion below the company's",
        ),
        ("team_record", {"team_win_rate": 0.28}, "the team's win rate is 28%"),
        (
            "custom_contract_sent_date",
            {"custom_contract_sent_date": 12.0},
            "contract sent date: 12 days ago",
        ),
    ],
)
def test_reasons_in_plain_words(group: str, values: dict, text: str) -> None:
    assert render(group, values, CFG, frozenset({"custom_contract_sent_date"})) == text


def test_a_numeric_custom_column_is_not_read_as_a_date() -> None:
    assert render("custom_score", {"custom_score": 12.0}, CFG) == "score: 12"


def test_scores_for_reps(fitted, data: GeneratedData) -> None:
    as_of = to_timestamp("2025-11-14")
    scored = fitted.score(data.tables, CFG, as_of, reasons=True)
    for col in (
        "deal_id",
        "owner",
        "team",
        "segment",
        "product",
        "stage",
        "amount",
        "expected_close_date",
        "forecast_category",
        "p_win",
        "p_won_this_quarter",
        "expected_value",
        "reasons_for",
        "reasons_against",
        "next_actions",
    ):
        assert col in scored.columns
    assert (scored["p_won_this_quarter"] <= scored["p_win"] + 1e-12).all()
    np.testing.assert_allclose(
        scored["expected_value"], scored["amount"] * scored["p_won_this_quarter"]
    )
    assert scored["expected_value"].is_monotonic_decreasing
    assert (scored["method"] == "model").all()
    assert scored.attrs["model_versions"] == {"win_probability": None, "slip": None}
    assert scored["reasons_for"].map(len).sum() > 0 and scored["reasons_against"].map(len).sum() > 0
    assert scored["next_actions"].map(len).min() >= 1
    # reasons never name people, teams, accounts or deals
    names = (
        set(data.tables.deals["owner"])
        | set(data.tables.deals["team"])
        | set(data.tables.deals["account"])
    )
    words = " ".join(" ".join(r) for r in scored["reasons_for"] + scored["reasons_against"])
    assert not [n for n in names if n in words]
    assert "D00" not in words
    early = fitted.score(data.tables, CFG, to_timestamp("2021-06-30"), reasons=True)
    assert early.empty and "p_won_this_quarter" in early.columns
    one = scored["owner"].iloc[0]
    mine = fitted.score(data.tables, CFG, as_of, owner=one)
    assert set(mine["owner"]) == {one} and len(mine) < len(scored)


def test_fallback_scorer_says_so(data: GeneratedData) -> None:
    as_of = to_timestamp("2025-11-14")
    scored = FallbackScorer(reason="no champion").score(data.tables, CFG, as_of, reasons=True)
    assert (scored["method"] == "historical_stage_rates").all()
    assert scored.attrs["fallback_reason"] == "no champion"
    in_q = scored["expected_close_date"] <= pd.Timestamp("2025-12-31")
    np.testing.assert_allclose(scored.loc[in_q, "p_won_this_quarter"], scored.loc[in_q, "p_win"])
    assert (scored.loc[~in_q, "p_won_this_quarter"] == 0).all()
    rates = StageHistorical().fit(data.tables, CFG, as_of).rates_
    np.testing.assert_allclose(scored["p_win"], scored["stage"].map(rates))


# --- minimum data ---------------------------------------------------------------------------------
def test_training_refuses_below_the_minimum_of_closed_deals() -> None:
    small = generate(120, 2)
    with pytest.raises(NotEnoughDataError, match=r"needs at least 200 closed.*historical stage"):
        fit_models(small.tables, CFG, cutoff=data_end(small.tables), **FAST)


def test_unknown_recipe_keys_are_refused() -> None:
    with pytest.raises(InputError, match="horizon_dayz"):
        make_config(horizon_dayz=100)
    with pytest.raises(InputError, match=r"win\.n_estimators"):
        make_config(win={"n_estimators": 0})


def test_fit_models_time_split(fitted) -> None:
    split = fitted.split
    assert split.base.end < split.calibration.start <= split.calibration.end <= fitted.cutoff
    assert split.base.label_cutoff == split.calibration.start  # base labels known at its end
    assert fitted.train_rows["fit"] > fitted.train_rows["calibration"] > 0
    folds = split.folds
    assert folds and folds[0].start == split.calibration.start
    assert all(a.end < b.start for a, b in itertools.pairwise(folds))
    assert folds[-1].end >= split.calibration.end
    assert all(f.label_cutoff == fitted.cutoff for f in folds)
    assert replace(fitted, versions={"x": "1"}).versions == {"x": "1"}
