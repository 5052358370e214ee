"""The answers the API and the web pages share, computed once per store version and cached.

Handlers and pages call these, so a page shows exactly the numbers the API returns for the same
scope, and a second request for the same thing is a cache hit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd

from features.data.calendar import parse_when
from features.errors import NotFoundError
from features.pipeline.hygiene import HygieneFlag, StageOutliers, hygiene_flags, stage_outliers
from features.pipeline.metrics import PipelineMetrics, compute_metrics, jsonable
from features.pipeline.review import ReviewPack, SortKey, review_pack
from features.signals.perdeal import DealRows, PartSignals, StoreFacts
from serving.api import whatif
from serving.api.errors import ServiceUnavailable
from serving.api.models import Served
from serving.api.settings import ApiSettings
from serving.api.state import AppState, Snapshot
from serving.auth import Caller, ForbiddenError, Role

AsOf = date | datetime | str | None


def model_versions(state: AppState) -> list[dict[str, Any]]:
    """Every registered version with aliases, metrics, baselines and reliability curves."""
    return state.registry.list_models()


def resolve_as_of(as_of: AsOf, snap: Snapshot) -> pd.Timestamp:
    """The as-of timestamp of a request: as given, or the store's latest export time."""
    if as_of is None:
        end = snap.data_end
        if end is None:
            raise ServiceUnavailable("the store holds no deals yet: import data first")
        return end
    return parse_when(as_of, "as_of")


def check_scope_exists(snap: Snapshot, *, team: str | None, owner: str | None) -> None:
    """404 for a team or owner the store has never seen (a typo should not look like 'zero')."""
    deals = snap.tables.deals
    if team is not None and not (deals["team"] == team).any():
        raise NotFoundError(f"unknown team {team!r}")
    if owner is not None and not (deals["owner"] == owner).any():
        raise NotFoundError(f"unknown owner {owner!r}")


def _owner_team(
    caller: Caller, snap: Snapshot, *, team: str | None, owner: str | None
) -> tuple[str | None, str | None]:
    """The (owner, team) filter of a request: 404 for a team or rep never seen, 403 for one
    outside the caller's scope (a manager asking for another team's rep too), never narrowed
    silently."""
    check_scope_exists(snap, team=team, owner=owner)
    owner, team = caller.scope(owner=owner, team=team)
    if caller.role is Role.MANAGER and owner is not None:
        deals = snap.tables.deals
        if not ((deals["owner"] == owner) & (deals["team"] == caller.team)).any():
            raise ForbiddenError(f"a manager key may only see its own team ({caller.team})")
    return owner, team


@dataclass(frozen=True)
class Scope:
    """The owner / team filter and the as-of date of a request, as the caller may see them."""

    owner: str | None
    team: str | None
    as_of: pd.Timestamp

    @property
    def label(self) -> str:
        return self.owner or self.team or "company"

    @property
    def as_of_day(self) -> str:
        return self.as_of.date().isoformat()


def request_scope(
    caller: Caller,
    snap: Snapshot,
    *,
    team: str | None,
    owner: str | None,
    as_of: AsOf,
    quarter: str | None = None,
) -> Scope:
    """The scope of an API request or a page: the caller's owner / team filter (checked first),
    then the as-of date (:func:`resolve_as_of`, or :func:`forecast_as_of` with a ``quarter``)."""
    owner, team = _owner_team(caller, snap, team=team, owner=owner)
    when = resolve_as_of(as_of, snap) if quarter is None else forecast_as_of(snap, quarter, as_of)
    return Scope(owner=owner, team=team, as_of=when)


def metrics(
    state: AppState, snap: Snapshot, as_of: pd.Timestamp, *, team: str | None, owner: str | None
) -> PipelineMetrics:
    return state.results.get_or_compute(
        ("metrics", snap.version, as_of, team, owner),
        lambda: compute_metrics(snap.tables, state.stages, as_of, team=team, owner=owner),
    )


