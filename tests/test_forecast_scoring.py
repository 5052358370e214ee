"""The forecast's deal scorers (training's models per cut-off, the stage-history fallback), the
served models' guard and the on-disk forecast cache."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from features.data.calendar import quarter_bounds
from features.data.stages import StageKind, load_stage_config
from features.errors import NotEnoughDataError
from features.pipeline.metrics import compute_metrics
from features.synthetic.generator import generate
from forecasting.cache import ForecastCache, cache_key
from forecasting.forecast import ForecastEngine
from forecasting.history import (
    P_CLIP,
    ScorerCache,
    build_fit_data,
    scorer_cutoff,
    scorer_warmup_end,
)
from forecasting.model import (
    PARAMS,
    Diagnostics,
    FittedForecastModel,
    ModelConfig,
    ModelMismatchError,
)
from forecasting.scoring import (
    FAST_RECIPE,
    MODELS,
    STAGE_HISTORY,
    ModelScorers,
    StageHistoryScorer,
    fit_stage_history,
)
from tests.factory import deal
from tests.factory import tables as hand_tables
from training.scoring import open_deal_rows

CFG = load_stage_config()
CUTOFF = pd.Timestamp("2024-12-31 23:59:59")
AS_OF = pd.Timestamp("2025-01-20 23:59:59")


@pytest.fixture(scope="module")
def generated():
    return generate(1500, 3).tables


@pytest.fixture(scope="module")
def scorers(generated):
    factory = ModelScorers()
    factory(generated, CFG, CUTOFF)
    return factory


def _flip_after(tables, when: pd.Timestamp):
    deals = tables.deals.copy()
    later = pd.to_datetime(deals["closed_at"]) > when
    deals.loc[later, "outcome"] = deals.loc[later, "outcome"].map({"won": "lost", "lost": "won"})
    return dataclasses.replace(tables, deals=deals), int(later.sum())


def test_models_score_the_pipeline_and_are_fitted_once_per_cutoff(generated, scorers):
    first = scorers(generated, CFG, CUTOFF)
    assert scorers(generated, CFG, CUTOFF) is first  # cached, not refitted
    assert scorers.methods[CUTOFF] == MODELS
    assert getattr(first, "cutoff", None) == CUTOFF
    scored = first.score(generated, CFG, AS_OF)
    assert scored["deal_id"].is_unique and len(scored) > 50
    assert scored["p_win"].between(0, 1).all()
    assert (scored["p_won_this_quarter"] <= scored["p_win"] + 1e-9).all()


def test_models_fitted_at_a_cutoff_never_see_a_later_outcome(generated, scorers):
    # outcomes after the scoring date: neither the fit (at CUTOFF) nor the scoring may see them
    flipped, n = _flip_after(generated, AS_OF)
    assert n > 100
    other = ModelScorers()(flipped, CFG, CUTOFF)
    a = scorers(generated, CFG, CUTOFF).score(generated, CFG, AS_OF).sort_values("deal_id")
    b = other.score(flipped, CFG, AS_OF).sort_values("deal_id")
    assert list(a["deal_id"]) == list(b["deal_id"])
    assert np.allclose(a["p_win"].to_numpy(), b["p_win"].to_numpy())
    assert np.allclose(a["p_won_this_quarter"].to_numpy(), b["p_won_this_quarter"].to_numpy())
    # nor how soon each deal is expected won (the early pace's yardstick), stand-in included
    days = np.array([7, 28, 63])
    pace_a = scorers(generated, CFG, CUTOFF).won_within(generated, CFG, AS_OF, days)
    pace_b = other.won_within(flipped, CFG, AS_OF, days)
    assert np.allclose(pace_a.sort_index().to_numpy(), pace_b.sort_index().to_numpy())
    stand_a = fit_stage_history(generated, CFG, CUTOFF).won_within(generated, CFG, AS_OF, days)
    stand_b = fit_stage_history(flipped, CFG, CUTOFF).won_within(flipped, CFG, AS_OF, days)
    assert np.allclose(stand_a.sort_index().to_numpy(), stand_b.sort_index().to_numpy())


def test_scorers_say_how_soon_they_expect_each_deal_won(generated, scorers):
    """P(won within d days): what a quarter's early pace is measured against."""
    days = np.array([0, 7, 28, 91])
    for scorer in (scorers(generated, CFG, CUTOFF), fit_stage_history(generated, CFG, CUTOFF)):
        scored = scorer.score(generated, CFG, AS_OF).set_index("deal_id")
        within = scorer.won_within(generated, CFG, AS_OF, days)
        assert sorted(within.index) == sorted(scored.index)
        p = within.to_numpy()
        assert (np.diff(p, axis=1) >= -1e-9).all()  # never likelier sooner
        assert (p <= scored.loc[within.index, "p_win"].to_numpy()[:, None] + 1e-9).all()
        assert p[:, -1].sum() > 2 * p[:, 1].sum() > 0


