# %% [markdown]
# # How well can anyone forecast a quarter in its first week?
#
# A worked analysis (percent-format notebook: open it in Jupyter with jupytext, or run it as a
# script; it has no stored outputs). At week 1 the quarter's own shock (its economy, its team's
# luck) has not shown yet, so every forecast misses by it. How far is that floor, and how close
# to it is the stage-weighted rule?
#
# On a generated CRM (its quarter shocks are known) the stage-weighted forecast at the end of each
# quarter's first week, exactly as the backtest computes it, is set against the quarter's actual,
# and beside it two rescalings of the same rule:
#
# - **learnt**: the rule times its mean miss over the six quarters before (what a method that
#   learns its level from history, as pipecast does, can do with the rule's own number);
# - **hindsight**: the rule times its mean miss over the backtest quarters themselves (it reads
#   the answers: the best any constant rescaling of the rule could have done, not a forecast);
# - **shock-free**: the rule times its miss at a zero shock (the rule's log miss regressed on the
#   generator's quarter shocks over every quarter): a forecaster that knows everything but the
#   quarter's own shock. Its misses are what no week-1 forecast can avoid.
#
# Where the raw rule is already as close as these, it sits at the floor on those quarters, and a
# method that learns from the quarters before cannot be expected to beat it there except by
# luck.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from features.data.calendar import quarter_bounds
from features.data.stages import load_stage_config
from features.pipeline.metrics import compute_metrics
from features.synthetic.generator import generate
from forecasting.backtest import default_quarters
from forecasting.rules import RuleInputs, actual, stage_weighted, week_as_of

N_DEALS = int(os.environ.get("PIPECAST_NOTEBOOK_DEALS", "20000"))
SEED = int(os.environ.get("PIPECAST_NOTEBOOK_SEED", "1"))
OUT = Path(os.environ.get("PIPECAST_NOTEBOOK_OUT", tempfile.gettempdir()))
LEARN_QUARTERS = 6
stages = load_stage_config()
data = generate(N_DEALS, seed=SEED)
tables = data.tables
backtest = default_quarters(tables, 8)

# %% [markdown]
# Every quarter that starts half a year or more into the data, to the last backtest quarter, as
# of the end of its first week (nothing stamped later is read), and what the quarter closed won.

# %%
first = pd.to_datetime(tables.deals["created_at"]).min() + pd.Timedelta(days=182)
quarters = [
    str(q)
    for q in pd.period_range(first, quarter_bounds(backtest[-1])[0], freq="Q")
    if quarter_bounds(str(q))[0] >= first
]
rows = []
for quarter in quarters:
    as_of = week_as_of(quarter, 1)
    metrics = compute_metrics(tables, stages, as_of)
    rows.append(
        {
            "quarter": quarter,
            "rule": stage_weighted(RuleInputs(metrics, pd.DataFrame())),
            "actual": actual(tables, stages, quarter),
        }
    )
table = pd.DataFrame(rows).set_index("quarter")
shocks = data.quarter_shocks.set_index("quarter")["shock"]
table["shock"] = shocks.reindex(table.index)
table["log_miss"] = np.log(table["actual"] / table["rule"])
# learnt: the mean miss of the quarters before (each one over by then), never this quarter's
table["learnt"] = table["rule"] * np.exp(
    table["log_miss"].shift(1).rolling(LEARN_QUARTERS, min_periods=2).mean()
)
in_backtest = table.index.isin(backtest)
table["hindsight"] = table["rule"] * np.exp(table.loc[in_backtest, "log_miss"].mean())
slope, at_zero = np.polyfit(table["shock"], table["log_miss"], 1)
table["shock_free"] = table["rule"] * np.exp(at_zero)
for col in ("rule", "learnt", "hindsight", "shock_free"):
    table[f"{col}_error"] = table[col] / table["actual"] - 1
print(table.round(3).to_string())

# %% [markdown]
# Median absolute % error over the backtest quarters (what the backtest's week-1 column reports).

# %%
errors = ["rule_error", "learnt_error", "hindsight_error", "shock_free_error"]
scores = (table.loc[in_backtest, errors].abs().median() * 100).round(1)
print(f"{N_DEALS} deals, seed {SEED}, backtest quarters {backtest[0]}..{backtest[-1]}, week 1:")
print(f"  stage weighted {scores['rule_error']}%, learnt from the {LEARN_QUARTERS} quarters before "
      f"{scores['learnt_error']}%, hindsight {scores['hindsight_error']}%, shock-free "
      f"{scores['shock_free_error']}%")  # fmt: skip
print(f"  correlation of the rule's miss with the quarter's own shock: "
      f"{table['log_miss'].corr(table['shock']):.2f} (log miss = {at_zero:+.3f} + {slope:.3f} x "
      "shock)")  # fmt: skip
# With independent shocks of the generator's spread, the shock-free forecaster's typical miss:
spread = slope * data.quarter_shocks["shock"].std()
print(f"  a quarter shock of one spread moves the actual by {np.expm1(spread):.1%}; the shock-free "
      f"forecaster's expected median miss: {np.expm1(0.6745 * spread):.1%}")  # fmt: skip

# %% [markdown]
# The misses against the quarters' shocks: the rule's miss follows the quarter's own shock, which
# no one knows in its first week.

# %%
fig, ax = plt.subplots(figsize=(8, 4))
x = np.arange(len(table))
ax.bar(x - 0.27, table["rule_error"] * 100, width=0.27, label="stage weighted")
ax.bar(x, table["learnt_error"] * 100, width=0.27, label="learnt rescaling")
ax.bar(x + 0.27, table["shock_free_error"] * 100, width=0.27, label="shock-free rescaling")
ax.axhline(0, c="grey", lw=0.8)
ax.set_xticks(x, table.index, rotation=60, fontsize=7)
ax.set_ylabel("week-1 forecast vs actual, %")
ax.axvspan(x[in_backtest].min() - 0.5, x[in_backtest].max() + 0.5, color="grey", alpha=0.1)
twin = ax.twinx()
twin.plot(x, table["shock"], "k.-", label="quarter shock (generator)")
twin.set_ylabel("quarter shock, logit")
ax.legend(loc="upper left", fontsize=7)
twin.legend(loc="lower right", fontsize=7)
fig.tight_layout()
path = OUT / "week1_floor.png"
fig.savefig(path, dpi=100)
plt.close(fig)
print(f"plot written to {path}")
