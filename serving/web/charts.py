"""Small SVG charts drawn on the server for the deal and models pages (no script library).

Each returns an ``<svg>`` string with a ``<title>`` and ``<desc>`` for screen readers; every value
drawn is text in the page too (tables beside the charts), so the chart is never the only source.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from html import escape
from typing import Any

import pandas as pd

PALETTE = ("#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#64748b")


def _svg(width: int, height: int, title: str, desc: str, body: list[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
        f'aria-labelledby="t d"><title id="t">{escape(title)}</title>'
        f'<desc id="d">{escape(desc)}</desc>' + "".join(body) + "</svg>"
    )


def reliability_svg(curves: dict[str, Sequence[Sequence[float]]]) -> str:
    """Predicted against observed win rate per probability bin, one line per curve; the
    diagonal is perfect calibration."""
    w, h, m = 420, 360, 44
    side = min(w, h) - 2 * m

    def x(p: float) -> float:
        return m + p * side

    def y(p: float) -> float:
        return m + (1 - p) * side

    body = [
        f'<rect x="{m}" y="{m}" width="{side}" height="{side}" fill="#fff" stroke="#cbd5e1"/>',
        f'<line x1="{x(0)}" y1="{y(0)}" x2="{x(1)}" y2="{y(1)}" stroke="#94a3b8" '
        'stroke-dasharray="4 4"/>',
    ]
    for t in (0, 0.25, 0.5, 0.75, 1):
        body.append(
            f'<text x="{x(t):.1f}" y="{m + side + 16}" font-size="11" text-anchor="middle">'
            f"{t:.0%}</text>"
        )
        body.append(
            f'<text x="{m - 6}" y="{y(t) + 4:.1f}" font-size="11" text-anchor="end">{t:.0%}</text>'
        )
    body.append(
        f'<text x="{m + side / 2}" y="{h - 4}" font-size="12" text-anchor="middle">'
        "predicted P(win)</text>"
    )
    body.append(
        f'<text x="12" y="{m + side / 2}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 12 {m + side / 2})">observed win rate</text>'
    )
    for i, (name, points) in enumerate(curves.items()):
        color = PALETTE[i % len(PALETTE)]
        pts = [(float(p[0]), float(p[1])) for p in points if len(p) >= 2]
        if not pts:
            continue
        path = " ".join(f"{x(a):.1f},{y(b):.1f}" for a, b in pts)
        width = 3 if name == "pipecast" else 1.5
        body.append(
            f'<polyline class="curve" data-curve="{escape(name)}" points="{path}" fill="none" '
            f'stroke="{color}" stroke-width="{width}"/>'
        )
        body += [f'<circle cx="{x(a):.1f}" cy="{y(b):.1f}" r="3" fill="{color}"/>' for a, b in pts]
        body.append(
            f'<text x="{w - 4}" y="{m + 14 + 15 * i}" font-size="12" text-anchor="end" '
            f'fill="{color}">{escape(name.replace("_", " "))}</text>'
        )
    return _svg(
        w,
        h,
        "Reliability diagram",
        "Predicted win probability against the observed win rate per bin, for the model and "
        "its baselines; the dashed diagonal is perfect calibration.",
        body,
    )


def timeline_svg(
    history: dict[str, list[dict[str, Any]]],
    start: Any,
    end: Any,
    stage_labels: dict[str, str],
) -> str:
    """A deal's life up to ``end``: stages as bands, field changes and activities as marks."""
    t0, t1 = pd.Timestamp(start), pd.Timestamp(end)
    if t1 <= t0:
        t1 = t0 + pd.Timedelta(days=1)
    w, h, left, right = 900, 170, 110, 20
    span = (t1 - t0).total_seconds()

    def x(at: Any) -> float:
        s = (pd.Timestamp(at) - t0).total_seconds()
        return left + max(0.0, min(1.0, s / span)) * (w - left - right)

    rows = {"stage": 30, "changes": 90, "activities": 130}
    body = [
        f'<text x="4" y="{y + 4}" font-size="12">{label}</text>'
        for label, y in (
            ("Stage", rows["stage"]),
            ("Field changes", rows["changes"]),
            ("Activities", rows["activities"]),
        )
    ]
    stages = [s for s in history.get("stages", []) if s.get("at")]
    for i, s in enumerate(stages):
        a = x(s["at"])
        b = x(stages[i + 1]["at"]) if i + 1 < len(stages) else x(t1)
        color = PALETTE[i % len(PALETTE)]
        label = stage_labels.get(str(s.get("stage")), str(s.get("stage")))
        body.append(
            f'<rect class="stage" x="{a:.1f}" y="{rows["stage"] - 14}" '
            f'width="{max(b - a, 2):.1f}" height="28" fill="{color}" opacity=".8">'
            f"<title>{escape(label)} from {escape(str(s['at'])[:10])}</title></rect>"
        )
        if b - a > 60:
            body.append(
                f'<text x="{a + 4:.1f}" y="{rows["stage"] + 4}" font-size="11" fill="#fff">'
                f"{escape(label)}</text>"
            )
    for c in history.get("changes", []):
        cx, cy = x(c["at"]), rows["changes"]
        body.append(
            f'<path class="change" d="M{cx:.1f},{cy - 6} l6,6 l-6,6 l-6,-6 z" fill="#f59e0b">'
            f"<title>{escape(str(c['field']))}: {escape(str(c.get('new')))} "
            f"({escape(str(c['at'])[:10])})</title></path>"
        )
    for act in history.get("activities", []):
        ax = x(act["at"])
        body.append(
            f'<line class="activity" x1="{ax:.1f}" y1="{rows["activities"] - 9}" x2="{ax:.1f}" '
            f'y2="{rows["activities"] + 9}" stroke="#10b981" stroke-width="2">'
            f"<title>{escape(str(act.get('type')))} ({escape(str(act['at'])[:10])})</title></line>"
        )
    axis = h - 14
    body.append(
        f'<line x1="{left}" y1="{axis - 10}" x2="{w - right}" y2="{axis - 10}" stroke="#94a3b8"/>'
    )
    for frac in (0, 0.25, 0.5, 0.75, 1):
        at = t0 + (t1 - t0) * frac
        anchor = "end" if frac == 1 else "middle"
        body.append(
            f'<text x="{left + frac * (w - left - right):.1f}" y="{axis + 4}" font-size="11" '
            f'text-anchor="{anchor}">{at:%Y-%m-%d}</text>'
        )
    return _svg(
        w,
        h,
        "Deal timeline",
        f"{len(stages)} stage entries, {len(history.get('changes', []))} field changes and "
        f"{len(history.get('activities', []))} activities between {t0:%Y-%m-%d} and {t1:%Y-%m-%d}.",
        body,
    )


