"""CLI commands for point-in-time deal signals and training snapshots.

``pipecast signals`` shows what was known about the open deals on a date (the same code that feeds
the models); ``pipecast snapshots`` writes the weekly training rows to Parquet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import typer

from features.errors import InputError, NotFoundError
from serving.cli import common as cli_common
from serving.cli.common import (
    AsOfOption,
    DbOption,
    JsonOption,
    StagesOption,
    console,
    echo,
    output_file,
    parse_as_of,
    print_json,
)

# The columns of the overview table (signal, short header): enough to see which deals need work.
KEY_SIGNALS: tuple[tuple[str, str], ...] = (
    ("stage", "stage"),
    ("days_in_stage", "days in stage"),
    ("stage_norm_ratio", "x norm"),
    ("amount", "amount"),
    ("days_to_expected_close", "days to close"),
    ("close_date_push_count", "pushes"),
    ("days_since_last_activity", "idle days"),
    ("activities_total_30d", "acts 30d"),
    ("n_stakeholders", "people"),
    ("forecast_category", "category"),
)

CustomOption = Annotated[
    list[str] | None,
    typer.Option(
        "--custom",
        help="mapped custom column to include (repeatable), e.g. industry; it carries no "
        "history, so it is missing before the export unless given with --static-custom",
    ),
]
StaticCustomOption = Annotated[
    list[str] | None,
    typer.Option(
        "--static-custom",
        help="custom column declared fixed at creation (repeatable): included, and known at "
        "every date (check it with `pipecast audit`)",
    ),
]


def _cell(value: Any) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "-"
    if isinstance(value, float | np.floating):
        number = float(value)
        return (
            f"{number:,.2f}" if abs(number) < 10 and not number.is_integer() else f"{number:,.0f}"
        )
    if isinstance(value, pd.Timestamp):
        return value.isoformat(sep=" ", timespec="seconds")
    return str(value)


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    clean = frame.astype(object).where(frame.notna(), None)
    return [{str(k): v for k, v in row.items()} for row in clean.to_dict(orient="records")]


def signals(
    as_of: AsOfOption,
    deal: Annotated[
        str | None, typer.Option("--deal", help="show every signal of one deal")
    ] = None,
    owner: Annotated[str | None, typer.Option("--owner", help="only this rep's deals")] = None,
    custom: CustomOption = None,
    static_custom: StaticCustomOption = None,
    db: DbOption = None,
    stages: StagesOption = None,
    as_json: JsonOption = False,
) -> None:
    """Point-in-time signals of the open deals as of a date (what a model saw then)."""
    from rich.table import Table

    from features.pipeline.scope import check_scope
    from features.signals import SIGNALS, compute_signals

    when = parse_as_of(as_of)
    ctx = cli_common.open_context(db, stages)
    # An owner nobody carries is a typo, not a rep without deals: as in metrics/hygiene/review.
    check_scope(ctx.tables, team=None, owner=owner)
    frame = compute_signals(
        ctx.tables,
        [when],
        ctx.stages,
        deal_ids=[deal] if deal else None,
        custom=custom or (),
        static_custom=static_custom or (),
    )
    if owner:
        frame = frame[frame["owner"] == owner]
    if deal and frame.empty:
        raise NotFoundError(f"--deal: {deal!r} was not open on {when.date()} (or does not exist)")
    frame = frame.reset_index(drop=True)

    if as_json:
        print_json({"as_of": when, "deals": _records(frame)})
        return
    out = console()
    if deal:
        row = frame.iloc[0]
        table = Table("signal", "value", "meaning", title=f"{deal} as of {when.date()}")
        for col in frame.columns:
            spec = SIGNALS.get(col)
            table.add_row(col, _cell(row[col]), spec.description if spec else "")
        out.print(table)
        return
    headers = [h for _, h in KEY_SIGNALS]
    table = Table("deal", "owner", *headers, title=f"open deals as of {when.date()}")
    for _, r in frame.iterrows():
        table.add_row(r["deal_id"], _cell(r["owner"]), *(_cell(r[c]) for c, _ in KEY_SIGNALS))
    out.print(table)
    out.print(f"{len(frame)} open deals")


def snapshots(
    start: Annotated[str, typer.Option("--start", help="first snapshot date (YYYY-MM-DD)")],
    end: Annotated[str, typer.Option("--end", help="last snapshot date (YYYY-MM-DD)")],
    out: Annotated[Path, typer.Option("--out", help="Parquet file to write")],
    freq: Annotated[str, typer.Option("--freq", help="pandas date frequency")] = "W-MON",
    custom: CustomOption = None,
    static_custom: StaticCustomOption = None,
    db: DbOption = None,
    stages: StagesOption = None,
) -> None:
    """Write labelled training snapshots (open deals at each date, signals and outcomes)."""
    from features.signals.snapshots import build_snapshots

    start_ts = cli_common.parse_time(start, "--start")
    end_ts = cli_common.parse_time(end, "--end")
    if end_ts < start_ts:
        raise InputError(f"--end ({end}) is before --start ({start})")
    try:
        pd.date_range(start_ts.normalize(), end_ts.normalize(), freq=freq)
    except ValueError as err:
        raise InputError(f"--freq: {err}") from None
    out = output_file(out, "--out")
    ctx = cli_common.open_context(db, stages)
    with cli_common.date_progress("snapshot dates") as tick:
        frame = build_snapshots(
            ctx.tables,
            ctx.stages,
            start=start_ts,
            end=end_ts,
            freq=freq,
            custom=custom or (),
            static_custom=static_custom or (),
            progress=tick,
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out, index=False)
    n_dates = frame["as_of"].nunique()
    censored = int(frame["censored"].sum()) if len(frame) else 0
    echo(
        f"wrote {len(frame):,} rows ({n_dates} dates, {frame['deal_id'].nunique():,} deals, "
        f"{censored:,} censored) to {out}"
    )


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``pipecast`` app."""
    app.command("signals")(signals)
    app.command("snapshots")(snapshots)
