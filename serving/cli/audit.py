"""``pipecast audit``: the leakage audit of an imported store (``features.signals.audit``).

It names what a model could learn that it should not know: tracked fields without history,
events after a deal's close, signals that tell won from lost suspiciously early, close dates
overwritten at the close. A table for people, ``--json`` for scripts.
"""

from __future__ import annotations

from typing import Annotated

import typer

from features.errors import InputError
from serving.cli import common as cli_common
from serving.cli.common import DbOption, JsonOption, StagesOption, print_json

StaticCustomOption = Annotated[
    list[str] | None,
    typer.Option(
        "--static-custom",
        help="custom column declared fixed at creation (repeatable), e.g. industry",
    ),
]


def audit(
    db: DbOption = None,
    stages: StagesOption = None,
    freq: Annotated[str, typer.Option("--freq", help="snapshot date frequency")] = "W-MON",
    max_deals: Annotated[
        int, typer.Option("--max-deals", min=1, help="closed deals sampled for the AUC check")
    ] = 5000,
    static_custom: StaticCustomOption = None,
    as_json: JsonOption = False,
) -> None:
    """Leakage audit: history coverage, events after the close, signals that know the outcome."""
    import pandas as pd

    from features.signals.audit import audit as run_audit

    try:
        pd.tseries.frequencies.to_offset(freq)
    except ValueError as err:
        raise InputError(f"--freq: {err}") from None
    ctx = cli_common.open_context(db, stages)
    with cli_common.date_progress("auditing snapshot dates", disable=as_json) as tick:
        report = run_audit(
            ctx.tables,
            ctx.stages,
            freq=freq,
            max_deals=max_deals,
            static_custom=static_custom or (),
            progress=tick,
        )
    if as_json:
        print_json(report.to_dict())
        return
    _print(report)


def _print(report: object) -> None:
    from rich.table import Table

    from features.signals.audit import FAR_AUC_LIMIT, FAR_DAYS, NEAR_DAYS, AuditReport

    assert isinstance(report, AuditReport)
    console = cli_common.console()
    end = report.data_end.date() if report.data_end is not None else "-"
    console.print(
        f"{report.deals:,} deals ({report.won:,} won, {report.lost:,} lost), data end {end}"
    )
    fields = Table("field", "status", "changes", "deals", "tracked since", "covered", "unlogged")
    for f in report.fields:
        since = f.tracked_since.date().isoformat() if f.tracked_since is not None else "-"
        fields.add_row(
            f.field,
            f.status,
            f"{f.changes:,}",
            f"{f.deals_with_changes:,}",
            since,
            f"{f.covered_share:.0%}",
            f"{f.unlogged_changes:,}",
        )
    console.print(fields)
    shown = sorted(report.separation, key=lambda s: -(s.auc_far or 0.0))[:10]
    title = (
        f"single-signal AUC for won, {FAR_DAYS}+ days and <= {NEAR_DAYS} days before the close "
        f"(flagged at >= {FAR_AUC_LIMIT:.2f} far from it)"
    )
    table = Table("column", "source", "far", "near", "flag", title=title)
    for s in shown:
        far = "-" if s.auc_far is None else f"{s.auc_far:.3f}"
        near = "-" if s.auc_near is None else f"{s.auc_near:.3f}"
        table.add_row(s.column, s.source, far, near, "LEAK?" if s.flagged else "")
    console.print(table)
    for line in report.findings:
        console.print(f"finding: {line}")
    for line in report.notes:
        console.print(f"note: {line}")
    if not report.findings:
        console.print("no leak found")


def register(app: typer.Typer) -> None:
    """Add this module's command to the ``pipecast`` app."""
    app.command("audit")(audit)