def test_the_forecast_scorers_sums_do_not_step_with_the_days_left(generated, scorers):
    """The same deals, the same scorer: the time left moves P(won this quarter) only one way
    (less time, fewer closings) and P(win) not at all. A tree feature on the days left made one
    quarter's in-quarter sum step by up to 12% within a week, up or down (README, version 11)."""
    scorer = scorers(generated, CFG, CUTOFF)
    rows = open_deal_rows(
        generated, CFG, AS_OF, custom=scorer.custom, static_custom=scorer.config.static_custom
    )
    amount = rows["amount"].fillna(0).to_numpy()
    wins, sums = [], []
    for days_left in (91.0, 84.0, 77.0, 63.0, 28.0):
        moved = rows.assign(days_left_in_quarter=days_left)
        p_win = scorer.predict_win(moved)
        wins.append(p_win)
        sums.append(float(amount @ scorer.predict_quarter(moved, p_win)))
    for p_win in wins[1:]:
        assert np.allclose(p_win, wins[0])
    assert (np.diff(sums) <= 1e-6).all()
    assert sums[-1] < sums[0]


def test_too_little_history_falls_back_to_stage_history_and_says_so(generated):
    factory = ModelScorers({**FAST_RECIPE, "min_closed_deals": 10**9})
    scorer = factory(generated, CFG, CUTOFF)
    assert isinstance(scorer, StageHistoryScorer) and factory.methods[CUTOFF] == STAGE_HISTORY
    cache = ScorerCache(factory)
    cache.for_quarter(generated, CFG, "2025Q1")
    assert cache.method("2025Q1") == STAGE_HISTORY
    strict = ModelScorers({**FAST_RECIPE, "min_closed_deals": 10**9}, fallback=None)
    with pytest.raises(NotEnoughDataError):
        strict(generated, CFG, CUTOFF)


@dataclasses.dataclass
class _Served:
    cutoff: pd.Timestamp

    def score(self, tables, stages, as_of):  # pragma: no cover - never reached here
        raise AssertionError


def test_served_models_score_only_dates_on_or_after_their_cutoff(generated):
    engine = ForecastEngine(
        generated, CFG, ScorerCache(fit_stage_history), served=_Served(pd.Timestamp("2025-02-01"))
    )
    assert engine.served_for(pd.Timestamp("2025-01-20")) is None  # fitted later: seen the future
    assert engine.served_for(pd.Timestamp("2025-02-10")) is engine.served


# --- forecast cache ------------------------------------------------------------------------------
def _fitted(config: ModelConfig) -> FittedForecastModel:
    import arviz as az

    rng = np.random.default_rng(0)
    post = {name: rng.normal(size=(2, 20)) for name in PARAMS}
    diag = Diagnostics(0, 1.01, 400.0, 20, 2, 1.0, False)
    levels = {"quarters": ["2024Q1"], "teams": ["a"], "segments": ["s"], "stages": ["x"]}
    return FittedForecastModel(az.from_dict(posterior=post), config, diag, levels, "2025-01-20")


