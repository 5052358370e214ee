"""``pipecast`` data commands (generate, load, summary, stages); the others register from their
modules."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated

import typer

from features.data.calendar import to_timestamp
from features.data.stages import ConfigError
from serving.cli.app import app
from serving.cli.common import (
    DEFAULT_DB,
    DbOption,
    StagesOption,
    fail,
    load_stages,
    open_context,
)


@app.command()
def stages(config: StagesOption = None) -> None:
    """Show the stage configuration in force."""
    from rich.console import Console
    from rich.table import Table

    cfg = load_stages(config)
    table = Table("order", "key", "label", "kind", "p(win)", "typical days")
    for s in sorted(cfg.stages, key=lambda s: s.order):
        dur = f"{s.duration_days.min}-{s.duration_days.max}" if s.duration_days else "-"
        table.add_row(str(s.order), s.key, s.label, s.kind.value, f"{s.win_probability:.0%}", dur)
    Console().print(table)


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
        raise fail(f"--format must be parquet or csv, got {fmt!r}")
    try:
        first, last = date.fromisoformat(start), date.fromisoformat(end)
    except ValueError as err:
        raise fail(f"--start/--end: {err}") from None
    if last <= first:
        raise fail(f"--end ({last}) must be after --start ({first})")
    config = load_stages(stages)
    with Progress(transient=True) as progress:
        task = progress.add_task("simulating deals", total=deals)

        def report(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        data = run_generator(deals, seed, start=first, end=last, stages=config, progress=report)
    paths = write_dataset(data, out, fmt)  # type: ignore[arg-type]
    counts = ", ".join(f"{name} {len(frame):,}" for name, frame in data.tables.items())
    typer.echo(f"wrote {len(paths)} files to {out}/ ({counts}); truth in {out}/truth/")


@app.command()
def load(
    path: Annotated[Path, typer.Argument(help="folder (or single deals file) of the CRM export")],
    mapping: Annotated[
        Path | None, typer.Option("--mapping", help="mapping YAML for a foreign CRM export")
    ] = None,
    db: DbOption = DEFAULT_DB,
    stages: StagesOption = None,
    exported_at: Annotated[
        str | None, typer.Option("--exported-at", help="when the export was taken (ISO)")
    ] = None,
) -> None:
    """Import CSV/Parquet tables into the DuckDB store: all of it, or nothing."""
    from features.data.importer import ImportValidationError, read_export
    from features.data.mapping import load_mapping
    from features.data.store import Store

    config = load_stages(stages)
    try:
        spec = load_mapping(mapping) if mapping else None
    except ConfigError as err:
        raise fail(str(err)) from None
    when = to_timestamp(exported_at).to_pydatetime() if exported_at else None
    with Store(db) as store:
        known = store.deal_ids()
        try:
            result = read_export(
                path, mapping=spec, stages=config, exported_at=when, known_deal_ids=known
            )
        except ImportValidationError as err:
            typer.secho(f"import refused, {db} unchanged:", fg="red", err=True)
            typer.echo(str(err), err=True)
            raise typer.Exit(1) from None
        report = store.load(result.tables)
    for note in result.notes:
        typer.echo(f"note: {note}")
    added = ", ".join(f"{k} +{v:,}" for k, v in report.inserted.items())
    typer.echo(f"loaded {path} into {db}: {added}; {report.updated_deals:,} deals updated")


@app.command()
def summary(db: DbOption = DEFAULT_DB, stages: StagesOption = None) -> None:
    """Deals by stage and the open pipeline value."""
    from rich.console import Console
    from rich.table import Table

    ctx = open_context(db, stages)
    deals = ctx.tables.deals
    order = {s.key: s.order for s in ctx.stages.stages}
    by_stage = (
        deals.groupby("stage", observed=True)
        .agg(deals=("deal_id", "size"), value=("amount", "sum"))
        .reset_index()
    )
    by_stage["order"] = by_stage["stage"].map(order)
    table = Table("stage", "deals", "value", title=f"{db}: deals by stage")
    for row in by_stage.sort_values("order").itertuples():
        key = str(row.stage)
        label = ctx.stages.stage(key).label if key in order else key
        table.add_row(label, f"{row.deals:,}", f"{row.value:,.0f}")
    console = Console()
    console.print(table)
    open_deals = deals[deals["outcome"] == "open"]
    as_of = deals["observed_at"].max()
    console.print(
        f"open pipeline as of {as_of:%Y-%m-%d}: {len(open_deals):,} deals, "
        f"{open_deals['amount'].sum():,.0f} total value"
    )


def _register_commands() -> None:
    from serving.cli import forecast as cli_forecast
    from serving.cli import pipeline as cli_pipeline
    from serving.cli import signals as cli_signals

    cli_signals.register(app)
    cli_pipeline.register(app)
    cli_forecast.register(app)


_register_commands()
