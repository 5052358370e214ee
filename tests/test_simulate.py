"""The Monte Carlo simulator: totals add up, probabilities come out as given, seeds repeat."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from forecasting.simulate import NewBusiness, Posterior, SimOptions, simulate


def _posterior(n: int = 50, **over: float) -> Posterior:
    """A posterior that passes the scorer's probabilities through unchanged (a=0, b=1)."""
    base = {
        "a_w": 0.0, "b_w": 1.0, "a_t": 0.0, "b_t": 1.0, "c_w": 0.0, "c_t": 0.0,
        "sd_team_w": 0.0, "sd_seg_w": 0.0,
        "sd_quarter_w": 0.0, "sd_quarter_t": 0.0, "nb_rate": -50.0, "nb_alpha": 10.0,
        "nb_win": -2.0, "sd_nb_win": 0.0, "nb_amount_mu": 10.0, "nb_amount_sd": 0.1,
    }  # fmt: skip
    base.update(over)
    draws = {k: np.full(n, v) for k, v in base.items()}
    # the forecast quarter (the last level) has its own effect in each draw
    z = np.random.default_rng(9).standard_normal((n, 2, 2))
    draws["quarter_w"] = z[:, 0] * base["sd_quarter_w"]
    draws["quarter_t"] = z[:, 1] * base["sd_quarter_t"]
    draws["team_w"] = np.zeros((n, 2))
    draws["seg_w"] = np.zeros((n, 1))
    draws["disc_mu"] = np.zeros((n, 2))
    draws["disc_sd"] = np.zeros((n, 2))
    draws["nb_season"] = np.zeros((n, 4))
    levels = {"teams": ["north", "south"], "segments": ["mid"], "stages": ["a", "b"],
              "quarters": ["2024Q1", "2024Q2"]}  # fmt: skip
    return Posterior(draws, levels)


def _deals(p_win: list[float], p_q: list[float], amounts: list[float]) -> pd.DataFrame:
    n = len(p_win)
    return pd.DataFrame(
        {
            "deal_id": [f"d{i}" for i in range(n)],
            "owner": [f"rep{i % 3}" for i in range(n)],
            "team": ["north" if i % 3 < 2 else "south" for i in range(n)],
            "segment": "mid",
            "stage": ["a" if i % 2 else "b" for i in range(n)],
            "amount": amounts,
            "p_win": p_win,
            "p_won_this_quarter": p_q,
        }
    )


NO_WON = pd.DataFrame({"owner": pd.Series([], dtype=str), "team": pd.Series([], dtype=str),
                       "amount": pd.Series([], dtype=float)})  # fmt: skip
NB = NewBusiness(days_left=60.0, season=0)


def test_certain_deals_are_always_won_and_hopeless_never():
    deals = _deals([0.9999, 0.0001, 0.9999], [0.9999, 0.0001, 0.9999], [100.0, 1e6, 50.0])
    sim = simulate(
        _posterior(),
        deals,
        won_so_far=NO_WON,
        new_business=NB,
        options=SimOptions(n_scenarios=2000),
    )
    assert np.mean(np.isclose(sim.company, 150.0)) > 0.99
    assert sim.p_won_in_quarter[0] > 0.99 and sim.p_won_in_quarter[1] < 0.01


def test_mean_matches_the_probabilities_and_totals_add_up():
    rng = np.random.default_rng(3)
    n = 400
    p_win = rng.uniform(0.05, 0.95, n)
    p_q = p_win * rng.uniform(0.1, 1.0, n)
    amounts = rng.lognormal(11, 1, n)
    won = pd.DataFrame({"owner": ["rep0", "rep9"], "team": ["north", "east"], "amount": [7e5, 3e5]})
    sim = simulate(
        _posterior(),
        _deals(list(p_win), list(p_q), list(amounts)),
        won_so_far=won,
        new_business=NB,
        options=SimOptions(n_scenarios=20_000, seed=1),
    )
    expected = float((amounts * p_q).sum()) + 1e6
    sd = float(np.sqrt((amounts**2 * p_q * (1 - p_q)).sum()))
    assert abs(sim.company.mean() - expected) < 4 * sd / np.sqrt(len(sim.company))
    assert np.allclose(sim.owners.sum(axis=1), sim.company)
    assert np.allclose(sim.teams.sum(axis=1), sim.company)
    assert sim.owners["rep9"].iloc[0] == pytest.approx(3e5)  # won so far, no open deal
    assert np.allclose(sim.p_won_in_quarter, p_q, atol=0.02)


