"""``pipecast`` data commands (generate, load, summary, stages); the others register from their
modules."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from features.errors import DataImportError, InputError
from serving.cli.app import app
from serving.cli.common import (
    DbOption,
    StagesOption,
    console,
    db_path,
    echo,
    load_stages,
    open_context,
    parse_day,
    parse_time,
    settings,
)


@app.command()
def stages(config: StagesOption = None) -> None:
    """Show the stage configuration in force."""
    from rich.table import Table

    cfg = load_stages(config)
    table = Table("order", "key", "label", "kind", "p(win)", "typical days")
    for s in sorted(cfg.stages, key=lambda s: s.order):
        dur = f"{s.duration_days.min}-{s.duration_days.max}" if s.duration_days else "-"
        table.add_row(str(s.order), s.key, s.label, s.kind.value, f"{s.win_probability:.0%}", dur)
    console().print(table)


@app.command()
def generate(
    deals: Annotated[int, typer.Option("--deals", min=1, help="number of deals")] = 5000,
    seed: Annotated[int, typer.Option("--seed", help="random seed (same seed, same data)")] = 1,
    out: Annotated[Path, typer.Option("--out", help="output folder")] = Path("demo-data"),
    fmt: Annotated[str, typer.Option("--format", help="parquet or csv")] = "parquet",
    start: Annotated[
        str, typer.Option("--start", help="first day of the simulation")
    ] = "2022-01-01",
    end: Annotated[
        str, typer.Option("--end", help="export date: last day of the data")
    ] = "2025-12-31",
    stages: StagesOption = None,
) -> None:
    """Generate a synthetic manufacturing B2B pipeline (canonical tables plus its known truth)."""
    from rich.progress import Progress

    from features.synthetic.generator import generate as run_generator
    from features.synthetic.generator import write_dataset

    if fmt not in ("parquet", "csv"):
        raise InputError(f"--format: expected parquet or csv, got {fmt!r}")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out: {out} exists and is not a folder; give a folder to write into")
    first, last = parse_day(start, "--start"), parse_day(end, "--end")
    config = load_stages(stages)
    with Progress(transient=True) as progress:
        task = progress.add_task("simulating deals", total=deals)

        def report(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        data = run_generator(deals, seed, start=first, end=last, stages=config, progress=report)
    paths = write_dataset(data, out, fmt)  # type: ignore[arg-type]
    counts = ", ".join(f"{name} {len(frame):,}" for name, frame in data.tables.items())
    echo(f"wrote {len(paths)} files to {out}/ ({counts}); truth in {out}/truth/")


@app.command()
def load(
    path: Annotated[Path, typer.Argument(help="folder (or single deals file) of the CRM export")],
    mapping: Annotated[
        Path | None, typer.Option("--mapping", help="mapping YAML for a foreign CRM export")
    ] = None,
    db: DbOption = None,
    stages: StagesOption = None,
    exported_at: Annotated[
        str | None, typer.Option("--exported-at", help="when the export was taken (ISO)")
    ] = None,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="refuse values of loss reason, activity type, role, forecast category, segment "
            "or product that the mapping does not map (default: store other/missing, noted)",
        ),
    ] = False,
    encoding: Annotated[
        str | None,
        typer.Option(
            "--encoding",
            help="text encoding of every CSV file, e.g. windows-1252 or utf-16 (overrides the "
            "mapping; default: UTF-8, else Windows-1252 with a note)",
        ),
    ] = None,
    problems_out: Annotated[
        Path | None,
        typer.Option(
            "--problems-out", help="write every problem (file, row, line, column, message) here"
        ),
    ] = None,
    currency: Annotated[
        str | None,
        typer.Option(
            "--currency",
            help="the corporate currency every amount is reported in (ISO code, e.g. USD), when "
            "the export does not name it [default: $PIPECAST_CURRENCY]",
            show_default=False,
        ),
    ] = None,
    rates: Annotated[
        Path | None,
        typer.Option(
            "--rates",
            help="exchange rates CSV: columns currency, rate (units per 1 of the corporate "
            "currency) and optionally valid_from (a dated rate)",
        ),
    ] = None,
) -> None:
    """Import CSV/Parquet tables into the DuckDB store: all of it, or nothing.

    The store stays readable while it loads; a second load waits for the first (up to
    PIPECAST_LOCK_TIMEOUT seconds), then says the store is busy.
    """
    from features.data.importer import ImportValidationError, check_currency, write_problems_csv
    from features.data.loading import load_export
    from features.data.mapping import load_mapping

    check_currency(currency, "--currency")
    config = load_stages(stages)
    spec = load_mapping(mapping) if mapping else None
    when = parse_time(exported_at, "--exported-at").to_pydatetime() if exported_at else None
    store_file = db_path(db)
    try:
        result = load_export(
            path,
            store_file,
            stages=config,
            mapping=spec,
            exported_at=when,
            strict=strict,
            encoding=encoding,
            currency=currency,
            default_currency=settings().currency,
            rates=rates,
        )
    except ImportValidationError as err:
        if problems_out is not None:
            n = write_problems_csv(err.problems, problems_out)
            echo(f"wrote {n:,} problems to {problems_out}", err=True)
        raise DataImportError(f"import refused, {store_file} unchanged:\n{err}") from None
    if problems_out is not None:
        write_problems_csv([], problems_out)
    report = result.report
    for note in result.notes:
        echo(f"note: {note}")
    added = ", ".join(f"{k} +{v:,}" for k, v in report.inserted.items())
    recorded = (
        f" ({report.recorded_changes:,} changes recorded from newer deal rows)"
        if report.recorded_changes
        else ""
    )
    echo(
        f"loaded {path} into {store_file}: {added}; "
        f"{report.updated_deals:,} deals updated{recorded}"
    )


def _money(value: float | None) -> str:
    return "unknown" if value is None else f"{value:,.0f}"


@app.command()
def summary(db: DbOption = None, stages: StagesOption = None) -> None:
    """Deals by stage and the open pipeline value."""
    from rich.table import Table

    from features.data.currency import corporate_currency, current_amounts
    from features.pipeline.summary import summarize

    ctx = open_context(db, stages)
    deals = ctx.tables.deals  # amounts in the corporate currency, as the other reports show them
    result = summarize(
        deals.assign(amount=current_amounts(deals, ctx.tables.exchange_rates)), ctx.stages
    )
    out = console()
    if result.deals == 0:
        out.print(f"{db_path(db)}: the store holds no deals yet")
        return
    table = Table("stage", "deals", "value", title=f"{db_path(db)}: deals by stage")
    for row in result.stages:
        table.add_row(row.label, f"{row.deals:,}", _money(row.value))
    out.print(table)
    when = f"{result.as_of:%Y-%m-%d}" if result.as_of is not None else "an unknown date"
    missing = result.open_deals - result.open_with_amount
    note = ""
    if missing and result.open_value is not None:
        note = f" ({missing:,} open deal{'s' if missing != 1 else ''} without an amount)"
    code = corporate_currency(ctx.tables.exchange_rates)
    unit = f" {code}" if code and result.open_value is not None else ""
    out.print(
        f"open pipeline as of {when}: {result.open_deals:,} deals, "
        f"{_money(result.open_value)}{unit} total value{note}"
    )


def _register_commands() -> None:
    from serving.cli import audit as cli_audit
    from serving.cli import forecast as cli_forecast
    from serving.cli import mapping as cli_mapping
    from serving.cli import models as cli_models
    from serving.cli import pipeline as cli_pipeline
    from serving.cli import server as cli_server
    from serving.cli import signals as cli_signals

    cli_signals.register(app)
    cli_pipeline.register(app)
    cli_server.register(app)
    cli_audit.register(app)
    cli_mapping.register(app)
    cli_models.register(app)
    cli_forecast.register(app)


_register_commands()
