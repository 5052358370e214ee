"""The Typer app of ``pipecast`` and how it reports errors: one line for a user's mistake.

Every command is registered through :class:`PipecastApp`, which runs it inside one guard:

- a :class:`~features.errors.PipecastError` (bad input, a refused import, a busy store...) prints
  its message, no traceback, and exits with the error's ``exit_code``;
- Ctrl-C prints "interrupted" and exits 130 (a load in progress leaves the store as it was);
- anything else is a bug: one line saying so, the exception and where it was raised, exit 70.

``pipecast --debug CMD`` (or ``PIPECAST_DEBUG=1``) lets the exception through with its traceback.
Messages pass through :func:`serving.cli.common.safe_text`: they may quote values of an export.
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from features.errors import PipecastError
from features.settings import get_settings
from serving.cli.common import safe_text

F = TypeVar("F", bound=Callable[..., Any])
EXIT_INTERRUPTED = 130
EXIT_INTERNAL = 70
_ROOT = Path(__file__).resolve().parents[2]


# Set by the app's callback for the invocation under way.
_invocation = {"debug": False}


def debugging() -> bool:
    """True when ``--debug`` was given to the app (or ``PIPECAST_DEBUG`` is set)."""
    if _invocation["debug"]:
        return True
    try:
        return get_settings().debug
    except PipecastError:  # an invalid environment is reported by the command itself
        return False


def _framework(err: BaseException) -> bool:
    """Exits, aborts and usage errors of the CLI framework carry their own exit code and text."""
    return type(err).__module__.startswith("typer")


def _where(err: BaseException) -> str:
    """The innermost frame of pipecast's own code, as ``path:line in function``."""
    frames = traceback.extract_tb(err.__traceback__)
    ours = [f for f in frames if str(_ROOT) in f.filename and "site-packages" not in f.filename]
    frame = (ours or frames)[-1] if (ours or frames) else None
    if frame is None:
        return "unknown place"
    path = Path(frame.filename)
    shown = path.relative_to(_ROOT) if path.is_relative_to(_ROOT) else path
    return f"{shown}:{frame.lineno} in {frame.name}"


def guarded(fn: F) -> F:
    """Run a command so that users see messages, not tracebacks (see the module docstring)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PipecastError as err:
            if debugging():
                raise
            typer.secho(safe_text(err), fg="red", err=True)
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            if debugging():
                raise
            typer.secho(
                "interrupted: stopped before the end (a load that had not finished left the "
                "store as it was)",
                fg="red",
                err=True,
            )
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as err:
            if debugging() or _framework(err):
                raise
            typer.secho(
                "internal error (a bug in pipecast, please report it): "
                + safe_text(f"{type(err).__name__}: {err} [at {_where(err)}]")
                + "; run `pipecast --debug ...` for the traceback",
                fg="red",
                err=True,
            )
            raise typer.Exit(EXIT_INTERNAL) from None

    return run  # type: ignore[return-value]


class PipecastApp(typer.Typer):
    """A Typer app whose commands run inside :func:`guarded`."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[F], F]:
        register = super().command(*args, **kwargs)

        def decorator(fn: F) -> F:
            register(guarded(fn))
            return fn

        return decorator


app = PipecastApp(
    help="pipecast: probabilistic pipeline forecasting and deal scoring.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    debug: bool = typer.Option(
        False, "--debug", help="show the full traceback of an error (or PIPECAST_DEBUG=1)"
    ),
) -> None:
    """pipecast: probabilistic pipeline forecasting and deal scoring."""
    _invocation["debug"] = debug
    # Each invocation reads the environment afresh (tests run many invocations in one process).
    get_settings.cache_clear()