def test_quarter_effect_widens_the_distribution_but_not_the_centre_much():
    n = 300
    deals = _deals([0.5] * n, [0.4] * n, [1000.0] * n)
    kw: dict[str, Any] = dict(won_so_far=NO_WON, new_business=NB)
    calm = simulate(_posterior(), deals, options=SimOptions(n_scenarios=8000), **kw)
    shaky = simulate(
        _posterior(sd_quarter_w=0.8, sd_quarter_t=0.8),
        deals,
        options=SimOptions(n_scenarios=8000),
        **kw,
    )
    off = simulate(
        _posterior(sd_quarter_w=0.8, sd_quarter_t=0.8),
        deals,
        options=SimOptions(n_scenarios=8000, quarter_effect=False),
        **kw,
    )
    assert shaky.company.std() > 3 * calm.company.std()
    assert off.company.std() == pytest.approx(calm.company.std(), rel=0.15)


def test_same_seed_same_scenarios_other_seed_others():
    deals = _deals([0.5] * 20, [0.3] * 20, [10.0] * 20)
    kw: dict[str, Any] = dict(won_so_far=NO_WON, new_business=NB)
    a = simulate(_posterior(), deals, options=SimOptions(n_scenarios=500, seed=4), **kw)
    b = simulate(_posterior(), deals, options=SimOptions(n_scenarios=500, seed=4), **kw)
    c = simulate(_posterior(), deals, options=SimOptions(n_scenarios=500, seed=5), **kw)
    assert np.array_equal(a.company, b.company)
    assert not np.array_equal(a.company, c.company)


def test_chunking_does_not_change_the_distribution():
    deals = _deals([0.6] * 50, [0.5] * 50, [10.0] * 50)
    kw: dict[str, Any] = dict(won_so_far=NO_WON, new_business=NB)
    big = simulate(_posterior(), deals, options=SimOptions(n_scenarios=5000), **kw)
    small = simulate(_posterior(), deals, options=SimOptions(n_scenarios=5000, chunk_elements=64),
                     **kw)  # fmt: skip
    assert small.company.mean() == pytest.approx(big.company.mean(), rel=0.02)


def test_pulling_in_slipping_deals_raises_revenue():
    deals = _deals([0.8] * 40, [0.2] * 40, [10.0] * 40)
    kw: dict[str, Any] = dict(
        won_so_far=NO_WON, new_business=NB, options=SimOptions(n_scenarios=2000)
    )
    base = simulate(_posterior(), deals, **kw)
    pulled = simulate(_posterior(), deals, pull_in=np.ones(40, dtype=bool), **kw)
    assert pulled.company.mean() == pytest.approx(0.8 * 400, rel=0.05)
    assert base.company.mean() == pytest.approx(0.2 * 400, rel=0.1)


def test_new_business_adds_revenue_and_unseen_team_gets_an_effect():
    deals = _deals([0.5] * 6, [0.5] * 6, [10.0] * 6).assign(team="west")  # not in history
    post = _posterior(nb_rate=0.0, nb_win=0.0, sd_team_w=0.5)
    sim = simulate(
        post, deals, won_so_far=NO_WON, new_business=NB, options=SimOptions(n_scenarios=3000)
    )
    # e^0 arrivals a day x 60 days, half won, e^10 each: about 30 x 22,000
    assert sim.new_business.mean() == pytest.approx(30 * np.exp(10.005), rel=0.1)
    assert np.isfinite(sim.company).all()


def test_tracked_deals_report_their_own_outcomes():
    deals = _deals([0.999, 0.001, 0.5], [0.999, 0.001, 0.5], [1.0, 1.0, 1.0])
    sim = simulate(
        _posterior(),
        deals,
        won_so_far=NO_WON,
        new_business=NB,
        options=SimOptions(n_scenarios=1000),
        track=np.array([1, 0]),
    )
    assert sim.tracked[:, 1].mean() > 0.99 and sim.tracked[:, 0].mean() < 0.01