def hygiene(
    state: AppState, snap: Snapshot, as_of: pd.Timestamp, *, team: str | None, owner: str | None
) -> tuple[list[HygieneFlag], list[StageOutliers]]:
    def compute() -> tuple[list[HygieneFlag], list[StageOutliers]]:
        flags = hygiene_flags(snap.tables, state.stages, as_of, owner=owner, team=team)
        return flags, stage_outliers(flags, state.stages)

    return state.results.get_or_compute(("hygiene", snap.version, as_of, team, owner), compute)


def review(
    state: AppState,
    snap: Snapshot,
    as_of: pd.Timestamp,
    *,
    team: str | None,
    owner: str | None,
    min_amount: float | None = None,
    sort: SortKey = "amount",
) -> ReviewPack:
    return state.results.get_or_compute(
        ("review", snap.version, as_of, team, owner, min_amount, sort),
        lambda: review_pack(
            snap.tables,
            state.stages,
            as_of,
            min_amount=min_amount,
            team=team,
            owner=owner,
            sort_by=sort,
        ),
    )


# --- deal scores ------------------------------------------------------------------------------
def all_scores(
    state: AppState, snap: Snapshot, served: Served, as_of: pd.Timestamp
) -> pd.DataFrame:
    """Every open deal scored and ranked company-wide (with reasons and next actions), once per
    store version, model versions and as-of; scopes are cut from it (:func:`scores`)."""
    return state.results.get_or_compute(
        ("scores", snap.version, served.key, as_of),
        lambda: served.scorer.score(snap.tables, state.stages, as_of, reasons=True),
    )


def scores_by_deal(
    state: AppState, snap: Snapshot, served: Served, as_of: pd.Timestamp
) -> dict[str, dict[str, Any]]:
    """:func:`all_scores` as plain rows by deal id (the what-if's ``before``), built once per
    store version, model versions and as-of instead of a frame lookup per request."""

    def compute() -> dict[str, dict[str, Any]]:
        frame = all_scores(state, snap, served, as_of)
        return {str(r["deal_id"]): r for r in records(frame)}

    return state.results.get_or_compute(
        ("scores-by-deal", snap.version, served.key, as_of), compute
    )


def what_if_basis(
    state: AppState, snap: Snapshot, as_of: pd.Timestamp
) -> tuple[DealRows, StoreFacts]:
    """Where each deal's rows are (once per store version) and what a deal's signals read of
    other deals at ``as_of`` (once per store version and as-of): see :mod:`serving.api.whatif`."""
    rows = state.results.get_or_compute(
        ("deal-rows", snap.version), lambda: DealRows.of(snap.tables)
    )
    facts = state.results.get_or_compute(
        ("store-facts", snap.version, as_of),
        lambda: StoreFacts.of(snap.tables, as_of, state.stages),
    )
    return rows, facts


def what_if_bases(
    state: AppState,
    snap: Snapshot,
    served: Served,
    rows: DealRows,
    facts: StoreFacts,
) -> Callable[[tuple[str, ...]], PartSignals | None]:
    """Deals' signals at ``facts.as_of`` as the store has them (:func:`whatif.base_signals`),
    from the second what-if of the same deals on (per store version, models and as-of): a
    what-if then recomputes only what its changes reach. The first gets None and is scored
    afresh, in one call with the other requests waiting (computing a base first would make a
    deal's first what-if slower, and such calls are not shared)."""
    models = served.models
    if models is None:  # the endpoint answers 503 before asking
        raise ServiceUnavailable("no champion model: a what-if needs one")

    def base(ids: tuple[str, ...]) -> PartSignals | None:
        key = ("what-if-base", snap.version, served.key, facts.as_of, ids)
        found, value = state.bases.peek(key)
        if found:
            return value  # type: ignore[no-any-return]
        if not state.asked.seen(key):
            return None
        return state.bases.get_or_compute(
            key, lambda: whatif.base_signals(models, rows, facts, state.stages, ids)
        )

    return base


