"""CLI commands ``pipecast forecast`` and ``pipecast backtest``: every method side by side.

``forecast --quarter Q [--as-of D]``: P10/P50/P90, mean and P(>= target) beside the
stage-weighted, commit, best-case and historical-conversion forecasts (and the actual once the
quarter is over), the deals that move the P50 most, the distribution with the slipping deals
pulled in, and each rep's deals to work. ``backtest --quarters A..B --weeks 1,4,8``: every method
on every past quarter and week, scored against what was won.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from features.settings import DEFAULT_DB
from serving.cli import common as cli_common
from serving.cli.common import (
    DbOption,
    JsonOption,
    OwnerOption,
    StagesOption,
    TeamOption,
    money,
    pct,
)

PlotOption = Annotated[Path | None, typer.Option("--plot", help="write a PNG chart here")]
ScenariosOption = Annotated[int, typer.Option("--scenarios", min=200, help="Monte Carlo scenarios")]
SeedOption = Annotated[int, typer.Option("--seed", help="seed of sampling and simulation")]
ScorerOption = Annotated[
    str,
    typer.Option(
        "--scorer",
        help="deal scores: 'models' (win and slip models refitted per quarter, stage history "
        "where too little had closed) or 'stage-history' (the baseline alone)",
    ),
]


def _factory(scorer: str) -> Any:
    from features.errors import InputError
    from forecasting.scoring import ModelScorers, fit_stage_history

    if scorer == "models":
        return ModelScorers()
    if scorer == "stage-history":
        return fit_stage_history
    raise InputError(f"--scorer: {scorer!r} is not one of 'models', 'stage-history'")


def _forecast_as_of(quarter: str, as_of: str | None, tables: Any) -> Any:
    import pandas as pd

    from features.data.calendar import quarter_bounds
    from features.errors import InputError
    from features.signals.snapshots import data_end

    try:
        start, end = quarter_bounds(quarter)
        if len(quarter) != 6 or quarter[4] != "Q" or quarter[5] not in "1234":
            raise ValueError("expected YYYYQn")
    except ValueError as err:
        raise InputError(
            f"--quarter: cannot read {quarter!r} as a quarter (2025Q4): {err}"
        ) from None
    when = cli_common.parse_as_of(as_of) if as_of else min(end, data_end(tables))
    if not start <= when <= end:
        raise InputError(
            f"--as-of {pd.Timestamp(when):%Y-%m-%d} is outside {quarter} "
            f"({start:%Y-%m-%d}..{end:%Y-%m-%d}); forecast a quarter from a date inside it"
        )
    return when


def forecast(
    quarter: Annotated[str, typer.Option("--quarter", help="quarter to forecast, e.g. 2025Q4")],
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="date inside the quarter (default: data end)")
    ] = None,
    team: TeamOption = None,
    owner: OwnerOption = None,
    db: DbOption = DEFAULT_DB,
    stages: StagesOption = None,
    json: JsonOption = False,
    plot: PlotOption = None,
    scenarios: ScenariosOption = 4000,
    seed: SeedOption = 0,
    scorer: ScorerOption = "models",
    cache: Annotated[
        bool,
        typer.Option(
            "--cache/--no-cache",
            help="reuse the posterior and scores of the same store, date and configuration "
            "(kept beside the store in STORE.forecast-cache/)",
        ),
    ] = True,
    save_posterior: Annotated[
        Path | None, typer.Option("--save-posterior", help="save the fitted posterior (.nc)")
    ] = None,
    register: Annotated[
        bool, typer.Option("--register", help="register the posterior in MLflow")
    ] = False,
) -> None:
    """This quarter's revenue distribution beside every rule-based forecast, and why."""
    from forecasting.forecast import ForecastEngine, run_forecast
    from forecasting.history import ScorerCache
    from forecasting.model import ModelConfig
    from forecasting.simulate import SimOptions

    factory = _factory(scorer)
    ctx = cli_common.open_context(db, stages)
    when = _forecast_as_of(quarter, as_of, ctx.tables)
    config = ModelConfig(seed=seed)
    engine = ForecastEngine(
        ctx.tables,
        ctx.stages,
        ScorerCache(factory),
        config,
        SimOptions(n_scenarios=scenarios, seed=seed),
    )
    fitted = _fitted(engine, when, db, scorer, use_cache=cache)
    fc = run_forecast(engine, when, team=team, owner=owner, explain=True, fitted=fitted)
    if save_posterior is not None:
        fitted[0].save(save_posterior)
    if register:
        from training.forecast_registry import register_posterior

        path = fitted[0].save(save_posterior or Path("forecast-posterior.nc"))
        fc.model["registered"] = register_posterior(
            path,
            config.model_dump(),
            fitted[0].diagnostics.__dict__,
            fitted[0].diagnostics.ok(config),
        )
    if plot is not None:
        from forecasting.plots import plot_forecast

        plot_forecast(fc, plot)
    if json:
        cli_common.print_json(fc.to_dict())
        return
    _print_forecast(fc)
    if plot is not None:
        typer.echo(f"plot written to {plot}")


