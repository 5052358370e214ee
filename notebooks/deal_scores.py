# %% [markdown]
# # Deal scores a rep can trust: calibration, and one deal's reasons
#
# A worked analysis (percent-format notebook: open it in Jupyter with jupytext, or run it as a
# script; it has no stored outputs). On a generated CRM with a known truth it trains the win and
# slip models the way `pipecast train` does — fitted as of the start of the latest quarters,
# judged on those quarters — and asks two questions:
#
# 1. **Is a 30% deal won 30% of the time?** A reliability diagram of the model against the
#    stage's default probability, the historical stage rates, an Odoo-style naive Bayes and the
#    oracle (each deal's true probability, from the generator's hidden state).
# 2. **Why is this deal ranked first?** Its reasons in plain words and its next actions.

# %%
import os
import tempfile
from pathlib import Path

import pandas as pd

from features.data.calendar import to_timestamp
from features.data.stages import load_stage_config
from features.synthetic.generator import generate, write_dataset
from training.config import make_config
from training.evaluation import plot_reliability
from training.train import train

N_DEALS = int(os.environ.get("PIPECAST_NOTEBOOK_DEALS", "8000"))
OUT = Path(os.environ.get("PIPECAST_NOTEBOOK_OUT", tempfile.gettempdir()))
stages = load_stage_config()
data = generate(N_DEALS, seed=11)
truth_dir = OUT / "deal_scores_data"
write_dataset(data, truth_dir)
# Small demo data gets small models (quick to run); the default recipe is for real volumes.
recipe = (
    make_config(win={"n_estimators": 80, "learning_rate": 0.1}, slip={"n_estimators": 60})
    if N_DEALS < 5000
    else make_config()
)
result = train(data.tables, stages, truth=truth_dir, config=recipe)
print(result.data_summary()["eval_window"], f"{result.data_summary()['eval_rows']:,} rows")

# %% [markdown]
# The same evaluation rows for every method; censoring-weighted (a deal still open at the end of
# the data stands in through deals like it that have closed).

# %%
methods = {
    "pipecast": result.win["eval"],
    **result.win["baselines"],
    "oracle": result.win["oracle"],
}
table = pd.DataFrame(
    {name: {k: s[k] for k in ("auc", "brier", "log_loss", "ece")} for name, s in methods.items()}
).T
print(table.round(3).to_string())
slip = result.slip
print(
    "closes won this quarter, log loss: pipecast "
    f"{slip['eval']['log_loss']:.3f} vs rep's close date at face value "
    f"{slip['baselines']['rep_close_date']['log_loss']:.3f}"
)

# %% [markdown]
# The reliability diagram: points on the diagonal are calibrated.

# %%
path = plot_reliability(
    result.curves, OUT / "deal_scores_reliability.png", "Win probability on the latest quarters"
)
print(f"plot written to {path}")

# %% [markdown]
# A rep's list on a date near the end of the data: open deals ranked by expected value this
# quarter (amount x P(win) x P(closes this quarter | win)), and the first deal's reasons.

# %%
as_of = to_timestamp("2025-11-14")
scored = result.serving.score(data.tables, stages, as_of, reasons=True)
cols = ["rank", "deal_id", "stage", "amount", "p_win", "p_won_this_quarter", "expected_value"]
print(scored[cols].head(10).round(2).to_string(index=False))
top = scored.iloc[0]
print(f"\n{top['deal_id']} ({top['stage']}, amount {top['amount']:,.0f}):")
print(f"  P(win) {top['p_win']:.0%}, P(closes won this quarter) {top['p_won_this_quarter']:.0%}")
print("  for:     " + "; ".join(top["reasons_for"]))
print("  against: " + "; ".join(top["reasons_against"]))
print("  next:    " + "\n           ".join(top["next_actions"]))
