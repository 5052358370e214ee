"""Pipeline health plot: funnel, time in stage and coverage of one :class:`PipelineMetrics`.

Drawn on a bare matplotlib ``Figure`` with the Agg canvas: no pyplot, so no global figure or backend
state is touched (safe in servers and notebooks).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from features.pipeline.facts import over_stage_limit

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from features.data.stages import StageConfig
    from features.pipeline.metrics import PipelineMetrics

_OPEN = "#4c72b0"
_REACH = "#c6d4ea"
_WON = "#55a868"
_WARN = "#dd8452"
_BAD = "#c44e52"
_MUTED = "#8c8c8c"


def _money(value: float) -> str:
    """Short money label: 950, 12K, 3.4M, 25M."""
    size = abs(value)
    if size >= 1e6:
        return f"{value / 1e6:.0f}M" if value % 1e6 == 0 else f"{value / 1e6:.1f}M"
    if size >= 1e3:
        return f"{value / 1e3:.0f}K"
    return f"{value:.0f}"


def _funnel(ax: Axes, m: PipelineMetrics) -> None:
    """Deals expected to reach each stage (light), open there today (dark), expected wins."""
    rows = m.funnel.stages
    labels = [r.label for r in rows] + ["Won (expected)"]
    y = list(range(len(labels)))
    reach = [r.expected_reaching for r in rows]
    known = all(v is not None for v in reach) and m.funnel.expected_wins is not None
    widest = max([float(r.open_count) for r in rows] + [v or 0.0 for v in reach] + [1.0])
    for i, r in enumerate(rows):
        if r.expected_reaching is not None:
            ax.barh(i, r.expected_reaching, color=_REACH, height=0.7)
        ax.barh(i, r.open_count, color=_OPEN, height=0.7)
        rate = "n/a" if r.conversion_rate is None else f"{r.conversion_rate:.0%}"
        ax.text(
            widest * 1.02,
            i,
            f"{r.open_count:,} open · {_money(r.open_value)} · converts {rate}",
            va="center",
            fontsize=8,
        )
    wins = m.funnel.expected_wins
    won_row = len(rows)
    if wins is not None:
        ax.barh(won_row, wins, color=_WON, height=0.7)
        value = m.funnel.expected_won_value
        ax.text(
            widest * 1.02,
            won_row,
            f"≈{wins:,.0f} won · {_money(value or 0.0)}",
            va="center",
            fontsize=8,
        )
    else:
        ax.text(widest * 1.02, won_row, "conversion unknown", va="center", fontsize=8)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlim(0, widest * 1.6)
    ax.set_xlabel("deals")
    steps = m.funnel.text.split(" (")[0] if known else m.funnel.text
    ax.set_title(f"Funnel from today's open deals: {steps}", fontsize=10, loc="left")
    ax.legend(
        handles=[
            _patch(_REACH, "expected to reach stage"),
            _patch(_OPEN, "open in stage now"),
            _patch(_WON, "expected wins"),
        ],
        loc="lower right",
        fontsize=7,
        frameon=False,
    )


def _patch(color: str, label: str) -> object:
    from matplotlib.patches import Patch

    return Patch(color=color, label=label)


def _time_in_stage(ax: Axes, m: PipelineMetrics, factor: float) -> None:
    """Median days open deals have sat in their stage, against the stage norm."""
    rows = m.time_in_stage
    top = max(
        [r.open_median_days or 0.0 for r in rows]
        + [(r.limit_days or r.norm_days or 0.0) for r in rows]
        + [1.0]
    )
    for i, r in enumerate(rows):
        median, norm, limit = r.open_median_days, r.norm_days, r.limit_days
        if median is None:
            ax.text(0, i, " no open deals", va="center", fontsize=8, color=_MUTED)
        else:
            color = _OPEN
            # the hygiene rule's boundary: a median of exactly the limit is not over it
            if limit is not None and over_stage_limit(median, limit):
                color = _BAD
            elif norm is not None and median > norm:
                color = _WARN
            ax.barh(i, median, color=color, height=0.6)
        if norm is not None:
            ax.plot([norm, norm], [i - 0.4, i + 0.4], color="black", lw=2)
        if limit is not None:
            ax.plot([limit, limit], [i - 0.4, i + 0.4], color="black", lw=1, ls=":")
        note = f"{r.open_outliers} of {r.open_count} over {factor:g}x norm"
        ax.text(top * 1.03, i, note, va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [r.label for r in rows])
    ax.set_ylim(len(rows) + 0.2, -0.5)  # top row first; room for the legend below the last
    ax.set_xlim(0, top * 1.75)
    ax.set_xlabel("median days in current stage (open deals)")
    ax.legend(
        handles=[
            _patch(_OPEN, "within norm"),
            _patch(_WARN, "over norm"),
            _patch(_BAD, f"over {factor:g}x norm"),
        ],
        loc="lower right",
        ncol=3,
        fontsize=7,
        frameon=False,
    )
    ax.set_title(
        f"Time in stage: norm (solid) and {factor:g}x norm (dotted)", fontsize=10, loc="left"
    )


def _coverage(ax: Axes, m: PipelineMetrics) -> None:
    """Pipeline and weighted pipeline closing this quarter against the target and healthy bands."""
    from matplotlib.ticker import MaxNLocator

    cov, w = m.coverage, m.weighted
    target = cov.target
    bars = [
        (f"pipeline closing {m.quarter}", cov.pipeline_closing, _OPEN),
        (f"weighted closing {m.quarter}", w.closing_this_quarter, _OPEN),
        (f"won in {m.quarter}", cov.won_this_quarter, _WON),
    ]
    if target:
        bars.insert(0, ("target", target, _MUTED))
    labels = [b[0] for b in bars]
    values = [b[1] for b in bars]
    top = max([*values, 1.0])
    if target:
        lo, hi = cov.healthy_range
        wlo, whi = w.target_range
        top = max(top, hi * target)
        bands = {1: (lo, hi, f"healthy {lo:g}-{hi:g}x"), 2: (wlo, whi, f"{wlo:g}-{whi:g}x target")}
        for i, (b_lo, b_hi, text) in bands.items():
            ax.fill_betweenx(
                [i - 0.45, i + 0.45], b_lo * target, b_hi * target, color=_WON, alpha=0.18, lw=0
            )
            ax.text(b_lo * target, i + 0.42, text, fontsize=7, color=_WON, va="top")
        ax.axvline(target, color="black", lw=1, ls="--")
    for i, (_, value, color) in enumerate(bars):
        ax.barh(i, value, color=color, height=0.5)
    notes: dict[int, str] = {}
    offset = 1 if target else 0
    if cov.ratio is not None:
        notes[offset] = f"{cov.ratio:.1f}x target · {cov.band.replace('_', ' ')}"
    if w.ratio_to_target is not None:
        notes[offset + 1] = f"{w.ratio_to_target:.2f}x target · {w.band.replace('_', ' ')}"
    for i, (_, value, _) in enumerate(bars):
        text = f" {_money(value)}" + (f"  ({notes[i]})" if i in notes else "")
        ax.text(value, i, text, va="center", fontsize=8)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlim(0, top * 1.45)
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.xaxis.set_major_formatter(lambda x, _pos: _money(x))
    if target:
        ax.set_title(
            f"Coverage {m.quarter}: target {_money(target)} ({cov.target_scope})",
            fontsize=10,
            loc="left",
        )
    else:
        ax.set_title(f"Coverage {m.quarter}: no target", fontsize=10, loc="left")
        ax.text(
            0.98,
            0.04,
            f"no target for {cov.target_scope or m.quarter}: coverage not computed",
            transform=ax.transAxes,
            ha="right",
            fontsize=8,
            color=_MUTED,
        )
    unknown = _unknown_note(m)
    if unknown:
        ax.text(0.98, 0.10, unknown, transform=ax.transAxes, ha="right", fontsize=8, color=_MUTED)


def _unknown_note(m: PipelineMetrics) -> str:
    """What the coverage bars could not count: deals whose amount or close date is unknown."""
    cov = m.coverage
    parts = []
    if cov.closing_amount_unknown:
        parts.append(f"{cov.closing_amount_unknown} closing deals with unknown amount")
    if cov.close_date_unknown:
        parts.append(f"{cov.close_date_unknown} open deals with unknown close date")
    return "not counted: " + ", ".join(parts) if parts else ""


def plot_pipeline(metrics: PipelineMetrics, stages: StageConfig, path: Path) -> Path:
    """Write a PNG of the funnel, time in stage and coverage to ``path``; return ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 9.5), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 2, height_ratios=[1.1, 1])
    _funnel(fig.add_subplot(grid[0, :]), metrics)
    _time_in_stage(fig.add_subplot(grid[1, 0]), metrics, stages.hygiene.time_in_stage_factor)
    _coverage(fig.add_subplot(grid[1, 1]), metrics)
    scope = metrics.owner or metrics.team or "company"
    fig.suptitle(
        f"Pipeline health, {scope}, as of {metrics.as_of:%Y-%m-%d} ({metrics.quarter}): "
        f"{metrics.open_pipeline.count:,} open deals, {_money(metrics.open_pipeline.value)}",
        fontsize=12,
    )
    path = Path(path)
    fig.savefig(path, format="png", dpi=110)
    fig.clear()
    return path
