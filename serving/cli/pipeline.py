"""CLI commands for pipeline metrics, hygiene flags and the weekly review pack.

``pipecast metrics|hygiene|review --as-of D``: rich tables in a terminal, JSON with ``--json``;
``metrics --plot FILE.png`` also draws the pipeline health plot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from features.errors import InputError
from serving.cli import common as cli_common
from serving.cli.common import (
    AsOfOption,
    DbOption,
    JsonOption,
    OwnerOption,
    StagesOption,
    TeamOption,
    console,
    money,
    pct,
)


def _num(value: float | None, fmt: str = ".0f") -> str:
    return "-" if value is None else format(value, fmt)


def _unknown(count: int, what: str = "amount") -> str:
    """The note beside a sum: how many deals it could not add (their value is unknown)."""
    return f"{count} with unknown {what}" if count else ""


def _notes(*notes: str) -> str:
    return ", ".join(n for n in notes if n)


def _net_change(c: Any) -> str:
    """One line per field: last change date, net change (stage path if it moved more than once)."""
    moves = " -> ".join(str(v) for v in c.path) if c.path else f"{c.old} -> {c.new}"
    times = f" ({c.changes}x)" if c.changes > 1 else ""
    return f"{c.last_at:%m-%d} {c.field}: {moves}{times}"


def _print_metrics(m: Any) -> None:
    """Render a PipelineMetrics as a handful of tables."""
    out = console()
    scope = m.owner or m.team or "company"
    unit = f", amounts in {m.currency}" if m.currency else ""
    head = Table(
        "metric", "value", "note", title=f"Pipeline {scope} as of {m.as_of:%Y-%m-%d}{unit}"
    )
    cov, w = m.coverage, m.weighted
    rows = [
        (
            "open pipeline",
            f"{money(m.open_pipeline.value)} ({m.open_pipeline.count} deals)",
            _unknown(m.open_pipeline.amount_unknown),
        ),
        (
            f"closing {m.quarter}",
            f"{money(m.closing_this_quarter.value)} ({m.closing_this_quarter.count} deals)",
            _notes(
                _unknown(m.closing_this_quarter.amount_unknown),
                _unknown(cov.close_date_unknown, "close date (open, not counted)"),
            ),
        ),
        ("target", money(cov.target), cov.target_scope or ""),
        ("coverage", f"{_num(cov.ratio, '.2f')}x", cov.band),
        ("won this quarter", money(cov.won_this_quarter), _unknown(cov.won_amount_unknown)),
        (
            "weighted pipeline (all open)",
            money(w.all_open),
            _notes(f"{w.unknown_stage_count} with unknown stage", _unknown(w.unknown_amount_count)),
        ),
        (
            f"weighted closing {m.quarter}",
            money(w.closing_this_quarter),
            f"{_num(w.ratio_to_target, '.2f')}x target, {w.band}",
        ),
        (
            "new pipeline this quarter",
            f"{money(m.new_pipeline.value)} ({m.new_pipeline.count} deals)",
            _unknown(m.new_pipeline.amount_unknown),
        ),
        (
            "velocity (created -> closed)",
            f"{_num(m.velocity.mean_days)} days",
            f"before {_num(m.velocity.previous_mean_days)} days, {m.velocity.trend or '-'}",
        ),
        (
            "win rate",
            pct(m.win_rate.rate),
            f"{m.win_rate.numerator}/{m.win_rate.denominator} closed "
            f"{m.win_rate.window.first_day}..{m.win_rate.window.last_day}",
        ),
        (
            "opportunity-to-customer",
            pct(m.opportunity_to_customer.rate),
            m.opportunity_to_customer.note,
        ),
        ("lead-to-opportunity", "unavailable", m.lead_to_opportunity.reason),
        (
            "average deal size",
            money(m.average_deal_size.average),
            _notes(
                f"{m.average_deal_size.won_count} won",
                _unknown(m.average_deal_size.amount_unknown),
            ),
        ),
        (
            "sales cycle (won)",
            f"median {_num(m.sales_cycle.median_days)} / mean {_num(m.sales_cycle.mean_days)}",
            "days",
        ),
        (
            "activities this quarter",
            f"{m.activities.calls_meetings} calls/meetings, {m.activities.demos} demos, "
            f"{m.activities.proposals_sent} proposals",
            f"{_num(m.activities.calls_meetings_per_week, '.1f')} calls+meetings/week",
        ),
        ("funnel projection", m.funnel.text, ""),
        (
            "historical conversion forecast",
            money(m.historical_forecast.forecast),
            m.historical_forecast.text,
        ),
    ]
    for row in rows:
        head.add_row(*row)
    out.print(head)

    stages = Table(
        "stage",
        "conversion",
        "decided",
        "open",
        "open value",
        "median days (open)",
        "norm",
        "outliers",
        "median days (done)",
        title="Stages",
    )
    for c, t, f in zip(m.stage_conversion, m.time_in_stage, m.funnel.stages, strict=True):
        stages.add_row(
            c.label,
            pct(c.rate),
            f"{c.converted}/{c.decided}",
            str(f.open_count),
            money(f.open_value),
            _num(t.open_median_days),
            _num(t.norm_days),
            str(t.open_outliers),
            _num(t.completed_median_days),
        )
    out.print(stages)
    if m.loss_reasons:
        losses = Table("loss reason", "deals", "value", "share", title="Loss reasons")
        for r in m.loss_reasons:
            losses.add_row(r.reason, str(r.count), money(r.value), pct(r.share))
        out.print(losses)


def metrics(
    as_of: AsOfOption,
    team: TeamOption = None,
    owner: OwnerOption = None,
    db: DbOption = None,
    stages: StagesOption = None,
    json: JsonOption = False,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="also write a PNG of funnel, time in stage and coverage"),
    ] = None,
) -> None:
    """Pipeline metrics as of a date: coverage, weighted, conversion, cycle, win rate..."""
    from features.pipeline.metrics import compute_metrics

    when = cli_common.parse_as_of(as_of)
    if plot is not None:
        plot = cli_common.output_file(plot, "--plot")
        if not plot.parent.is_dir():
            raise InputError(f"--plot: no such directory {plot.parent}")
    ctx = cli_common.open_context(db, stages)
    result = compute_metrics(ctx.tables, ctx.stages, when, team=team, owner=owner)
    if json:
        cli_common.print_json(result.to_dict())
    else:
        _print_metrics(result)
    if plot is not None:
        from features.pipeline.plots import plot_pipeline

        written = plot_pipeline(result, ctx.stages, plot)
        # stderr with --json, so stdout stays one parseable document
        cli_common.echo(f"plot written to {written}", err=json)


def hygiene(
    as_of: AsOfOption,
    owner: OwnerOption = None,
    team: TeamOption = None,
    db: DbOption = None,
    stages: StagesOption = None,
    json: JsonOption = False,
) -> None:
    """Hygiene flags of open deals as of a date (zombie deals, missing next steps, ...)."""
    from features.pipeline.hygiene import hygiene_flags, stage_outliers
    from features.serialize import jsonable

    when = cli_common.parse_as_of(as_of)
    ctx = cli_common.open_context(db, stages)
    flags = hygiene_flags(ctx.tables, ctx.stages, when, owner=owner, team=team)
    outliers = stage_outliers(flags, ctx.stages)
    if json:
        cli_common.print_json(
            {
                "as_of": when,
                "flags": [f.to_dict() for f in flags],
                "stage_outliers": jsonable(outliers),
            }
        )
        return
    out = console()
    table = Table(
        "deal", "owner", "rule", "severity", "message", title=f"Hygiene as of {when:%Y-%m-%d}"
    )
    for f in flags:
        table.add_row(f.deal_id, f.owner, f.rule.value, f.severity.value, f.message)
    out.print(table)
    for o in outliers:
        out.print(o.message)
    out.print(f"{len(flags)} flags on {len({f.deal_id for f in flags})} deals")


def review(
    as_of: AsOfOption,
    min_amount: Annotated[
        float | None, typer.Option("--min-amount", help="smallest deal to review")
    ] = None,
    team: TeamOption = None,
    owner: OwnerOption = None,
    sort_by: Annotated[
        str, typer.Option("--sort", help="amount (largest first) or expected_close")
    ] = "amount",
    db: DbOption = None,
    stages: StagesOption = None,
    json: JsonOption = False,
) -> None:
    """The weekly pipeline review pack: big open deals, last week's changes, risks."""
    from features.pipeline.review import review_pack

    if sort_by not in ("amount", "expected_close"):
        raise InputError(f"--sort: expected 'amount' or 'expected_close', got {sort_by!r}")
    when = cli_common.parse_as_of(as_of)
    ctx = cli_common.open_context(db, stages)
    pack = review_pack(
        ctx.tables,
        ctx.stages,
        when,
        min_amount=min_amount,
        team=team,
        owner=owner,
        sort_by="amount" if sort_by == "amount" else "expected_close",
    )
    if json:
        cli_common.print_json(pack.to_dict())
        return
    table = Table(
        "deal",
        "owner",
        "stage",
        "amount",
        "close",
        "category",
        "changes this week",
        "next step",
        "acts",
        "flags",
        "risk",
        title=(
            f"Pipeline review {pack.week_first_day}..{pack.week_last_day}: "
            f"{pack.deal_count} deals >= {pack.min_amount:,.0f}, total {pack.total_value:,.0f}"
        ),
    )
    for d in pack.deals:
        changes = "\n".join(_net_change(c) for c in d.changes)
        step = f"{d.next_step or '-'} ({d.next_step_date or 'no date'})"
        table.add_row(
            d.deal_id,
            d.owner,
            d.stage_label or "unknown",
            money(d.amount),
            str(d.expected_close_date or "-"),
            d.forecast_category or "-",
            changes or "-",
            step,
            str(sum(d.activities_last_week.values())),
            ", ".join(f.rule.value for f in d.flags) or "-",
            d.risk_note or "-",
        )
    out = console(width=200)
    out.print(table)
    if pack.amount_unknown:
        out.print(
            f"{pack.amount_unknown} open deals with an unknown amount as of {when:%Y-%m-%d} "
            "could not be compared with the threshold"
        )


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``pipecast`` app."""
    app.command("metrics")(metrics)
    app.command("hygiene")(hygiene)
    app.command("review")(review)