def _fitted(engine: Any, when: Any, db: str | None, scorer: str, *, use_cache: bool) -> Any:
    """The engine's posterior for ``when``: from the forecast cache, or fitted (and cached)."""
    from forecasting.cache import ForecastCache, cache_key

    store_cache = None
    if use_cache:
        root = cli_common.db_path(db).with_suffix(".forecast-cache")
        recipe = f"{scorer}:{getattr(engine.scorers.factory, 'config', None)!r}"
        store_cache = ForecastCache(root, cache_key(engine.tables, when, engine.config, recipe))
        hit = store_cache.load(engine.config)
        if hit is not None:
            fitted, scored, notes = hit
            engine.scored_cache[when] = scored
            engine.notes.update({**notes, "cache": "hit"})
            return fitted
    with Console(stderr=True).status("fitting the deal models and the forecast model"):
        fitted = engine.fit_model(when)
        scored = engine.scored(when)
    if store_cache is not None:
        notes = engine.scorer_notes(when, fitted[0].levels["quarters"])
        store_cache.save(fitted, scored, notes)
    return fitted


def _distribution_row(table: Table, method: str, forecast: str, summary: Any) -> None:
    """A row of the forecast table for a simulated distribution: P10, P90 and P(>= target)."""
    vs_target = "" if summary.p_target is None else f"P(>= target) {pct(summary.p_target)}"
    table.add_row(method, forecast, money(summary.p10), money(summary.p90), vs_target)


def _print_forecast(fc: Any) -> None:
    console = Console(width=160)
    d = fc.pipecast
    head = Table("method", "forecast", "P10", "P90", "vs target", title=(
        f"{fc.quarter} forecast, {fc.scope}, as of {fc.as_of[:10]} "
        f"(won so far {money(fc.won_so_far)}, target {money(fc.target)})"
    ))  # fmt: skip
    _distribution_row(head, "pipecast P50 (mean)", f"{money(d.p50)} ({money(d.mean)})", d)
    ind = fc.independent_stage_sim
    _distribution_row(head, "independent coin flips P50", money(ind.p50), ind)
    for name, value in fc.rules.items():
        share = "" if (value is None or not fc.target) else f"{value / fc.target:.0%} of target"
        head.add_row(name.replace("_", " "), money(value), "", "", share)
    if fc.actual is not None:
        head.add_row("actual", money(fc.actual), "", "", "")
    console.print(head)
    if fc.drivers:
        t = Table(
            "deal",
            "owner",
            "stage",
            "amount",
            "close",
            "P(won this Q)",
            "P50 if won",
            "P50 if not",
            "swing",
            title="Deals that move the P50 most",
        )
        for x in fc.drivers:
            t.add_row(
                x.deal_id,
                x.owner,
                x.stage or "?",
                money(x.amount),
                x.expected_close_date or "-",
                pct(x.p_won_this_quarter),
                money(x.p50_if_won),
                money(x.p50_if_not),
                money(x.swing),
            )
        console.print(t)
    if fc.pulled_in is not None:
        p = fc.pulled_in
        console.print(
            f"If the {fc.pulled_in_deals} deals the reps expect this quarter all closed in time "
            f"when they win: P10 {money(p.p10)}, P50 {money(p.p50)}, P90 {money(p.p90)} "
            f"(P50 {money(p.p50 - d.p50)} more)."
        )
    if fc.top_deals:
        t = Table(
            "rep",
            "deal",
            "stage",
            "amount",
            "close",
            "P(won this Q)",
            title="Each rep's deals to work (most revenue at stake this quarter)",
        )
        for rep, deals in fc.top_deals.items():
            for i, x in enumerate(deals):
                t.add_row(
                    rep if i == 0 else "",
                    str(x["deal_id"]),
                    str(x["stage"]),
                    money(x["amount"]),
                    str(x["expected_close_date"] or "-")[:10],
                    pct(x["p_won_in_quarter"]),
                )
        console.print(t)
    diag = fc.model["diagnostics"]
    rhat = "-" if diag["max_rhat"] is None else f"{diag['max_rhat']:.3f}"
    console.print(
        f"model {fc.model['config_hash']}: {diag['divergences']} divergences, r-hat "
        f"{rhat}, ESS {diag['min_ess_bulk']:.0f}, fitted on "
        f"{', '.join(fc.model['history_quarters'])} in {diag['seconds']:.0f}s; "
        f"{fc.model['scenarios']} scenarios over {fc.model['open_deals']} open deals"
    )
    history = sorted(set(fc.model.get("history_scorers", {}).values()))
    cached = " (posterior and scores from the forecast cache)" if fc.model.get("cache") else ""
    console.print(
        f"deals scored by: {fc.model.get('scorer', '?')}; history quarters by: "
        f"{', '.join(history) or '?'}{cached}"
    )
    if cold := fc.model.get("history_in_warmup"):
        console.print(
            f"note: {', '.join(cold)} scored by scorers fitted before the data's warm-up "
            f"ended ({str(fc.model.get('warmup_end', '?'))[:10]}): they learnt only from the "
            "deals that closed fast and over-promise; the forecast's calibration leans on them"
        )


