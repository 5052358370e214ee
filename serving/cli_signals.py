"""CLI commands for point-in-time deal signals and training snapshots (filled in by issue 3)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``pipecast`` app."""
