# %% [markdown]
# # Coverage at the start of a quarter against what the quarter brought
#
# A worked analysis (percent-format notebook: open it in Jupyter with jupytext, or run it as a
# script; it has no stored outputs). It asks the seed's question — "is 3-5x coverage enough?" —
# of a generated CRM with a known truth: at the first day of each quarter, what did the pipeline
# look like (point in time), and what was won by the quarter's end?
#
# The weighted-pipeline line is the seed's stage-weighted forecast; comparing it with the actual
# is the first, naive backtest that later forecasting work must beat.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from features.data.calendar import quarter_bounds, to_timestamp
from features.data.stages import load_stage_config
from features.pipeline.metrics import compute_metrics
from features.synthetic.generator import generate

N_DEALS = int(os.environ.get("PIPECAST_NOTEBOOK_DEALS", "4000"))
OUT = Path(os.environ.get("PIPECAST_NOTEBOOK_OUT", tempfile.gettempdir()))
stages = load_stage_config()
tables = generate(N_DEALS, seed=11).tables

# %% [markdown]
# For each quarter from 2023 on, the metrics as of the end of the quarter's first day (nothing
# stamped later is read), and the value actually won inside the quarter.

# %%
rows = []
for quarter in [f"{y}Q{q}" for y in (2023, 2024, 2025) for q in (1, 2, 3, 4)]:
    start, end = quarter_bounds(quarter)
    m = compute_metrics(tables, stages, to_timestamp(start.date()))
    # the outcome, read only to score the forecast after the fact
    deals = tables.deals
    won = deals[(deals["outcome"] == "won") & deals["closed_at"].between(start, end)]
    rows.append(
        {
            "quarter": quarter,
            "target": m.coverage.target,
            "closing": m.coverage.pipeline_closing,
            "coverage": m.coverage.ratio,
            "stage_weighted": m.weighted.closing_this_quarter,
            "won": won["amount"].sum(),
        }
    )
table = pd.DataFrame(rows).set_index("quarter")
table["won_vs_target"] = table["won"] / table["target"]
table["weighted_error"] = table["stage_weighted"] / table["won"] - 1
print(table.round(2).to_string())
within = (table["weighted_error"].abs() <= 0.15).mean()
print(f"stage-weighted forecast within +-15% of the actual in {within:.0%} of quarters")

# %% [markdown]
# Coverage against attainment: quarters that started with more pipeline per unit of target
# should end closer to (or above) target.

# %%
fig, ax = plt.subplots(figsize=(7, 4))
ax.scatter(table["coverage"], table["won_vs_target"])
for q, r in table.iterrows():
    ax.annotate(str(q), (r["coverage"], r["won_vs_target"]), fontsize=7)
ax.axhline(1.0, ls="--", c="grey")
ax.axvspan(3, 5, color="green", alpha=0.1, label="healthy coverage 3-5x")
ax.set_xlabel("pipeline closing in the quarter / target, at the quarter's first day")
ax.set_ylabel("won in the quarter / target")
ax.legend()
fig.tight_layout()
path = OUT / "quarter_start_coverage.png"
fig.savefig(path, dpi=100)
plt.close(fig)
print(f"plot written to {path}")
