"""Forecast benchmarks, each a ratio against a baseline measured in the same run.

1. Monte Carlo: ``--open-deals`` x ``--scenarios`` against the time numpy takes just to draw the
   same number of float32 uniforms (in the same chunk size); ``--repeats`` interleaved runs of
   each, medians.
2. PyMC fit: first fit (compiles the model) against a fit reusing the compiled model.
3. A full backtest (``--quarters`` x weeks 1, 4, 8 on ``--deals`` generated deals), against one
   forecast; skipped with ``--no-backtest``.

    python benchmarks/bench_forecast.py --open-deals 10000 --scenarios 10000 --deals 20000
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from typing import Any

import numpy as np
import pandas as pd

warnings.filterwarnings("ignore")


def _posterior(n_draws: int, teams: list[str]) -> Any:
    from forecasting.simulate import Posterior

    rng = np.random.default_rng(0)
    draws = {
        name: rng.normal(0.0, 0.05, n_draws) + mean
        for name, mean in {
            "a_w": -0.4, "b_w": 0.9, "a_t": 0.1, "b_t": 0.9, "c_w": 0.0, "c_t": -0.2,
            "sd_team_w": 0.25, "sd_seg_w": 0.1,
            "sd_quarter_w": 0.2, "sd_quarter_t": 0.5, "nb_rate": 2.6, "nb_alpha": 60.0,
            "nb_win": -4.4, "sd_nb_win": 0.7, "nb_amount_mu": 10.5, "nb_amount_sd": 1.0,
        }.items()
    }  # fmt: skip
    draws["quarter_w"] = rng.normal(0, 0.2, (n_draws, 7))
    draws["quarter_t"] = rng.normal(0, 0.5, (n_draws, 7))
    draws["team_w"] = rng.normal(0, 0.25, (n_draws, len(teams)))
    draws["seg_w"] = rng.normal(0, 0.1, (n_draws, 3))
    draws["disc_mu"] = rng.normal(-0.1, 0.01, (n_draws, 4))
    draws["disc_sd"] = np.abs(rng.normal(0.1, 0.01, (n_draws, 4)))
    draws["nb_season"] = rng.normal(0, 0.1, (n_draws, 4))
    levels = {"teams": teams, "segments": ["SMB", "Mid-Market", "Enterprise"],
              "stages": ["qualification", "needs_analysis", "proposal", "negotiation"],
              "quarters": []}  # fmt: skip
    return Posterior(draws, levels)


def bench_simulator(n_deals: int, n_scenarios: int, repeats: int = 5) -> dict[str, float]:
    from forecasting.simulate import NewBusiness, SimOptions, simulate

    rng = np.random.default_rng(1)
    teams = [f"team{i}" for i in range(20)]
    p_win = rng.uniform(0.05, 0.9, n_deals)
    deals = pd.DataFrame(
        {
            "deal_id": [f"d{i}" for i in range(n_deals)],
            "owner": [f"rep{i % 140}" for i in range(n_deals)],
            "team": [teams[i % 20] for i in range(n_deals)],
            "segment": rng.choice(["SMB", "Mid-Market", "Enterprise"], n_deals),
            "stage": rng.choice(
                ["qualification", "needs_analysis", "proposal", "negotiation"], n_deals
            ),
            "amount": rng.lognormal(11.5, 1.0, n_deals),
            "p_win": p_win,
            "p_won_this_quarter": p_win * rng.uniform(0.05, 0.9, n_deals),
        }
    )
    post = _posterior(500, teams)
    won = pd.DataFrame({"owner": ["rep0"], "team": ["team0"], "amount": [1e6]})
    options = SimOptions(n_scenarios=n_scenarios, seed=0)
    simulate(post, deals.head(200), won_so_far=won, new_business=NewBusiness(40.0, 3),  # warm-up
             options=SimOptions(n_scenarios=500))  # fmt: skip
    gen = np.random.default_rng(0)
    total = n_deals * n_scenarios
    chunk = options.chunk_elements

    def run_sim() -> Any:
        return simulate(post, deals, won_so_far=won, new_business=NewBusiness(40.0, 3),
                        options=options)  # fmt: skip

    def run_base() -> None:
        for i in range(0, total, chunk):
            gen.random(min(chunk, total - i), dtype=np.float32)

    # Interleaved repeats, medians of each: a shared machine's noise hits both alike.
    sim_times, base_times = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        sim = run_sim()
        sim_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        run_base()
        base_times.append(time.perf_counter() - started)
    sim_s, base_s = float(np.median(sim_times)), float(np.median(base_times))
    assert np.isfinite(sim.company).all()
    return {"simulate_s": sim_s, "uniforms_s": base_s, "ratio": sim_s / base_s}


def bench_fit(n_deals: int) -> dict[str, float]:
    from features.data.stages import load_stage_config
    from features.synthetic.generator import generate
    from forecasting.history import ScorerCache, build_fit_data
    from forecasting.model import ModelConfig, fit
    from forecasting.rules import week_as_of
    from forecasting.scoring import ModelScorers

    tables, stages = generate(n_deals, 1).tables, load_stage_config()
    cache = ScorerCache(ModelScorers())
    started = time.perf_counter()
    first_data = build_fit_data(tables, stages, week_as_of("2025Q1", 4), cache)
    history_s = time.perf_counter() - started
    second_data = build_fit_data(tables, stages, week_as_of("2025Q2", 4), cache)
    config = ModelConfig()
    first = fit(first_data, config)
    second = fit(second_data, config)
    assert not first.diagnostics.compiled_reused and second.diagnostics.compiled_reused
    return {
        "history_s": history_s,
        "first_fit_s": first.diagnostics.seconds,
        "reused_fit_s": second.diagnostics.seconds,
        "ratio_first_to_reused": first.diagnostics.seconds / second.diagnostics.seconds,
        "divergences": float(second.diagnostics.divergences),
    }


def bench_backtest(n_deals: int, n_quarters: int) -> dict[str, float]:
    from features.data.stages import load_stage_config
    from features.synthetic.generator import generate
    from forecasting.backtest import default_quarters, run_backtest
    from forecasting.scoring import ModelScorers

    tables, stages = generate(n_deals, 1).tables, load_stage_config()
    quarters = default_quarters(tables, n_quarters)
    started = time.perf_counter()
    one = run_backtest(tables, stages, quarters=quarters[-1:], weeks=[4],
                       factory=ModelScorers())  # fmt: skip
    one_s = time.perf_counter() - started
    started = time.perf_counter()
    result = run_backtest(tables, stages, quarters=quarters, weeks=[1, 4, 8],
                          factory=ModelScorers())  # fmt: skip
    full_s = time.perf_counter() - started
    assert one.rows and result.rows
    return {
        "one_forecast_s": one_s,
        "backtest_s": full_s,
        "quarter_weeks": float(len(quarters) * 3),
        "ratio_to_one_forecast": full_s / one_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--open-deals", type=int, default=10_000)
    parser.add_argument("--scenarios", type=int, default=10_000)
    parser.add_argument(
        "--deals", type=int, default=20_000, help="generated deals for fit/backtest"
    )
    parser.add_argument("--quarters", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5, help="simulator runs (medians)")
    parser.add_argument("--no-fit", action="store_true")
    parser.add_argument("--no-backtest", action="store_true")
    args = parser.parse_args()
    out: dict[str, dict[str, float]] = {}
    s = out["simulator"] = bench_simulator(args.open_deals, args.scenarios, args.repeats)
    print(f"simulate {args.open_deals:,} deals x {args.scenarios:,} scenarios: "
          f"{s['simulate_s']:.2f}s; drawing as many uniforms: {s['uniforms_s']:.2f}s "
          f"(medians of {args.repeats}); "
          f"ratio to baseline {s['ratio']:.2f}x", flush=True)  # fmt: skip
    if not args.no_fit:
        f = out["fit"] = bench_fit(args.deals)
        print(f"PyMC fit on {args.deals:,} deals' history: first {f['first_fit_s']:.1f}s "
              f"(compiles), reused {f['reused_fit_s']:.1f}s; ratio first / reused "
              f"{f['ratio_first_to_reused']:.1f}x", flush=True)  # fmt: skip
    if not args.no_backtest:
        b = out["backtest"] = bench_backtest(args.deals, args.quarters)
        print(
            f"backtest {b['quarter_weeks']:.0f} quarter-weeks on {args.deals:,} deals: "
            f"{b['backtest_s']:.0f}s; one forecast (with fits and compile) "
            f"{b['one_forecast_s']:.0f}s; ratio {b['ratio_to_one_forecast']:.1f}x",
            flush=True,
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