def _money_short(v: float) -> str:
    return f"{v / 1e6:.2f}M" if abs(v) >= 1e6 else f"{v / 1e3:.0f}K"


def forecast_svg(fc: dict[str, Any]) -> str:
    """The quarter's revenue distribution as a density drawn from the quantile grid (each 5%
    of scenarios between two grid points is a bar of equal area), with P10/P50/P90, the target
    and the rule-based forecasts marked."""
    w, h, left, right, top, base = 900, 310, 20, 20, 30, 220
    grid = [(float(p["q"]), float(p["value"])) for p in fc["quantiles"]]
    d = fc["pipecast"]
    marks: list[tuple[str, float, str]] = [
        (name.replace("_", " "), float(v), PALETTE[(i + 1) % len(PALETTE)])
        for i, (name, v) in enumerate(fc["methods"].items())
        if v is not None
    ]
    if fc["target"] is not None:
        marks.append(("target", float(fc["target"]), "#111827"))
    values = [v for _, v in grid] + [v for _, v, _ in marks] + [d["p10"], d["p90"]]
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.05 or 1.0
    lo, hi = lo - pad, hi + pad

    def x(v: float) -> float:
        return left + (v - lo) / (hi - lo) * (w - left - right)

    bars = []
    for (q0, v0), (q1, v1) in itertools.pairwise(grid):
        bars.append((v0, v1, (q1 - q0) / max(v1 - v0, (hi - lo) * 1e-3)))
    peak = max((b[2] for b in bars), default=1.0)
    body = [f'<line x1="{left}" y1="{base}" x2="{w - right}" y2="{base}" stroke="#94a3b8"/>']
    for v0, v1, dens in bars:
        bh = dens / peak * (base - top - 20)
        body.append(
            f'<rect class="density" x="{x(v0):.1f}" y="{base - bh:.1f}" '
            f'width="{max(x(v1) - x(v0), 0.5):.1f}" height="{bh:.1f}" fill="#bfdbfe" '
            'stroke="#93c5fd"/>'
        )
    lines = (("P10", d["p10"], "4 3"), ("P50", d["p50"], ""), ("P90", d["p90"], "4 3"))
    for label, v, dash in lines:
        body.append(
            f'<line class="quantile" data-q="{label}" x1="{x(v):.1f}" y1="{top}" x2="{x(v):.1f}" '
            f'y2="{base}" stroke="#2563eb" stroke-width="{3 if label == "P50" else 1.5}" '
            f'stroke-dasharray="{dash}"/>'
            f'<text x="{x(v):.1f}" y="{top - 8}" font-size="12" text-anchor="middle" '
            f'fill="#1d4ed8">{label} {_money_short(v)}</text>'
        )
    for i, (label, v, color) in enumerate(marks):
        y = base + 18 + 16 * (i % 5)  # one row per mark: close values do not overlap
        tx = min(max(x(v), left + 70), w - right - 70)  # keep the label inside the chart
        body.append(
            f'<line class="method" data-method="{escape(label)}" x1="{x(v):.1f}" y1="{base - 6}" '
            f'x2="{x(v):.1f}" y2="{base + 6}" stroke="{color}" stroke-width="3"/>'
            f'<text x="{tx:.1f}" y="{y}" font-size="11" text-anchor="middle" fill="{color}">'
            f"{escape(label)} {_money_short(v)}</text>"
        )
    return _svg(
        w,
        h,
        "Quarter revenue forecast",
        f"Distribution of the quarter's revenue: P10 {d['p10']:,.0f}, P50 {d['p50']:,.0f}, "
        f"P90 {d['p90']:,.0f}; the target and the rule-based forecasts are marked.",
        body,
    )


