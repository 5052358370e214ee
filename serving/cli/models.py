"""CLI commands for the models: ``train``, ``models``, ``promote`` and ``score``.

No business logic here: :mod:`training.train` measures and fits, :mod:`training.tracking` logs,
registers and promotes, :mod:`training.scoring` scores. MLflow is found through
``PIPECAST_MLFLOW_TRACKING_URI`` (default ``sqlite:///mlflow.db``, artifacts in ``./mlruns``) or
``--tracking-uri`` (e.g. ``http://127.0.0.1:5000`` for a tracking server).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import pandas as pd
import typer

from features.settings import DEFAULT_DB
from serving.cli import common as cli_common
from serving.cli.common import (
    AsOfOption,
    DbOption,
    JsonOption,
    StagesOption,
    parse_as_of,
    print_json,
)

if TYPE_CHECKING:
    from training.tracking import TrackingTarget

TrackingOption = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="MLflow tracking URI (default: PIPECAST_MLFLOW_TRACKING_URI or sqlite:///mlflow.db)",
    ),
]


def _threads() -> None:
    # LightGBM's OpenMP threads spin while waiting; on a shared machine that starves everyone.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _target(uri: str | None) -> TrackingTarget:
    from features.settings import get_settings
    from training.tracking import TrackingTarget

    settings = get_settings()
    return TrackingTarget(uri or settings.mlflow_tracking_uri, settings.mlflow_artifacts)


@contextmanager
def _progress(enabled: bool = True) -> Iterator[Callable[[str, int, int], None]]:
    """A progress bar per phase (snapshots, fitting, scoring) on stderr."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    tasks: dict[str, Any] = {}
    with Progress(
        TextColumn("{task.description:>10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=not enabled,
    ) as bar:

        def tick(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total)
            bar.update(tasks[phase], completed=done, total=total)

        yield tick


def _scores_line(name: str, s: dict[str, Any], keys: tuple[str, ...]) -> str:
    parts = [f"{k} {s[k]:.4f}" for k in keys if isinstance(s.get(k), float)]
    return f"  {name:<18} " + "  ".join(parts)


def train(
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="train as of this date (default: end of data)")
    ] = None,
    truth: Annotated[
        Path | None, typer.Option("--truth", help="generated data's truth folder: adds the oracle")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="YAML/JSON recipe overrides (windows, model parameters)"),
    ] = None,
    as_json: JsonOption = False,
    db: DbOption = DEFAULT_DB,
    stages: StagesOption = None,
    tracking_uri: TrackingOption = None,
) -> None:
    """Train the win and slip models, log them to MLflow, register them and run the gate."""
    _threads()
    from training.config import load_config, make_config
    from training.tracking import log_and_register
    from training.train import train as run_training

    when = parse_as_of(as_of) if as_of else None
    recipe = load_config(config) if config else make_config()
    ctx = cli_common.open_context(db, stages)
    target = _target(tracking_uri)
    with _progress() as tick:
        result = run_training(
            ctx.tables, ctx.stages, as_of=when, truth=truth, config=recipe, progress=tick
        )
        tick("mlflow", 0, 1)
        registered = log_and_register(result, target)
        tick("mlflow", 1, 1)
    report: dict[str, Any] = {"data": result.data_summary(), "tracking_uri": target.uri}
    report["data"].pop("features")
    for section, name in (("win", "win_probability"), ("slip", "slip")):
        reg = registered[name]
        body = result.win if section == "win" else result.slip
        report[section] = {
            "model": name,
            "version": reg.version,
            "alias": reg.alias,
            "promotion_reason": reg.reason,
            **body,
        }
    if as_json:
        print_json(report)
        return
    data = report["data"]
    typer.echo(
        f"trained on {data['train_rows']:,} snapshot rows; evaluated on {data['eval_rows']:,} "
        f"rows of {data['eval_window'][0]}..{data['eval_window'][1]}"
    )
    for section, keys in (
        ("win", ("auc", "brier", "log_loss", "ece")),
        ("slip", ("log_loss", "brier")),
    ):
        r = report[section]
        typer.echo(f"{r['model']} v{r['version']} -> {r['alias']}: {r['promotion_reason']}")
        typer.echo(_scores_line("pipecast", r["eval"], keys))
        for name, s in r["baselines"].items():
            typer.echo(_scores_line(name, s, keys))
        if r["oracle"]:
            typer.echo(_scores_line("oracle", r["oracle"], keys))
    for note in data["notes"]:
        typer.echo(f"note: {note}")