def scores(
    state: AppState,
    snap: Snapshot,
    served: Served,
    as_of: pd.Timestamp,
    *,
    team: str | None,
    owner: str | None,
) -> pd.DataFrame:
    """The open deals of one scope, ranked by expected value (rank 1 = first to work).

    A deal's probabilities do not depend on the scope (team and rep statistics read every deal),
    so a scope is a filter of the company-wide ranking, renumbered.
    """
    frame = all_scores(state, snap, served, as_of)
    keep = pd.Series(True, index=frame.index)
    if owner is not None:
        keep &= frame["owner"] == owner
    if team is not None:
        keep &= frame["team"] == team
    out = frame.loc[keep].reset_index(drop=True)
    out["rank"] = range(1, len(out) + 1)
    out.attrs = dict(frame.attrs)
    return out


def scored_method(frame: pd.DataFrame) -> str:
    return (
        str(frame["method"].iloc[0])
        if len(frame)
        else ("historical_stage_rates" if frame.attrs.get("fallback_reason") else "model")
    )


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as plain dicts, missing values as None (JSON and templates alike)."""
    clean = frame.astype(object).where(frame.notna(), None)
    return [{str(k): v for k, v in r.items()} for r in clean.to_dict(orient="records")]


# --- one deal -----------------------------------------------------------------------------------
def deal_row(snap: Snapshot, caller: Caller, deal_id: str) -> pd.Series:
    """The store's row of a deal the caller may see; 404 for unknown *and* out-of-scope deals, so
    a rep cannot even learn that another rep's deal exists."""
    deals = snap.tables.deals
    match = deals.loc[deals["deal_id"] == deal_id]
    if match.empty:
        raise NotFoundError(f"unknown deal {deal_id!r}")
    row = match.iloc[0]
    if not caller.may_see(owner=_text(row["owner"]), team=_text(row["team"])):
        raise NotFoundError(f"unknown deal {deal_id!r}")
    return row


def check_visible(snap: Snapshot, caller: Caller, deal_id: str, rows: DealRows) -> None:
    """:func:`deal_row`'s 404s without building the row: the deal found by ``rows`` (of the
    same store version) instead of a scan of every deal (a 100-deal what-if did 100 scans)."""
    at = rows.positions["deals"].get(deal_id)
    if at is None or len(at) == 0:
        raise NotFoundError(f"unknown deal {deal_id!r}")
    deals, first = snap.tables.deals, int(at[0])
    owner, team = deals["owner"].iat[first], deals["team"].iat[first]
    if not caller.may_see(owner=_text(owner), team=_text(team)):
        raise NotFoundError(f"unknown deal {deal_id!r}")


def _text(value: Any) -> str | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _when(value: Any) -> str | None:
    if value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return None
    return pd.Timestamp(value).isoformat()


def _plain(value: Any) -> Any:
    """A JSON-safe scalar: numbers stay numbers, missing is None, timestamps are ISO text."""
    if value is None or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp | datetime | date):
        return pd.Timestamp(value).isoformat()
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating | float):
        return None if math.isnan(value) else float(value)
    if isinstance(value, list | tuple | dict):
        return value
    if pd.isna(value):
        return None
    return value if isinstance(value, int | str) else str(value)


def signal_rows(state: AppState, snap: Snapshot, as_of: pd.Timestamp) -> pd.DataFrame:
    """The signals of every deal open at ``as_of`` (one row each), computed once per version."""
    from training.scoring import open_deal_rows

    return state.results.get_or_compute(
        ("signals", snap.version, as_of),
        lambda: open_deal_rows(snap.tables, state.stages, as_of).set_index("deal_id"),
    )