def weeks_svg(points: list[dict[str, Any]], target: float | None) -> str:
    """The forecast at each week of the quarter so far: the P10-P90 band, the P50, the won
    revenue and the target."""
    w, h, left, right, top, bottom = 900, 240, 70, 20, 20, 30
    values = [p[k] for p in points for k in ("p10", "p90", "won_so_far")]
    if target is not None:
        values.append(target)
    lo, hi = 0.0, max(values) * 1.05 or 1.0
    n = max(len(points) - 1, 1)

    def x(i: int) -> float:
        return left + i / n * (w - left - right)

    def y(v: float) -> float:
        return top + (1 - (v - lo) / (hi - lo)) * (h - top - bottom)

    band = [f"{x(i):.1f},{y(p['p90']):.1f}" for i, p in enumerate(points)]
    band += [f"{x(i):.1f},{y(p['p10']):.1f}" for i, p in reversed(list(enumerate(points)))]
    body = [f'<polygon points="{" ".join(band)}" fill="#dbeafe" stroke="none"/>']
    for key, color, width in (("p50", "#2563eb", 3), ("won_so_far", "#10b981", 2)):
        line = " ".join(f"{x(i):.1f},{y(p[key]):.1f}" for i, p in enumerate(points))
        body.append(
            f'<polyline class="{key}" points="{line}" fill="none" stroke="{color}" '
            f'stroke-width="{width}"/>'
        )
        body += [
            f'<circle cx="{x(i):.1f}" cy="{y(p[key]):.1f}" r="3" fill="{color}"/>'
            for i, p in enumerate(points)
        ]
    if target is not None:
        body.append(
            f'<line x1="{left}" y1="{y(target):.1f}" x2="{w - right}" y2="{y(target):.1f}" '
            f'stroke="#111827" stroke-dasharray="6 4"/><text x="{w - right}" '
            f'y="{y(target) - 4:.1f}" font-size="11" text-anchor="end">target</text>'
        )
    for t in (lo, hi / 2, hi):
        body.append(
            f'<text x="{left - 6}" y="{y(t) + 4:.1f}" font-size="11" text-anchor="end">'
            f"{_money_short(t)}</text>"
        )
    for i, p in enumerate(points):
        body.append(
            f'<text x="{x(i):.1f}" y="{h - 10}" font-size="11" text-anchor="middle">'
            f"{pd.Timestamp(p['as_of']):%m-%d}</text>"
        )
    return _svg(
        w,
        h,
        "Forecast by week",
        "The P50 forecast (line) and its P10-P90 band at the end of each week of the quarter so "
        "far, with the revenue won by then and the target.",
        body,
    )
