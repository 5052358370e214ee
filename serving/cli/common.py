"""Shared CLI plumbing: options and their defaults, parsing them, opening the store, safe output.

Defaults come from :func:`features.settings.get_settings` (``PIPECAST_DB``, ``PIPECAST_STAGES``),
never from constants here. Option values are checked here and refused with an
:class:`~features.errors.InputError` naming the option; the guard in ``serving.cli.app`` prints it.
Everything printed that may carry text from a CRM export goes through :func:`safe_text`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer
from rich.console import Console

from features.data.calendar import parse_when
from features.data.schema import CanonicalTables
from features.data.stages import StageConfig, load_stage_config
from features.errors import InputError
from features.settings import Settings, get_settings

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="DuckDB store file [default: $PIPECAST_DB, else pipecast.duckdb]",
        show_default=False,
    ),
]
StagesOption = Annotated[
    str | None,
    typer.Option(
        "--stages",
        help="stage configuration YAML [default: $PIPECAST_STAGES, else the seed's stages]",
        show_default=False,
    ),
]
AsOfOption = Annotated[
    str, typer.Option("--as-of", help="date (YYYY-MM-DD, end of that day) or timestamp")
]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON instead of tables")]
TeamOption = Annotated[str | None, typer.Option("--team", help="limit to one sales team")]
OwnerOption = Annotated[str | None, typer.Option("--owner", help="limit to one rep")]

# C0 and C1 control characters and DEL, except newline and tab: an ESC in a deal name must not
# recolour, move the cursor of or retitle the user's terminal.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class Context:
    tables: CanonicalTables
    stages: StageConfig


def settings() -> Settings:
    """The settings of this invocation (the app's callback re-reads the environment for each)."""
    return get_settings()


def db_path(db: str | None) -> Path:
    """The store file: ``--db``, else ``PIPECAST_DB``, else the default."""
    if db is None:
        return settings().db
    if not db.strip():
        raise InputError("--db: empty path; give a store file such as pipecast.duckdb")
    return Path(db)


def load_stages(path: str | None) -> StageConfig:
    """The stage configuration: ``--stages``, else ``PIPECAST_STAGES``, else the seed's."""
    chosen = path if path is not None else settings().stages
    return load_stage_config(chosen)


def parse_time(value: str, option: str) -> pd.Timestamp:
    """A date or timestamp option; ``YYYY-MM-DD`` means the end of that day."""
    return parse_when(value, option)


def parse_as_of(value: str) -> pd.Timestamp:
    return parse_time(value, "--as-of")


def parse_day(value: str, option: str) -> date:
    """A calendar date option (YYYY-MM-DD) in the supported range."""
    try:
        day = date.fromisoformat(value.strip())
    except ValueError:
        raise InputError(
            f"{option}: cannot read {safe_text(value)!r} as a date (YYYY-MM-DD)"
        ) from None
    parse_time(day.isoformat(), option)  # the range check
    return day


def output_file(path: Path, option: str) -> Path:
    """A file to write: not a directory, in a folder that exists or can be made."""
    if path.is_dir() or str(path).endswith(("/", "\\")):
        raise InputError(f"{option}: {path} is a directory; give a file name")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{option}: {parent} is a file, not a directory")
            break
    return path


def open_context(db: str | None, stages: str | None) -> Context:
    """Read every table of the store (read-only: works beside other readers and a load)."""
    from features.data.store import Store

    config = load_stages(stages)
    with Store(db_path(db)) as store:
        tables = store.tables()
    return Context(tables=tables, stages=config)


# --- output -------------------------------------------------------------------------------------
@contextmanager
def date_progress(label: str, *, disable: bool = False) -> Iterator[Callable[[int, int], None]]:
    """A transient "done of total" bar over snapshot dates; yields the ``progress(done, total)``
    callback that moves it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), transient=True, disable=disable
    ) as bar:
        task = bar.add_task("dates", total=None)

        def tick(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield tick


def money(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def safe_text(value: object) -> str:
    """Text for the terminal: control characters shown as escapes (``\\x1b``), never sent raw."""
    text = value if isinstance(value, str) else str(value)
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class SafeConsole(Console):
    """A rich console for data: no markup or highlighting, control characters escaped.

    A deal called ``[red]x`` prints as typed; an ESC in a next step cannot reach the terminal.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("markup", False)
        kwargs.setdefault("highlight", False)
        kwargs.setdefault("emoji", False)
        super().__init__(**kwargs)

    def render_str(self, text: str, **kwargs: Any) -> Any:
        return super().render_str(safe_text(text), **kwargs)


def console(**kwargs: Any) -> Console:
    return SafeConsole(**kwargs)


def echo(message: object, *, err: bool = False) -> None:
    """``typer.echo`` for lines that may carry export data."""
    typer.echo(safe_text(message), err=err)


def _default(o: Any) -> Any:
    if isinstance(o, pd.Timestamp | date):
        return o.isoformat()
    if hasattr(o, "item"):
        return o.item()
    if pd.isna(o):
        return None
    return str(o)


def print_json(payload: Any) -> None:
    # ensure_ascii (the default) writes control characters as \\u001b escapes: terminal-safe.
    typer.echo(json.dumps(payload, default=_default, indent=2, allow_nan=False))