def deal_history(snap: Snapshot, deal_id: str, as_of: pd.Timestamp) -> dict[str, list[Any]]:
    """A deal's stage path, field changes, activities and stakeholders up to ``as_of``."""
    t = snap.tables

    def of(frame: pd.DataFrame, when: str) -> pd.DataFrame:
        rows = frame.loc[(frame["deal_id"] == deal_id) & (frame[when] <= as_of)]
        return rows.sort_values(when, kind="stable")

    return {
        "stages": [
            {"at": _when(r.entered_at), "stage": _text(r.stage), "derived": bool(r.derived)}
            for r in of(t.stage_history, "entered_at").itertuples()
        ],
        "changes": [
            {
                "at": _when(r.changed_at),
                "field": str(r.field),
                "old": _text(r.old_value),
                "new": _text(r.new_value),
            }
            for r in of(t.field_history, "changed_at").itertuples()
        ],
        "activities": [
            {"at": _when(r.occurred_at), "type": _text(r.type)}
            for r in of(t.activities, "occurred_at").itertuples()
        ],
        "stakeholders": [
            {"at": _when(r.added_at), "role": _text(r.role)}
            for r in of(t.stakeholders, "added_at").itertuples()
        ],
    }


def deal_detail(
    state: AppState,
    snap: Snapshot,
    served: Served,
    caller: Caller,
    deal_id: str,
    as_of: pd.Timestamp,
) -> dict[str, Any]:
    """Everything the API and the page show about one deal the caller may see."""
    row = deal_row(snap, caller, deal_id)
    created = pd.Timestamp(row["created_at"])
    if created > as_of:
        raise NotFoundError(f"deal {deal_id!r} was created after {as_of:%Y-%m-%d}")
    frame = all_scores(state, snap, served, as_of)
    hit = frame.loc[frame["deal_id"] == deal_id]
    score = records(hit)[0] if len(hit) else None
    signals = signal_rows(state, snap, as_of)
    sig = (
        {str(k): _plain(v) for k, v in signals.loc[deal_id].items()}
        if deal_id in signals.index
        else {}
    )
    flags, _ = hygiene(state, snap, as_of, team=None, owner=_text(row["owner"]))
    closed = row["closed_at"]
    is_closed = bool(pd.notna(closed) and pd.Timestamp(closed) <= as_of)
    return {
        "deal_id": deal_id,
        "account": _text(row["account"]),
        "owner": _text(row["owner"]),
        "team": _text(row["team"]),
        "segment": _text(row["segment"]),
        "product": _text(row["product"]),
        "created_at": _when(created),
        "status": (str(row["outcome"]) if is_closed else "open"),
        "closed_at": _when(closed) if is_closed else None,
        "as_of": as_of,
        "score": score,
        "method": scored_method(frame),
        "fallback_reason": frame.attrs.get("fallback_reason"),
        "model_versions": dict(frame.attrs.get("model_versions", {})),
        "signals": sig,
        "flags": [f for f in flags if f.deal_id == deal_id],
        "history": deal_history(snap, deal_id, as_of),
    }


# --- the quarter forecast -----------------------------------------------------------------------
# A cold forecast fits the Bayesian layer (deal models per past quarter, nutpie compile and
# sampling: ~90 s on the 3,000-deal demo); it is computed in the request, once per store version,
# model versions and date, and kept: in memory (every scope of that date reuses the posterior) and
# on disk beside the store (``STORE.forecast-cache/``), so a restarted server answers warm too.
QUANTILE_GRID = tuple(round(q / 100, 2) for q in range(5, 100, 5))
RULES = ("stage_weighted", "commit", "best_case", "historical_conversion")


@dataclass
class _ForecastRunner:
    """One store version's :class:`ForecastService` and the lock that keeps two cold requests
    from fitting the same posterior twice (the service is not thread-safe)."""

    service: Any
    recipe: str
    lock: threading.Lock = field(default_factory=threading.Lock)


def _forecast_config(settings: ApiSettings) -> Any:
    from forecasting.model import ModelConfig

    return ModelConfig(
        draws=settings.forecast_draws, tune=settings.forecast_tune, chains=settings.forecast_chains
    )


