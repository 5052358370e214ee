"""``pipecast mapping suggest EXPORT_DIR``: a starting mapping for a CRM export.

The suggestion itself is ``features.data.importer.suggest``; this module only reads the options,
prints the YAML (or writes it to ``--out``) and says what is left to fill in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from features.errors import InputError
from serving.cli.app import PipecastApp
from serving.cli.common import StagesOption, echo, load_stages, output_file

mapping_app = PipecastApp(
    help="Write a mapping for a CRM export (Salesforce, HubSpot).", no_args_is_help=True
)


@mapping_app.command("suggest")
def suggest(
    export: Annotated[Path, typer.Argument(help="folder of the CRM export's CSV files")],
    out: Annotated[
        Path | None, typer.Option("--out", help="write the mapping here (default: print it)")
    ] = None,
    crm: Annotated[
        str | None, typer.Option("--crm", help="salesforce or hubspot (default: detected)")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite --out if it exists")] = False,
    stages: StagesOption = None,
) -> None:
    """Print a mapping for EXPORT: every value it could not place is marked "?" to fill in."""
    from features.data.importer.suggest import suggest_mapping

    if out is not None:
        output_file(out, "--out")
        if out.exists() and not force:
            raise InputError(f"--out: {out} exists; pass --force to overwrite it")
    suggestion = suggest_mapping(export, load_stages(stages), crm)
    if out is None:
        typer.echo(suggestion.text, nl=False)
    else:
        out.write_text(suggestion.text, encoding="utf-8")
    target = out or "the mapping"
    if suggestion.marks:
        shown = ", ".join(suggestion.marks[:8])
        more = f" and {len(suggestion.marks) - 8} more" if len(suggestion.marks) > 8 else ""
        echo(
            f'{len(suggestion.marks)} values marked "?" to fill in, in {target}: {shown}{more}; '
            f"then: pipecast load {export} --mapping {out or 'MAPPING.yaml'}",
            err=True,
        )
    else:
        echo(
            f"nothing to fill in: pipecast load {export} --mapping {out or 'MAPPING.yaml'}",
            err=True,
        )


def register(app: typer.Typer) -> None:
    """Add the ``mapping`` command group to the ``pipecast`` app."""
    app.add_typer(mapping_app, name="mapping")
