"""Charts of the forecast (distribution with every method and the target marked) and backtest."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from forecasting.backtest import BacktestResult
    from forecasting.forecast import Forecast

METHOD_STYLE = {
    "stage_weighted": ("tab:orange", "--"),
    "commit": ("tab:red", ":"),
    "best_case": ("tab:purple", ":"),
    "historical_conversion": ("tab:brown", "-."),
}


def _millions(x: float, _pos: int | None = None) -> str:
    return f"{x / 1e6:,.1f}M"


def plot_forecast(fc: Forecast, path: str | Path) -> Path:
    """The quarter-end revenue distribution (P10-P90 shaded), each rule-based forecast, the
    naive simulation's range, the target and, when the quarter is over, the actual."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(10, 5))
    values = fc.scenarios
    ax.hist(values, bins=60, color="tab:blue", alpha=0.55, density=True, label="pipecast scenarios")
    d = fc.pipecast
    ax.axvspan(d.p10, d.p90, color="tab:blue", alpha=0.12, label="pipecast P10-P90")
    ax.axvline(d.p50, color="tab:blue", lw=2, label=f"pipecast P50 {_millions(d.p50)}")
    ind = fc.independent_stage_sim
    ymax = ax.get_ylim()[1]
    ax.hlines(
        ymax * 0.95, ind.p10, ind.p90, color="grey", lw=4, label="independent coin flips P10-P90"
    )
    for name, value in fc.rules.items():
        if value is None:
            continue
        color, style = METHOD_STYLE.get(name, ("black", "--"))
        ax.axvline(value, color=color, ls=style, lw=1.5, label=f"{name} {_millions(value)}")
    if fc.target is not None:
        ax.axvline(fc.target, color="black", lw=2, label=f"target {_millions(fc.target)}")
    if fc.actual is not None:
        ax.axvline(fc.actual, color="tab:green", lw=2.5, label=f"actual {_millions(fc.actual)}")
    ax.xaxis.set_major_formatter(FuncFormatter(_millions))
    ax.set_yticks([])
    ax.set_xlabel("revenue closed won in the quarter")
    ax.set_title(f"{fc.quarter} forecast for {fc.scope} as of {fc.as_of[:10]}")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_backtest(result: BacktestResult, path: str | Path) -> Path:
    """Per week: pipecast's P10-P90 and P50 against the actual, quarter by quarter, with the
    stage-weighted forecast; the median absolute % error of every method by week; and pipecast's
    gap to each rule by week with its 90% paired interval (``summary["vs_rules"]``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    frame = result.frame()
    weeks = sorted(frame["week"].unique())
    fig, axes = plt.subplots(1, len(weeks) + 2, figsize=(5 * (len(weeks) + 2), 4.5))
    axes = np.atleast_1d(axes)
    for ax, week in zip(axes, weeks, strict=False):
        pc = frame[(frame["method"] == "pipecast") & (frame["week"] == week)]
        sw = frame[(frame["method"] == "stage_weighted") & (frame["week"] == week)]
        x = np.arange(len(pc))
        ax.fill_between(x, pc["p10"], pc["p90"], color="tab:blue", alpha=0.2, label="P10-P90")
        ax.plot(x, pc["point"], "o-", color="tab:blue", label="pipecast P50")
        ax.plot(x, sw["point"], "s--", color="tab:orange", label="stage-weighted")
        ax.plot(x, pc["actual"], "k*", ms=10, label="actual")
        ax.set_xticks(x, pc["quarter"], rotation=45)
        ax.yaxis.set_major_formatter(FuncFormatter(_millions))
        ax.set_title(f"week {week}")
        ax.legend(fontsize=7)
    ax = axes[-2]
    mape = result.summary["median_abs_pct_error"]
    methods = list(next(iter(mape.values())).keys())
    colours = {m: f"C{i}" for i, m in enumerate(methods)}
    for m in methods:
        ys = [mape[str(w)].get(m) for w in weeks]
        ax.plot(weeks, [np.nan if y is None else 100 * y for y in ys], "o-", label=m, c=colours[m])
    ax.set_xlabel("week of quarter")
    ax.set_ylabel("median absolute % error")
    ax.set_title("error by week")
    ax.legend(fontsize=7)
    _plot_gaps(axes[-1], result.summary["vs_rules"], weeks, colours)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_gaps(
    ax: Any,
    gaps: dict[str, dict[str, dict[str, Any]]],
    weeks: list[int],
    colours: dict[str, str],
) -> None:
    """Pipecast's median error minus each rule's by week, with the paired interval where there
    is one (a bar crossing zero: the quarters cannot tell the two apart)."""
    rules = list(dict.fromkeys(r for by_rule in gaps.values() for r in by_rule))
    width = 0.8 / max(1, len(rules))
    for i, rule in enumerate(rules):
        xs, ys, lo, hi = [], [], [], []
        for j, week in enumerate(weeks):
            g = gaps.get(str(week), {}).get(rule)
            if g is None:
                continue
            xs.append(j + (i - (len(rules) - 1) / 2) * width)
            ys.append(100 * g["gap"])
            low, high = g["gap_low"], g["gap_high"]
            lo.append(0.0 if low is None else 100 * (g["gap"] - low))
            hi.append(0.0 if high is None else 100 * (high - g["gap"]))
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", capsize=3, label=rule, c=colours.get(rule))
    ax.axhline(0.0, color="grey", lw=1)
    ax.set_xticks(range(len(weeks)), [f"week {w}" for w in weeks])
    ax.set_ylabel("pipecast - rule, median abs % error (points)")
    ax.set_title("pipecast against each rule (90% interval)")
    ax.legend(fontsize=7)
