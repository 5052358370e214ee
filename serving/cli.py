"""The ``pipecast`` command-line tool."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="pipecast: probabilistic pipeline forecasting and deal scoring.", no_args_is_help=True
)


@app.callback()
def main() -> None:
    """pipecast: probabilistic pipeline forecasting and deal scoring."""


@app.command()
def stages(
    config: str | None = typer.Option(None, "--stages", help="stage configuration file"),
) -> None:
    """Show the stage configuration in force."""
    from rich.console import Console
    from rich.table import Table

    from features.stages import load_stage_config

    cfg = load_stage_config(config)
    table = Table("order", "key", "label", "kind", "p(win)", "typical days")
    for s in sorted(cfg.stages, key=lambda s: s.order):
        dur = f"{s.duration_days.min}-{s.duration_days.max}" if s.duration_days else "-"
        table.add_row(str(s.order), s.key, s.label, s.kind.value, f"{s.win_probability:.0%}", dur)
    Console().print(table)


def _register_commands() -> None:
    from serving import cli_pipeline, cli_signals

    cli_signals.register(app)
    cli_pipeline.register(app)


_register_commands()
