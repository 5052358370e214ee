"""CLI commands for pipeline metrics, hygiene and the weekly review (filled in by issue 3)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``pipecast`` app."""