def models(as_json: JsonOption = False, tracking_uri: TrackingOption = None) -> None:
    """List registered model versions with their aliases and evaluation metrics."""
    from rich.console import Console
    from rich.table import Table

    from training.tracking import list_models

    target = _target(tracking_uri)
    rows = list_models(target)
    if as_json:
        print_json({"tracking_uri": target.uri, "versions": rows})
        return
    if not rows:
        typer.echo(f"no registered models in {target.uri}; run `pipecast train` first")
        return
    table = Table("model", "version", "aliases", "cut-off", "metrics", "why", title=target.uri)
    for r in rows:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in r["metrics"].items() if isinstance(v, float))
        table.add_row(
            r["name"],
            r["version"],
            ", ".join(r["aliases"]) or "-",
            (r["cutoff"] or "")[:10],
            metrics,
            r["promotion_reason"] or "",
        )
    Console().print(table)


def promote(
    name: Annotated[str, typer.Argument(help="win_probability or slip")],
    version: Annotated[str, typer.Argument(help="version number to make champion")],
    force: Annotated[
        bool, typer.Option("--force", help="promote even if worse or not comparable (logged)")
    ] = False,
    tracking_uri: TrackingOption = None,
) -> None:
    """Make a registered version the champion (the gate applies unless --force)."""
    from training.tracking import promote as run_promote

    reason = run_promote(_target(tracking_uri), name, version, force=force)
    typer.echo(f"{name} v{version} is champion: {reason}")


def score(
    as_of: AsOfOption,
    owner: Annotated[str | None, typer.Option("--owner", help="only this rep's deals")] = None,
    team: Annotated[str | None, typer.Option("--team", help="only this team's deals")] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="rows to show in the table")] = 25,
    as_json: JsonOption = False,
    db: DbOption = DEFAULT_DB,
    stages: StagesOption = None,
    tracking_uri: TrackingOption = None,
) -> None:
    """Open deals ranked by expected value this quarter, with reasons and next actions."""
    _threads()
    from training.errors import ModelNotFoundError
    from training.scoring import FallbackScorer
    from training.tracking import load_champion

    when = parse_as_of(as_of)
    ctx = cli_common.open_context(db, stages)
    target = _target(tracking_uri)
    scorer: Any
    try:
        scorer = load_champion(target)
    except ModelNotFoundError as err:
        scorer = FallbackScorer(reason=str(err))
    with _progress() as tick:
        frame = scorer.score(
            ctx.tables, ctx.stages, when, reasons=True, owner=owner, team=team, progress=tick
        )
    versions = frame.attrs.get("model_versions", {})
    fallback = frame.attrs.get("fallback_reason")
    note = frame.attrs.get("note")
    if note:
        typer.secho(f"note: {note}", fg="yellow", err=True)
    if as_json:
        print_json(
            {
                "as_of": when,
                "method": "historical_stage_rates" if fallback else "model",
                "fallback_reason": fallback,
                "model_versions": versions,
                "deals": _records(frame),
            }
        )
        return
    _print_scores(frame, when, versions, fallback, top)


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    clean = frame.astype(object).where(frame.notna(), None)
    return [{str(k): v for k, v in r.items()} for r in clean.to_dict(orient="records")]


def _money(value: Any) -> str:
    return "-" if value is None else f"{float(value):,.0f}"


def _print_scores(
    frame: pd.DataFrame,
    when: pd.Timestamp,
    versions: dict[str, Any],
    fallback: str | None,
    top: int,
) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if fallback:
        console.print(f"[yellow]no model: scored with historical stage win rates ({fallback})")
    else:
        used = ", ".join(f"{k} v{v}" for k, v in versions.items())
        console.print(f"scored with {used}")
    table = Table(
        "#",
        "deal",
        "stage",
        "amount",
        "p(win)",
        "p(won this q)",
        "expected value",
        "for",
        "against",
        "next action",
        title=f"open deals as of {when.date()}",
    )
    for r in _records(frame.head(top)):
        actions = r["next_actions"] or []
        table.add_row(
            str(r["rank"]),
            str(r["deal_id"]),
            str(r["stage"]),
            _money(r["amount"]),
            f"{r['p_win']:.0%}",
            f"{r['p_won_this_quarter']:.0%}",
            _money(r["expected_value"]),
            "; ".join(r["reasons_for"] or []),
            "; ".join(r["reasons_against"] or []),
            str(actions[0]) if actions else "",
        )
    console.print(table)
    console.print(f"{len(frame)} open deals")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``pipecast`` app."""
    app.command("train")(train)
    app.command("models")(models)
    app.command("promote")(promote)
    app.command("score")(score)