def _weeks(spec: str) -> list[int]:
    from features.errors import InputError

    try:
        weeks = sorted({int(w) for w in spec.split(",") if w.strip()})
    except ValueError:
        raise InputError(f"--weeks: expected numbers like 1,4,8, got {spec!r}") from None
    if not weeks:
        raise InputError("--weeks: give at least one week, e.g. 1,4,8")
    return weeks


def backtest(
    quarters: Annotated[
        str | None, typer.Option("--quarters", help="A..B (default: the last 8 complete)")
    ] = None,
    weeks: Annotated[str, typer.Option("--weeks", help="weeks of quarter, e.g. 1,4,8")] = "1,4,8",
    db: DbOption = DEFAULT_DB,
    stages: StagesOption = None,
    json: JsonOption = False,
    plot: PlotOption = None,
    scenarios: ScenariosOption = 4000,
    seed: SeedOption = 0,
    scorer: ScorerOption = "models",
    log_mlflow: Annotated[
        bool, typer.Option("--mlflow/--no-mlflow", help="log the backtest to MLflow")
    ] = True,
) -> None:
    """Every method on past quarters at given weeks, scored against the actual."""
    from rich.progress import Progress

    from forecasting.backtest import default_quarters, quarter_range, run_backtest
    from forecasting.model import ModelConfig
    from forecasting.simulate import SimOptions

    factory = _factory(scorer)
    ctx = cli_common.open_context(db, stages)
    qs = quarter_range(quarters) if quarters else default_quarters(ctx.tables)
    ws = _weeks(weeks)
    with Progress(transient=True, console=Console(stderr=True)) as bar:
        task = bar.add_task("backtest", total=len(qs) * len(ws))

        def report(done: int, total: int, label: str) -> None:
            bar.update(task, completed=done, total=total, description=f"backtest {label}")

        result = run_backtest(
            ctx.tables,
            ctx.stages,
            quarters=qs,
            weeks=ws,
            factory=factory,
            config=ModelConfig(seed=seed),
            options=SimOptions(n_scenarios=scenarios, seed=seed),
            progress=report,
        )
    if plot is not None:
        from forecasting.plots import plot_backtest

        plot_backtest(result, plot)
    payload = result.to_dict()
    if log_mlflow:
        from training.forecast_registry import log_backtest

        payload["mlflow_run_id"] = log_backtest(
            result.frame(), result.summary, None if plot is None else Path(plot)
        )
    if json:
        cli_common.print_json(payload)
        return
    _print_backtest(result)
    if plot is not None:
        typer.echo(f"plot written to {plot}")


def _print_backtest(result: Any) -> None:
    s = result.summary
    console = Console(width=160)
    methods = list(next(iter(s["median_abs_pct_error"].values())).keys())
    by_week = s["mean_crps_by_week"]
    t = Table(
        "method",
        *[f"week {w}" for w in s["weeks"]],
        *[f"CRPS week {w}" for w in s["weeks"]],
        "mean CRPS",
        title=f"Median absolute % error and mean CRPS over {s['quarters']} quarters",
    )
    for m in methods:
        t.add_row(
            m,
            *[pct(s["median_abs_pct_error"][str(w)][m]) for w in s["weeks"]],
            *[money(by_week[str(w)].get(m)) for w in s["weeks"]],
            money(s["mean_crps"].get(m)),
        )
    console.print(t)
    console.print(
        f"pipecast P10-P90 held the actual in {pct(s['coverage_p10_p90'])} of "
        f"{s['quarter_weeks']} quarter-weeks (independent coin flips: "
        f"{pct(s['coverage_p10_p90_independent'])}); CRPS vs independent "
        f"{pct(s['crps_vs_independent'])}"
    )
    gaps = Table(
        "week",
        "rule",
        "pipecast - rule",
        "90% interval",
        "pipecast lower in",
        "reads as",
        title="pipecast against each rule, quarter by quarter (median error gap in points)",
    )
    for week, by_rule in s["vs_rules"].items():
        for rule, g in by_rule.items():
            gaps.add_row(
                week,
                rule,
                _points(g["gap"]),
                "-"
                if g["gap_low"] is None
                else f"{_points(g['gap_low'])} to {_points(g['gap_high'])}",
                f"{g['better']} of {g['quarters']} quarters",
                {
                    "lower": "pipecast lower",
                    "higher": "pipecast higher",
                    "tie": "a tie (within the quarters' spread)",
                }.get(g["verdict"], g["verdict"]),
            )
    console.print(gaps)


def _points(value: float) -> str:
    return f"{100 * value:+.1f}"


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``pipecast`` app."""
    app.command("forecast")(forecast)
    app.command("backtest")(backtest)