def test_forecast_cache_round_trip_and_keys(generated, tmp_path):
    cfg = ModelConfig(draws=100, tune=100)
    key = cache_key(generated, AS_OF, cfg, "models")
    assert key == cache_key(generated, AS_OF, cfg, "models")
    others = {
        cache_key(generated, AS_OF + pd.Timedelta(days=1), cfg, "models"),
        cache_key(generated, AS_OF, ModelConfig(draws=100, tune=100, seed=1), "models"),
        cache_key(generated, AS_OF, cfg, "stage-history"),
        cache_key(_flip_after(generated, CUTOFF)[0], AS_OF, cfg, "models"),
    }
    assert key not in others and len(others) == 4
    cache = ForecastCache(tmp_path, key)
    assert cache.load(cfg) is None
    scored = pd.DataFrame({"deal_id": ["a", "b"], "p_win": [0.2, 0.7]})
    cache.save((_fitted(cfg), {"nb_share": {"team": {"a": 1.0}}}), scored, {"scorer": "models"})
    (fitted, extra), back, notes = cache.load(cfg)  # type: ignore[misc]
    assert fitted.config_hash == cfg.config_hash() and extra["nb_share"]["team"] == {"a": 1.0}
    assert back.equals(scored) and notes == {"scorer": "models"}
    with pytest.raises(ModelMismatchError, match="refit"):
        cache.load(ModelConfig(draws=100, tune=100, seed=1))


def test_early_rows_measure_each_quarters_pace_against_its_own_scorer(generated):
    """The forecast quarter's pipeline at its start carries its scorer's P(won by the forecast's
    day of the quarter): what its early wins are weighed against."""
    cache = ScorerCache(fit_stage_history)
    fd = build_fit_data(generated, CFG, AS_OF, cache, n_quarters=3)
    start = pd.Timestamp("2025-01-01")
    day = 20  # AS_OF is the end of the quarter's 20th day
    scorer = cache.for_quarter(generated, CFG, "2025Q1")
    assert scorer is not None
    expected = scorer.won_within(generated, CFG, start, np.array([day]))[day].to_numpy()
    now = fd.e_quarter == fd.current
    p_by = 1 / (1 + np.exp(-fd.e_x_pace[now]))
    assert fd.e_weight[now].sum() == len(expected)
    got = (fd.e_weight[now].sum(axis=1) * p_by).sum()
    assert got == pytest.approx(np.clip(expected, P_CLIP, 1 - P_CLIP).sum(), rel=2e-3)
    # and what it has won by then, nothing later
    closed = pd.to_datetime(generated.deals.set_index("deal_id")["closed_at"])
    assert fd.e_weight[now, 0].sum() <= ((closed > start) & (closed <= AS_OF)).sum()


def test_each_quarter_says_how_far_its_scorer_leans_from_the_stage_rule(generated):
    """Per quarter, log(its scorer's expected value won within it / the stage rule's) for its
    pipeline at its start, centred on the history quarters; known at the quarter's start, so
    outcomes decided after it change nothing."""
    cache = ScorerCache(fit_stage_history)
    fd = build_fit_data(generated, CFG, AS_OF, cache, n_quarters=3)
    raw = []
    for q in fd.quarters:
        start = quarter_bounds(q)[0]
        scorer = cache.for_quarter(generated, CFG, q)
        assert scorer is not None
        scored = scorer.score(generated, CFG, start)
        mine = (scored["amount"].fillna(0.0) * scored["p_won_this_quarter"]).sum()
        rule = compute_metrics(generated, CFG, start).weighted.closing_this_quarter
        raw.append(np.log(mine / rule))
    raw_gap = np.array(raw)
    np.testing.assert_allclose(fd.q_gap, raw_gap - raw_gap[:-1].mean(), rtol=1e-9)
    assert abs(fd.q_gap[:-1].mean()) < 1e-12 and np.ptp(fd.q_gap) > 0.01
    flipped, n = _flip_after(generated, quarter_bounds(fd.quarters[-1])[0])
    assert n > 0
    again = build_fit_data(flipped, CFG, AS_OF, ScorerCache(fit_stage_history), n_quarters=3)
    np.testing.assert_array_equal(again.q_gap, fd.q_gap)


