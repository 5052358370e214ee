# %% [markdown]
# # "What will we close this quarter, and how sure are we?"
#
# A sales manager's question, walked end to end on the demo data (percent-format notebook: open
# it in Jupyter with jupytext, or run it as a script; it is stored without outputs):
#
# 1. **load** a CRM export into the store, as `pipecast load` does;
# 2. **forecast** the quarter as of a date inside it: pipecast's distribution beside the
#    stage-weighted, commit, best-case and historical-conversion forecasts;
# 3. **why**: the deals that move the P50 most, and the distribution if the deals the reps expect
#    this quarter all closed in time;
# 4. **backtest**: would we have believed these numbers in past quarters?

# %%
import os
import tempfile
from pathlib import Path

import pandas as pd

from features.data.importer import read_export
from features.data.stages import load_stage_config
from features.data.store import Store
from features.synthetic.generator import generate, write_dataset
from forecasting.backtest import default_quarters, run_backtest
from forecasting.forecast import ForecastEngine, run_forecast
from forecasting.history import ScorerCache
from forecasting.model import ModelConfig
from forecasting.plots import plot_backtest, plot_forecast
from forecasting.scoring import ModelScorers
from forecasting.simulate import SimOptions

N_DEALS = int(os.environ.get("PIPECAST_NOTEBOOK_DEALS", "3000"))
OUT = Path(os.environ.get("PIPECAST_NOTEBOOK_OUT", tempfile.gettempdir()))
AS_OF = pd.Timestamp("2025-08-20 23:59:59")  # week 8 of 2025Q3, a quarter the data has finished

# %% [markdown]
# ## 1. Load
# The demo CRM is generated, written as files and imported like any export.

# %%
stages = load_stage_config()
export = OUT / "export"
write_dataset(generate(N_DEALS, seed=7), export, "parquet")
with Store(OUT / "demo.duckdb", read_only=False) as writer:
    writer.load(read_export(export, stages=stages).tables)
with Store(OUT / "demo.duckdb") as store:
    tables = store.tables()
print(f"{len(tables.deals):,} deals loaded")

# %% [markdown]
# ## 2. Forecast
# The Bayesian layer is fitted on the six previous quarters rebuilt at the same point of the
# quarter, their deals scored by the win and slip models refitted before each of them (the
# same fits, cached per cut-off, serve the backtest below). Small sampling settings keep the
# notebook quick.

# %%
config = ModelConfig(draws=150, tune=150, min_ess=50)
scorers = ModelScorers()
engine = ForecastEngine(tables, stages, ScorerCache(scorers), config, SimOptions(n_scenarios=2000))
fc = run_forecast(engine, AS_OF, explain=True)
d = fc.pipecast
print(
    f"{fc.quarter} as of {AS_OF:%Y-%m-%d}: won so far {fc.won_so_far:,.0f}, target {fc.target:,.0f}"
)
print(
    f"pipecast P10 {d.p10:,.0f}  P50 {d.p50:,.0f}  P90 {d.p90:,.0f}  P(>= target) {d.p_target:.0%}"
)
for name, value in fc.rules.items():
    print(f"{name:>22}: {value:,.0f}" if value is not None else f"{name:>22}: n/a")
print(f"{'actual':>22}: {fc.actual:,.0f}")
path = plot_forecast(fc, OUT / "manager-forecast.png")
print(f"plot written to {path}")

# %% [markdown]
# ## 3. Why
# A driver's swing is the P50 of the scenarios where the deal is won this quarter minus the P50
# of those where it is not: the deals to talk about in the forecast call.

# %%
for x in fc.drivers[:5]:
    print(f"{x.deal_id} ({x.owner}, {x.stage}): {x.amount:,.0f} at P={x.p_won_this_quarter:.0%}"
          f" moves the P50 by {x.swing:,.0f}")  # fmt: skip
if fc.pulled_in is not None:
    print(
        f"pulling in the {fc.pulled_in_deals} deals expected this quarter: "
        f"P50 {fc.pulled_in.p50:,.0f} (+{fc.pulled_in.p50 - d.p50:,.0f})"
    )

# %% [markdown]
# ## 4. Backtest
# One past quarter at week 4 here (the README has the full 8-quarter, 3-week figures).

# %%
result = run_backtest(
    tables, stages, quarters=default_quarters(tables, 1), weeks=[4],
    factory=scorers, config=config, options=SimOptions(n_scenarios=2000),
)  # fmt: skip
frame = result.frame()
print(frame[["quarter", "week", "method", "point", "actual", "abs_pct_error", "covered"]])
path = plot_backtest(result, OUT / "manager-backtest.png")
print(f"plot written to {path}")
