"""The manager's answer: this quarter's revenue distribution beside the rule-based forecasts.

:func:`run_forecast` rebuilds the pipeline as of a date, scores it with the quarter's scorer,
fits (or reuses) the Bayesian layer on past quarters at the same point of the quarter, simulates
the quarter's end and puts every method side by side for a scope (company, team or rep). With
``explain`` it also says why: the deals that move the P50 most (the P50 when the deal is won
against when it is not) and the distribution if the deals the reps expect this quarter all closed
in time when they win (the slipping deals pulled in).

For the API: :class:`ForecastService` holds one store's tables, an engine (deal models fitted per
past quarter, rebuilt past pipelines) and the posteriors fitted per forecast date; its
:meth:`ForecastService.forecast` builds the :class:`Forecast` for ``(as_of, team, owner)``,
scoring the open pipeline with the served models (``served``, e.g. the champion
``training.FittedModels``) when they were fitted on or before ``as_of`` and reusing the fitted
posterior of that date for every scope::

    service = ForecastService(tables, stages, served=champion)
    fc = service.forecast(pd.Timestamp("2025-11-15"), team="DACH")
    fc.to_dict()
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from features.data.calendar import quarter_bounds, quarter_of
from features.data.schema import CanonicalTables, Outcome
from features.data.stages import StageConfig
from features.errors import NotEnoughDataError, NotFoundError
from features.pipeline.metrics import compute_metrics, jsonable
from features.signals.pointintime import deal_states_as_of
from forecasting.history import ScorerCache, build_fit_data, scorer_cutoff, scorer_warmup_end
from forecasting.model import FittedForecastModel, ModelConfig, fit
from forecasting.rules import actual, rule_forecasts
from forecasting.scoring import DealScorer, ModelScorers, ScorerFactory
from forecasting.simulate import NewBusiness, Posterior, SimOptions, SimResult, simulate

QUANTILES = (0.1, 0.5, 0.9)
DRIVER_CANDIDATES = 40
MIN_SHARE = 0.02


@dataclass(frozen=True)
class Distribution:
    p10: float
    p50: float
    p90: float
    mean: float
    p_target: float | None

    @classmethod
    def of(cls, values: np.ndarray, target: float | None) -> Distribution:
        p10, p50, p90 = (float(v) for v in np.quantile(values, QUANTILES))
        p_t = None if target is None else float(np.mean(values >= target))
        return cls(p10, p50, p90, float(np.mean(values)), p_t)


@dataclass(frozen=True)
class Driver:
    deal_id: str
    owner: str
    stage: str | None
    amount: float
    expected_close_date: str | None
    p_won_this_quarter: float
    p50_if_won: float
    p50_if_not: float
    swing: float


@dataclass(frozen=True)
class Forecast:
    """Every method's forecast of one scope's quarter, as of one date."""

    quarter: str
    as_of: str
    scope: str
    target: float | None
    won_so_far: float
    pipecast: Distribution
    rules: dict[str, float | None]
    independent_stage_sim: Distribution
    actual: float | None
    model: dict[str, Any]
    drivers: list[Driver] = field(default_factory=list)
    pulled_in: Distribution | None = None
    pulled_in_deals: int = 0
    top_deals: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    scenarios: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    independent_scenarios: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    # the same model simulated without the quarter effect and parameter uncertainty
    ablated_scenarios: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = jsonable(
            dataclasses.replace(
                self, scenarios=np.zeros(0), independent_scenarios=np.zeros(0),
                ablated_scenarios=None,
            )
        )  # fmt: skip
        for key in ("scenarios", "independent_scenarios", "ablated_scenarios"):
            out.pop(key, None)
        return out


def won_this_quarter(states: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """Deals won within ``as_of``'s quarter by ``as_of`` (owner, team, amount), from states then.

    The same filter as the metrics' "won this quarter"; its sum is checked against it.
    """
    q_start = quarter_bounds(quarter_of(as_of))[0]
    won = states[(states["outcome"] == Outcome.WON.value) & (states["closed_at"] >= q_start)]
    return won[["deal_id", "owner", "team", "amount"]].fillna({"amount": 0.0})


def independent_stage_sim(
    closing: pd.DataFrame, stages: StageConfig, won_so_far: float, n: int, seed: int
) -> np.ndarray:
    """The naive simulation: every open deal expected to close this quarter an independent coin
    flip at its stage's configured probability, closing when the rep says."""
    rng = np.random.default_rng(seed)
    prob = closing["stage"].map({s.key: s.win_probability for s in stages.stages}).fillna(0.0)
    p = prob.to_numpy(np.float32)
    amount = closing["amount"].fillna(0.0).to_numpy(np.float32)
    out = np.empty(n)
    step = max(1, (1 << 20) // max(len(p), 1))
    for i in range(0, n, step):
        u = rng.random((min(step, n - i), len(p)), dtype=np.float32)
        out[i : i + step] = (u < p) @ amount
    return out + won_so_far


@dataclass
class ForecastEngine:
    """Fits scorers and the Bayesian layer as of a date and simulates; caches what it can."""

    tables: CanonicalTables
    stages: StageConfig
    scorers: ScorerCache
    config: ModelConfig = field(default_factory=ModelConfig)
    options: SimOptions = field(default_factory=SimOptions)
    # Scores the open pipeline instead of the quarter's own scorer (the served models), where
    # fitted on or before the forecast date: a model fitted later has seen outcomes after it.
    served: DealScorer | None = None
    # Scored open pipelines by date and notes on how they were scored, e.g. from ForecastCache.
    scored_cache: dict[pd.Timestamp, pd.DataFrame] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    def fit_model(self, as_of: pd.Timestamp) -> tuple[FittedForecastModel, dict[str, Any]]:
        fd = build_fit_data(
            self.tables, self.stages, as_of, self.scorers, n_quarters=self.config.history_quarters
        )
        return fit(fd, self.config), {"nb_share": fd.nb_share, **fd.meta}

    def served_for(self, as_of: pd.Timestamp) -> DealScorer | None:
        cutoff = getattr(self.served, "cutoff", None)
        if self.served is None or cutoff is None or pd.Timestamp(cutoff) > as_of:
            return None
        return self.served

    def scorer_notes(self, as_of: pd.Timestamp, quarters: list[str]) -> dict[str, Any]:
        """How the forecast quarter's and the history quarters' deals were scored."""
        if self.notes:
            return dict(self.notes)
        current = quarter_of(as_of)
        warm = scorer_warmup_end(self.tables, as_of)
        return {
            "scorer": "served" if self.served_for(as_of) else self.scorers.method(current),
            "history_scorers": {q: self.scorers.method(q) for q in quarters},
            # history quarters whose scorers learnt only from the data's fast-closing deals
            "warmup_end": warm.isoformat(),
            "history_in_warmup": [q for q in quarters if q != current and scorer_cutoff(q) < warm],
        }

    def scored(self, as_of: pd.Timestamp) -> pd.DataFrame:
        if pd.Timestamp(as_of) in self.scored_cache:
            return self.scored_cache[pd.Timestamp(as_of)]
        served = self.served_for(pd.Timestamp(as_of))
        if served is not None:
            return served.score(self.tables, self.stages, as_of).reset_index(drop=True)
        quarter = quarter_of(as_of)
        scorer = self.scorers.for_quarter(self.tables, self.stages, quarter)
        if scorer is None:
            raise NotEnoughDataError(f"too few deals closed before {quarter} to score its pipeline")
        return scorer.score(self.tables, self.stages, as_of).reset_index(drop=True)


def _scope_column(sim: SimResult, team: str | None, owner: str | None) -> np.ndarray:
    if owner is not None:
        if owner not in sim.owners.columns:
            return np.full(len(sim.company), 0.0)
        return sim.owners[owner].to_numpy()
    if team is not None:
        if team not in sim.teams.columns:
            return np.full(len(sim.company), 0.0)
        return sim.teams[team].to_numpy()
    return sim.company


def _in_scope(frame: pd.DataFrame, team: str | None, owner: str | None) -> np.ndarray:
    keep = np.ones(len(frame), dtype=bool)
    if team is not None:
        keep &= (frame["team"] == team).to_numpy()
    if owner is not None:
        keep &= (frame["owner"] == owner).to_numpy()
    return keep


def _drivers(
    deals: pd.DataFrame, sim: SimResult, scope_values: np.ndarray, track: np.ndarray, k: int = 10
) -> list[Driver]:
    out = []
    for j, i in enumerate(track):
        won = sim.tracked[:, j]
        share = float(won.mean())
        # a deal decided in (nearly) every scenario does not move the P50; nor does a median
        # taken over a handful of scenarios say anything
        if not MIN_SHARE <= share <= 1 - MIN_SHARE:
            continue
        hi, lo = float(np.median(scope_values[won])), float(np.median(scope_values[~won]))
        row = deals.iloc[int(i)]
        ecd = row["expected_close_date"]
        out.append(
            Driver(
                deal_id=str(row["deal_id"]),
                owner=str(row["owner"]),
                stage=None if pd.isna(row["stage"]) else str(row["stage"]),
                amount=float(row["amount"]) if pd.notna(row["amount"]) else 0.0,
                expected_close_date=None if pd.isna(ecd) else pd.Timestamp(ecd).date().isoformat(),
                p_won_this_quarter=float(sim.p_won_in_quarter[int(i)]),
                p50_if_won=hi,
                p50_if_not=lo,
                swing=hi - lo,
            )
        )
    # what the deal's uncertainty moves: its swing, weighted by how undecided it is
    return sorted(
        out, key=lambda d: -d.swing * np.sqrt(d.p_won_this_quarter * (1 - d.p_won_this_quarter))
    )[:k]


def top_deals_by_owner(
    deals: pd.DataFrame, sim: SimResult, n: int = 3
) -> dict[str, list[dict[str, Any]]]:
    """Each rep's deals to work: the most revenue at stake this quarter (amount x P(won) x
    P(not won): large for big deals still in the balance), with the simulated P(won this Q)."""
    p = sim.p_won_in_quarter
    frame = deals.assign(
        p_won_in_quarter=p,
        at_stake=deals["amount"].fillna(0.0).to_numpy() * p * (1 - p),
    )
    frame = frame[frame["at_stake"] > 0].sort_values("at_stake", ascending=False)
    out: dict[str, list[dict[str, Any]]] = {}
    for owner, group in frame.groupby("owner", sort=True):
        rows = group.head(n)[
            ["deal_id", "stage", "amount", "expected_close_date", "p_won_in_quarter", "at_stake"]
        ]
        out[str(owner)] = jsonable(rows.to_dict(orient="records"))
    return out


def run_forecast(
    engine: ForecastEngine,
    as_of: pd.Timestamp,
    *,
    team: str | None = None,
    owner: str | None = None,
    explain: bool = False,
    fitted: tuple[FittedForecastModel, dict[str, Any]] | None = None,
    with_actual: bool = True,
    ablation: bool = False,
) -> Forecast:
    """Forecast ``as_of``'s quarter for a scope with every method (see module docstring)."""
    tables, stages = engine.tables, engine.stages
    as_of = pd.Timestamp(as_of)
    quarter = quarter_of(as_of)
    q_end = quarter_bounds(quarter)[1]
    states = deal_states_as_of(tables, as_of, stages)
    if team is not None and not (states["team"] == team).any():
        raise NotFoundError(f"--team: no deal of team {team!r} exists as of {as_of:%Y-%m-%d}")
    if owner is not None and not (states["owner"] == owner).any():
        raise NotFoundError(f"--owner: no deal of owner {owner!r} exists as of {as_of:%Y-%m-%d}")
    model, extra = fitted if fitted is not None else engine.fit_model(as_of)
    deals = engine.scored(as_of)
    won = won_this_quarter(states, as_of)
    nb = NewBusiness(
        days_left=max((q_end - as_of).total_seconds() / 86400.0, 0.0),
        season=int(quarter[5]) - 1,
        share=extra.get("nb_share", {}),
    )
    post = Posterior(model.draws(), model.levels)
    scope_deals = _in_scope(deals, team, owner)
    p = deals["p_won_this_quarter"].to_numpy()
    stake = deals["amount"].fillna(0.0).to_numpy() * np.sqrt(p * (1 - p)) * scope_deals
    track = np.argsort(-stake)[: DRIVER_CANDIDATES if explain else 0]
    track = track[stake[track] > 0]
    sim = simulate(
        post, deals, won_so_far=won, new_business=nb, options=engine.options, track=track
    )
    values = _scope_column(sim, team, owner)

    metrics = compute_metrics(tables, stages, as_of, team=team, owner=owner)
    scoped_won = float(won.loc[_in_scope(won, team, owner), "amount"].sum())
    if not np.isclose(scoped_won, metrics.coverage.won_this_quarter):
        raise AssertionError("won this quarter differs from the pipeline metrics' figure")
    target = metrics.coverage.target
    open_scoped = deals[scope_deals]
    rules = rule_forecasts(metrics, open_scoped)
    start = quarter_bounds(quarter)[0]
    ecd = pd.to_datetime(open_scoped["expected_close_date"])
    closing = open_scoped[(ecd >= start) & (ecd <= q_end)]
    indep = independent_stage_sim(
        closing, stages, scoped_won, engine.options.n_scenarios, engine.options.seed + 1
    )
    result = Forecast(
        quarter=quarter,
        as_of=as_of.isoformat(),
        scope=f"owner:{owner}" if owner else (f"team:{team}" if team else "company"),
        target=target,
        won_so_far=scoped_won,
        pipecast=Distribution.of(values, target),
        rules=rules,
        independent_stage_sim=Distribution.of(indep, target),
        actual=actual(tables, stages, quarter, team=team, owner=owner) if with_actual else None,
        model={
            "config_hash": model.config_hash,
            "as_of": model.as_of,
            "history_quarters": model.levels["quarters"],
            **engine.scorer_notes(as_of, model.levels["quarters"]),
            "diagnostics": jsonable(model.diagnostics),
            "promotable": model.diagnostics.ok(model.config),
            "open_deals": len(deals),
            "scenarios": len(sim.company),
        },
        scenarios=values,
        independent_scenarios=indep,
    )
    if ablation:
        plain = dataclasses.replace(
            engine.options, quarter_effect=False, parameter_uncertainty=False
        )
        ablated = simulate(post, deals, won_so_far=won, new_business=nb, options=plain)
        result = dataclasses.replace(result, ablated_scenarios=_scope_column(ablated, team, owner))
    if not explain:
        return result
    ecd_all = pd.to_datetime(deals["expected_close_date"])
    pull = ((ecd_all <= q_end) | ecd_all.isna()).to_numpy(dtype=bool) & scope_deals
    pulled = simulate(
        post, deals, won_so_far=won, new_business=nb, options=engine.options, pull_in=pull
    )
    scope_top = top_deals_by_owner(
        deals[scope_deals].reset_index(drop=True), _subset(sim, scope_deals)
    )
    return _replace(
        result,
        drivers=_drivers(deals, sim, values, track),
        pulled_in=Distribution.of(_scope_column(pulled, team, owner), target),
        pulled_in_deals=int(pull.sum()),
        top_deals=scope_top,
    )


def _subset(sim: SimResult, keep: np.ndarray) -> SimResult:
    return dataclasses.replace(
        sim,
        p_won_in_quarter=sim.p_won_in_quarter[keep],
    )


def _replace(result: Forecast, **changes: Any) -> Forecast:
    return dataclasses.replace(result, **changes)


class ForecastService:
    """One store's forecasts for the API: fitted deal models, past pipelines and posteriors kept
    and reused across requests (see the module docstring)."""

    def __init__(
        self,
        tables: CanonicalTables,
        stages: StageConfig,
        *,
        served: DealScorer | None = None,
        factory: ScorerFactory | None = None,
        config: ModelConfig | None = None,
        options: SimOptions | None = None,
    ) -> None:
        self.engine = ForecastEngine(
            tables,
            stages,
            ScorerCache(factory if factory is not None else ModelScorers()),
            config or ModelConfig(),
            options or SimOptions(),
            served=served,
        )
        self._posteriors: dict[pd.Timestamp, tuple[FittedForecastModel, dict[str, Any]]] = {}

    def posterior(self, as_of: pd.Timestamp) -> tuple[FittedForecastModel, dict[str, Any]]:
        """The posterior fitted for ``as_of`` (fitted on first use, then reused)."""
        as_of = pd.Timestamp(as_of)
        if as_of not in self._posteriors:
            self._posteriors[as_of] = self.engine.fit_model(as_of)
        return self._posteriors[as_of]

    def forecast(
        self,
        as_of: pd.Timestamp,
        *,
        team: str | None = None,
        owner: str | None = None,
        explain: bool = False,
    ) -> Forecast:
        """The :class:`Forecast` of ``as_of``'s quarter for a scope (company, team or rep)."""
        as_of = pd.Timestamp(as_of)
        return run_forecast(
            self.engine,
            as_of,
            team=team,
            owner=owner,
            explain=explain,
            fitted=self.posterior(as_of),
        )