@pytest.mark.parametrize("kept", [("amount", "expected_close_date"), ()])
def test_the_lean_is_known_at_the_quarter_start_on_exports_that_log_few_fields(generated, kept):
    """Real exports overwrite closed deals' rows and log few fields (or none). Logging amount
    and close date, the lean is measured from them as they stood at each quarter's start;
    logging none, no past amount or close date is known, so no lean is measured and every
    quarter reads as average. Either way outcomes decided after the start change nothing."""
    fh = generated.field_history
    bare = dataclasses.replace(generated, field_history=fh[fh["field"].isin(kept)])
    fd = build_fit_data(bare, CFG, AS_OF, ScorerCache(fit_stage_history), n_quarters=3)
    assert np.isfinite(fd.q_gap).all()
    assert (np.ptp(fd.q_gap) > 0.01) == bool(kept)
    flipped, n = _flip_after(bare, quarter_bounds(fd.quarters[-1])[0])
    assert n > 0
    again = build_fit_data(flipped, CFG, AS_OF, ScorerCache(fit_stage_history), n_quarters=3)
    np.testing.assert_array_equal(again.q_gap, fd.q_gap)


def test_a_stage_rule_without_probabilities_leaves_every_quarter_average(generated):
    """A real configuration may give its open stages no win probability (custom picklists):
    the rule then expects nothing, no quarter's lean can be measured, and each reads as an
    average quarter (``q_gap`` 0) instead of an infinite or missing value."""
    zero = CFG.model_copy(
        update={
            "stages": [
                s.model_copy(update={"win_probability": 0.0}) if s.kind is StageKind.OPEN else s
                for s in CFG.stages
            ]
        }
    )
    fd = build_fit_data(generated, zero, AS_OF, ScorerCache(fit_stage_history), n_quarters=3)
    np.testing.assert_array_equal(fd.q_gap, np.zeros(len(fd.quarters)))


def test_the_warm_up_is_when_the_first_deals_had_mostly_closed_as_known_then():
    """A scorer fitted soon after the data starts learnt only from the deals that had closed
    fast. The warm-up ends when 90% of the first 91 days' deals closed by the forecast date had
    closed; what closes after the forecast date is not read."""
    deals = [
        deal(f"d{i}", "2022-01-03", closed_at=f"2022-{i + 2:02d}-01", outcome="lost")
        for i in range(10)
    ]  # closed 2022-02-01 .. 2022-11-01
    deals.append(deal("late", "2022-06-01", closed_at="2023-06-01", outcome="won"))
    data = hand_tables(deals)
    warm = scorer_warmup_end(data, pd.Timestamp("2023-12-31"))
    assert pd.Timestamp("2022-10-01") <= warm <= pd.Timestamp("2022-10-31")  # 9 of 10 closed
    # as of an earlier date, 90% of what had closed by then
    assert scorer_warmup_end(data, pd.Timestamp("2022-05-15")) <= pd.Timestamp("2022-05-01")
    # nothing of the first 91 days closed yet: the data's start
    assert scorer_warmup_end(data, pd.Timestamp("2022-01-20")) == pd.Timestamp("2022-01-03")


def test_the_forecast_names_history_quarters_scored_in_the_warm_up(generated):
    """A RevOps reader is told which history quarters were scored by models fitted before the
    warm-up ended (their scorers over-promise); later forecasts, with no such quarter, name
    none."""
    engine = ForecastEngine(generated, CFG, ScorerCache(fit_stage_history))
    early = ["2022Q2", "2022Q3", "2022Q4", "2023Q1", "2023Q2"]
    as_of = pd.Timestamp("2023-05-10 23:59:59")
    notes = engine.scorer_notes(as_of, early)
    warm = pd.Timestamp(notes["warmup_end"])
    assert warm == scorer_warmup_end(generated, as_of)
    start = pd.to_datetime(generated.deals["created_at"]).min()
    assert start + pd.Timedelta(days=180) < warm < start + pd.Timedelta(days=450)
    cold = notes["history_in_warmup"]
    assert cold and cold == [q for q in early[:-1] if scorer_cutoff(q) < warm]
    later = ["2024Q3", "2024Q4", "2025Q1", "2025Q2"]
    assert engine.scorer_notes(pd.Timestamp("2025-05-10"), later)["history_in_warmup"] == []