def _runner(
    state: AppState, snap: Snapshot, served: Served, settings: ApiSettings
) -> _ForecastRunner:
    from forecasting.forecast import ForecastService
    from forecasting.scoring import ModelScorers, fit_stage_history
    from forecasting.simulate import SimOptions

    config = _forecast_config(settings)

    def build() -> _ForecastRunner:
        scorer = settings.forecast_history_scorer
        factory = ModelScorers() if scorer == "models" else fit_stage_history
        service = ForecastService(
            snap.tables,
            state.stages,
            served=served.models,
            factory=factory,
            config=config,
            options=SimOptions(n_scenarios=settings.forecast_scenarios),
        )
        return _ForecastRunner(service, f"{scorer}:{served.key!r}")

    return state.results.get_or_compute(_key("forecast-service", snap, served, settings), build)


def _key(kind: str, snap: Snapshot, served: Served, settings: ApiSettings, *rest: Any) -> Any:
    """A cache key naming the data, the deal models and the forecast model's configuration."""
    config = _forecast_config(settings).config_hash()
    sim = (settings.forecast_scenarios, settings.forecast_history_scorer)
    return (kind, snap.version, served.key, config, sim, *rest)


def _warm_from_disk(runner: _ForecastRunner, settings: ApiSettings, as_of: pd.Timestamp) -> None:
    """Fit (or load from the on-disk cache) the posterior and scored pipeline of ``as_of``."""
    from forecasting.cache import ForecastCache, cache_key

    service = runner.service
    engine = service.engine
    if as_of in service._posteriors:
        return
    root = settings.db.with_suffix(".forecast-cache")
    disk = ForecastCache(root, cache_key(engine.tables, as_of, engine.config, runner.recipe))
    hit = disk.load(engine.config)
    if hit is not None:
        fitted, scored, _notes = hit
        service._posteriors[as_of] = fitted
        engine.scored_cache[as_of] = scored
        return
    fitted = service.posterior(as_of)
    with contextlib.suppress(OSError):  # a read-only folder only costs a restart a refit
        disk.save(fitted, engine.scored(as_of), {})


def forecast_as_of(snap: Snapshot, quarter: str | None, as_of: AsOf) -> pd.Timestamp:
    """The forecast date: ``as_of`` (inside ``quarter`` when both are given), else the store's
    latest export time, or the quarter's end if earlier. 404 for a quarter the data does not
    reach; 422 for an ``as_of`` outside the quarter."""
    from features.data.calendar import quarter_bounds
    from features.errors import InputError

    if quarter is None:
        return resolve_as_of(as_of, snap)
    start, end = quarter_bounds(quarter)
    data_end = resolve_as_of(None, snap)
    first = snap.tables.deals["created_at"].min()
    if start > data_end or end < pd.Timestamp(first):
        raise NotFoundError(
            f"quarter {quarter}: the data covers {pd.Timestamp(first):%Y-%m-%d}.."
            f"{data_end:%Y-%m-%d}"
        )
    when = min(end, data_end) if as_of is None else parse_when(as_of, "as_of")
    if not start <= when <= end:
        raise InputError(
            f"as_of {when:%Y-%m-%d} is outside {quarter} ({start:%Y-%m-%d}..{end:%Y-%m-%d})"
        )
    return when


def _visible_owners(caller: Caller, snap: Snapshot) -> set[str] | None:
    if caller.role is Role.REVOPS:
        return None
    deals = snap.tables.deals
    if caller.role is Role.REP:
        return {str(caller.owner)}
    return {str(o) for o in deals.loc[deals["team"] == caller.team, "owner"].dropna().unique()}


