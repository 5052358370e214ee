"""The ``pipecast`` command-line tool: one module per group of commands, ``main`` holds the app."""

from serving.cli.main import app

__all__ = ["app"]
