"""One error hierarchy for what a user can act on.

Every error a user (or an API caller) should see is a :class:`PipecastError`; its message names
what is wrong and where (file, row, column, field, key). The CLI prints it as one line (or one
block) with the class's ``exit_code``; the API maps the classes to status codes in one place.
Anything else that escapes is an internal error: a bug, reported as such.
"""

from __future__ import annotations


class PipecastError(Exception):
    """Base of every user-facing error. ``str(err)`` is what the user sees."""

    exit_code: int = 1


class InputError(PipecastError, ValueError):
    """An argument or request value is invalid (a date that is not a date, an unknown option).

    ``field`` names the argument or request field when one value is at fault, so the API can
    answer with field-level detail.
    """

    exit_code = 2

    def __init__(self, message: str = "", *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ConfigError(InputError):
    """A configuration file (stages, mapping, settings) is invalid; the message names the key."""


class DataImportError(PipecastError, ValueError):
    """An export cannot be imported; nothing was written."""


class NotFoundError(PipecastError, LookupError):
    """Something asked for by name does not exist (a deal, a team, a stage, a store, a model)."""

    def __str__(self) -> str:  # LookupError would quote a single argument like KeyError does not
        return str(self.args[0]) if self.args else ""


class NotEnoughDataError(PipecastError, ValueError):
    """There is too little data for what was asked (too few closed deals to train a model)."""


class StoreError(PipecastError):
    """The store cannot be used as asked (not a pipecast store, unreadable, disk full)."""


class StoreBusyError(StoreError):
    """Another process holds the store for writing; try again when it is done."""

    exit_code = 3