def forecast(
    state: AppState,
    snap: Snapshot,
    served: Served,
    settings: ApiSettings,
    caller: Caller,
    as_of: pd.Timestamp,
    *,
    team: str | None,
    owner: str | None,
) -> tuple[dict[str, Any], bool]:
    """The forecast of a scope the caller may see (already resolved by :func:`scope`) as the API
    returns it, and whether it came from the cache."""
    runner = _runner(state, snap, served, settings)
    key = _key("forecast", snap, served, settings, as_of, team, owner)
    hit = key in state.results

    def compute() -> dict[str, Any]:
        with runner.lock:
            _warm_from_disk(runner, settings, as_of)
            fc = runner.service.forecast(as_of, team=team, owner=owner, explain=True)
        return _forecast_body(fc, served)

    body = state.results.get_or_compute(key, compute)
    visible = _visible_owners(caller, snap)
    if visible is not None:  # the scope already limits them; never trust that alone
        body = {**body, "drivers": [d for d in body["drivers"] if d["owner"] in visible]}
    return body, hit


def _forecast_body(fc: Any, served: Served) -> dict[str, Any]:
    grid = np.quantile(fc.scenarios, QUANTILE_GRID) if len(fc.scenarios) else []
    model = dict(fc.model)
    diagnostics = model.pop("diagnostics", {})
    return {
        "quarter": fc.quarter,
        "as_of": pd.Timestamp(fc.as_of),
        "scope": fc.scope,
        "target": fc.target,
        "won_so_far": fc.won_so_far,
        "pipecast": dataclasses.asdict(fc.pipecast),
        "quantiles": [
            {"q": q, "value": float(v)} for q, v in zip(QUANTILE_GRID, grid, strict=False)
        ],
        "methods": {name: fc.rules.get(name) for name in RULES},
        "independent_stage_sim": dataclasses.asdict(fc.independent_stage_sim),
        "drivers": [dataclasses.asdict(d) for d in fc.drivers],
        "model_versions": {
            "forecast_config_hash": str(model.get("config_hash")),
            "forecast_fitted_as_of": str(model.get("as_of")),
            "history_quarters": [str(q) for q in model.get("history_quarters", [])],
            "history_in_warmup": [str(q) for q in model.get("history_in_warmup", [])],
            "scorer": model.get("scorer"),
            "deal_models": dict(served.versions),
            "deal_models_fallback": served.fallback_reason,
        },
        "diagnostics": {**jsonable(diagnostics), "promotable": bool(model.get("promotable"))},
        "open_deals": int(model.get("open_deals", 0)),
        "scenarios": int(model.get("scenarios", 0)),
    }


def forecast_weeks(
    state: AppState,
    snap: Snapshot,
    served: Served,
    settings: ApiSettings,
    as_of: pd.Timestamp,
    *,
    team: str | None,
    owner: str | None,
) -> list[dict[str, Any]]:
    """The forecast at the end of each past week of ``as_of``'s quarter and at ``as_of``.

    Earlier weeks reuse ``as_of``'s fitted posterior (the pipeline, won deals and rules are each
    week's own): refitting per week would cost a cold forecast per point.
    """
    from features.data.calendar import quarter_bounds, quarter_of
    from forecasting.forecast import run_forecast

    runner = _runner(state, snap, served, settings)
    start = quarter_bounds(quarter_of(as_of))[0]
    sundays = pd.date_range(start, as_of, freq="W-SUN")
    points = [pd.Timestamp(d) + pd.Timedelta(hours=23, minutes=59, seconds=59) for d in sundays]
    points = [p for p in points if p < as_of] + [as_of]
    key = _key("forecast-weeks", snap, served, settings, as_of, team, owner)

    def compute() -> list[dict[str, Any]]:
        out = []
        with runner.lock:
            _warm_from_disk(runner, settings, as_of)
            fitted = runner.service.posterior(as_of)
            for when in points:
                fc = run_forecast(
                    runner.service.engine, when, team=team, owner=owner, fitted=fitted,
                    with_actual=False,
                )  # fmt: skip
                out.append(
                    {
                        "as_of": when,
                        "p10": fc.pipecast.p10,
                        "p50": fc.pipecast.p50,
                        "p90": fc.pipecast.p90,
                        "won_so_far": fc.won_so_far,
                        **{name: fc.rules.get(name) for name in RULES},
                    }
                )
        return out

    return state.results.get_or_compute(key, compute)
