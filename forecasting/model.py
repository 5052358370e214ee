"""The Bayesian layer: recalibrates the scorers' probabilities against history, with uncertainty.

A hierarchical PyMC model fitted on :class:`forecasting.history.FitData`:

- win: ``logit P(win) = a_w + b_w * logit(p_win) + c_w * log amount + team + segment +
  quarter_w``;
- timing: ``logit P(close in quarter | win) = a_t + b_t * logit(p_time) + c_t * log amount +
  quarter_t`` (value-calibrated: big projects close later than a count-calibrated score says);
  ``quarter_w`` and ``quarter_t`` are shared by every deal of a quarter (deals move together),
  team and segment effects are partially pooled;
- each past deal's outcome (won in the quarter / won later / lost / unresolved) is a categorical
  draw from those two probabilities;
- each quarter's effects are ``gap_w * q_gap`` (``gap_t``) plus a draw from the quarters'
  spread: ``q_gap`` is how far the quarter's scorer leant away from the stage rule at the
  quarter's start (log of their expected values won within it), so a scorer refitted after a
  boom, expecting more than the rule, is taken back as far as history shows such leans missed;
  the intercepts lean toward the scorers' own calibration (a narrow prior). The forecast
  quarter's draw (the last level of ``quarter``, with no end-of-quarter outcome yet) is updated
  by what it has won so far: every quarter's pipeline at its first instant, and whether each
  deal was won by the forecast's point of the quarter against the quarter's own scorer's
  P(won by then), give one early-pace shift per quarter, ``link_w * quarter_w + link_t *
  quarter_t + deviation``, whose slopes and deviation spread the history quarters measure
  (early wins predict the end only so well; until version 5 the early rows carried
  ``quarter_w`` itself, and which deals had won early pinned it);
- discounts: ``log(amount won / amount then) ~ Normal(mu[stage], sd[stage])``;
- new business: deals created in the rest of the quarter ~ NegativeBinomial (rate per day with
  quarter-of-year seasonality and a trend), the share of them won within it (varying by
  quarter), and their log amounts ~ Normal with the spread of every won deal's log amount and
  a centre shifted from theirs (a few new-business wins cannot pin a spread down alone).

The model is compiled once per parameter shape with nutpie and reused with new data
(:func:`compiled_model`). A fitted posterior is saved with a hash of its configuration;
loading it under another configuration raises :class:`ModelMismatchError`.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from features.errors import ConfigError, NotFoundError
from forecasting.history import FitData

if TYPE_CHECKING:
    import arviz as az
    import pymc as pm

MODEL_NAME = "pipecast-forecast"
MODEL_VERSION = "11"
SEASONS = 4
QUARTER_SCALE = 1.0


class ModelMismatchError(ConfigError):
    """A saved posterior was fitted under another configuration than the one asked for."""


class ModelConfig(BaseModel):
    """Everything that changes the fitted posterior; its hash names the fit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # 300 draws left the bulk ESS of the quarter spreads under the gate (demo 105, 20k deals
    # 32-92); 1000: demo 399 in about twice the sampling time.
    draws: Annotated[int, Field(ge=50, le=20_000)] = 1000
    tune: Annotated[int, Field(ge=50, le=20_000)] = 300
    chains: Annotated[int, Field(ge=1, le=8)] = 2
    seed: int = 0
    target_accept: Annotated[float, Field(gt=0.5, lt=1)] = 0.95
    history_quarters: Annotated[int, Field(ge=2, le=20)] = 6
    effect_scale: Annotated[float, Field(gt=0)] = 0.3
    # Gates for promotion: a fit outside them is kept but not promoted.
    max_divergences: Annotated[int, Field(ge=0)] = 0
    max_rhat: Annotated[float, Field(gt=1)] = 1.05
    min_ess: Annotated[float, Field(gt=0)] = 100.0

    def config_hash(self) -> str:
        payload = {"model": MODEL_NAME, "version": MODEL_VERSION, **self.model_dump()}
        text = json.dumps(payload, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _data(fd: FitData) -> dict[str, np.ndarray]:
    """Every pm.Data container's value (names match the model)."""
    return {
        "x_win": fd.x_win,
        "x_time": fd.x_time,
        "x_amount": fd.x_amount,
        "team_idx": fd.team,
        "seg_idx": fd.segment,
        "q_idx": fd.quarter,
        **{f"w_{k}": fd.weight[:, k] for k in range(4)},
        "disc_stage": fd.disc_stage,
        "disc_y": fd.disc_log_ratio,
        "e_x_pace": fd.e_x_pace,
        "e_x_amount": fd.e_x_amount,
        "e_q": fd.e_quarter,
        "e_won": fd.e_weight[:, 0],
        "q_gap": fd.q_gap,
        "e_not": fd.e_weight[:, 1],
        "nb_q": fd.nb_quarter,
        "nb_days": fd.nb_days + 1e-3,
        "nb_created": fd.nb_created,
        "nb_won": fd.nb_won,
        "nb_qoy": fd.nb_qoy,
        "nb_t": (fd.nb_quarter - fd.current).astype(np.float64),
        "nb_log_amount": fd.nb_log_amount,
        "won_log_amount": fd.won_log_amount,
    }


def build_model(fd: FitData, config: ModelConfig) -> pm.Model:
    """The PyMC model for one FitData (its shapes fix the parameter sizes)."""
    import pymc as pm
    import pytensor.tensor as pt

    coords = {
        "quarter": fd.quarters,
        "past_quarter": fd.quarters[:-1],
        "team": fd.teams,
        "segment": fd.segments,
        "stage": fd.stages,
        "season": [f"Q{i + 1}" for i in range(SEASONS)],
    }
    s = config.effect_scale
    with pm.Model(coords=coords) as model:
        d = {k: pm.Data(k, v) for k, v in _data(fd).items()}

        def pooled(name: str, dim: str, scale: float, centred: bool = True) -> Any:
            # Summing to zero: the intercept carries the mean (a new level is drawn from
            # Normal(0, sd)). Centred where every level has hundreds of deals behind it;
            # non-centred where few levels barely inform their spread.
            sd = pm.HalfNormal(f"sd_{name}", scale)
            if centred:
                eff = pm.ZeroSumNormal(name, sigma=sd, dims=dim)
            else:
                z = pm.ZeroSumNormal(f"z_{name}", dims=dim)
                eff = pm.Deterministic(name, sd * z, dims=dim)
            # index -1 (a level unseen in history) reads the appended zero
            return pt.concatenate([eff, pt.zeros(1)])

        team_w, seg_w = pooled("team_w", "team", s, False), pooled("seg_w", "segment", s, False)

        def quarter_effect(name: str) -> Any:
            # Each quarter's effect: how far its scorer leans away from the stage rule
            # (``q_gap``, known at the quarter's start) times a slope, plus a draw from the
            # quarters' spread; the forecast quarter's draw is updated only by what it has won
            # so far. Deal models refitted before each quarter carry the shocks of the quarters
            # they learnt from: on 20k generated deals their in-quarter sums ran from 0.77 to
            # 1.43 times the stage rule's, and log(won / their sum) fell with log(their sum /
            # the rule's) at a slope of -1.1 (correlation -0.87, week 1). Until version 9 the
            # forecast quarter's effect was centred on the history's mean whatever its scorer
            # leant (version 9 -> 10 on that backtest: mean CRPS 9.80M -> 9.13M; the week-1
            # P50 still missed by a median 17.7%, the stage rule's 10.2%).
            # The history quarters' draws are independent (until version 9 they summed to zero,
            # so the intercept was exactly their mean, shocks of the calibration window
            # included); the intercepts lean toward the scorers' own calibration. Inside one
            # zero sum over every quarter the forecast quarter's effect was minus the sum of
            # the others, whatever it had won (P10-P90 holding the actual in 4 of 8 quarters).
            # Quarter shocks can be large: a wide prior on their spread (six quarters say
            # little). Non-centred: centred, the spread sat in a funnel (bulk ESS 43 of 600).
            sd = pm.HalfNormal(f"sd_{name}", QUARTER_SCALE)
            z = pt.concatenate(
                [
                    pm.Normal(f"z_{name}", 0.0, 1.0, dims="past_quarter"),
                    pm.Normal(f"z_{name}_now", 0.0, 1.0, shape=(1,)),
                ]
            )
            gap = pm.Normal(f"gap_{name[-1]}", 0.0, 1.0)
            eff = pm.Deterministic(name, gap * d["q_gap"] + sd * z, dims="quarter")
            return pt.concatenate([eff, pt.zeros(1)])

        q_w, q_t = quarter_effect("quarter_w"), quarter_effect("quarter_t")
        a_w, b_w = pm.Normal("a_w", 0.0, 0.5), pm.Normal("b_w", 1.0, 0.5)
        a_t, b_t = pm.Normal("a_t", 0.0, 0.5), pm.Normal("b_t", 1.0, 0.5)
        c_w, c_t = pm.Normal("c_w", 0.0, 0.5), pm.Normal("c_t", 0.0, 0.5)
        eta_w = a_w + b_w * d["x_win"] + c_w * d["x_amount"]
        eta_w = eta_w + team_w[d["team_idx"]] + seg_w[d["seg_idx"]] + q_w[d["q_idx"]]
        eta_t = a_t + b_t * d["x_time"] + c_t * d["x_amount"] + q_t[d["q_idx"]]
        # log(1 - sigmoid(x)) = log(sigmoid(x)) - x: one softplus per probability
        log_w, log_t = -pt.softplus(-eta_w), -pt.softplus(-eta_t)
        log_nw, log_nt = log_w - eta_w, log_t - eta_t
        log_joint = log_w + log_t
        ll = (
            d["w_0"] * log_joint
            + d["w_1"] * (log_w + log_nt)
            + d["w_2"] * log_nw
            + d["w_3"] * pt.log1mexp(pt.minimum(log_joint, -1e-9))
        )
        pm.Potential("deals", pt.sum(ll))

        # What each quarter had won a given way into it, from its pipeline at its start: this is
        # how the forecast quarter's own effects are learnt from what it has shown so far.
        # Early wins say one thing about a quarter, how far ahead of the usual pace it is: one
        # shift per quarter (its ``signal``), linked to the quarter's end effects by slopes and a
        # deviation that the history quarters (where both are seen) measure. So the forecast
        # quarter's effects lean on its early wins only as far as history shows they predict its
        # end. Until version 5 the early rows carried the quarter's win effect itself, with no
        # deviation: which deals had won early (thousands of them) pinned the forecast quarter's
        # win effect (posterior sd 0.14-0.19 at week 8 on 20k deals) while its end missed by up
        # to 50% more wins than simulated.
        # The pace is measured against the quarter's own scorer: its P(won by this day of the
        # quarter) for each deal of the pipeline at the quarter's start. Until version 8 the
        # expectation was a logistic map of P(close this quarter | win) fitted across quarters,
        # which read differences between quarters' scorers as pace: 2025Q1 on 20k deals won 43
        # deals in its first week against 86 so expected (its scorer's own curve: 54), read as a
        # slow quarter, and the week-1 P50 came out 24% low.
        a_p, b_p = pm.Normal("a_p", 0.0, 1.0), pm.Normal("b_p", 1.0, 0.5)
        c_p = pm.Normal("c_p", 0.0, 0.5)
        l_w, l_t = pm.Normal("link_w", 1.0, 0.5), pm.Normal("link_t", 1.0, 0.5)
        sd_e = pm.HalfNormal("sd_quarter_e", 0.5)
        z_e = pm.Normal("z_quarter_e", 0.0, 1.0, dims="quarter")
        signal = l_w * q_w[:-1] + l_t * q_t[:-1] + sd_e * z_e
        e_p = a_p + b_p * d["e_x_pace"] + c_p * d["e_x_amount"] + signal[d["e_q"]]
        log_e = -pt.softplus(-e_p)
        ll_e = d["e_won"] * log_e + d["e_not"] * (log_e - e_p)
        pm.Potential("early", pt.sum(ll_e))

        mu_d = pm.Normal("disc_mu", 0.0, 0.3, dims="stage")
        sd_d = pm.HalfNormal("disc_sd", 0.3, dims="stage")
        pm.Normal("disc", mu_d[d["disc_stage"]], sd_d[d["disc_stage"]], observed=d["disc_y"])

        a_n = pm.Normal("nb_rate", 0.0, 3.0)
        # Non-centred: a handful of quarters barely informs the seasonal spread.
        season = pm.Deterministic(
            "nb_season",
            pm.HalfNormal("sd_nb_season", s) * pm.ZeroSumNormal("z_nb_season", dims="season"),
            dims="season",
        )
        trend = pm.Normal("nb_trend", 0.0, 0.1)
        alpha = pm.HalfNormal("nb_alpha", 50.0)
        mu_n = pt.exp(a_n + season[d["nb_qoy"]] + trend * d["nb_t"]) * d["nb_days"]
        pm.NegativeBinomial("nb_arrivals", mu=mu_n, alpha=alpha, observed=d["nb_created"])
        a_r = pm.Normal("nb_win", -2.0, 1.5)
        sd_r = pm.HalfNormal("sd_nb_win", 0.5)
        z_r = pm.Normal("z_nb_win", 0.0, 1.0, dims="quarter")
        pm.Binomial(
            "nb_wins",
            n=d["nb_created"],
            p=pm.math.sigmoid(a_r + sd_r * z_r[d["nb_q"]]),
            observed=d["nb_won"],
        )
        # New-business amounts: a quarter brings a handful of new-business wins (one in six
        # quarters on the demo), too few to fit a log-normal's spread on their own: fitted
        # alone, the spread's posterior reached 4.8 (amounts up to e^25) and a few scenarios
        # dominated the forecast's mean. Their spread is the market's (every deal won within
        # its quarter, hundreds of them) and their centre that of the market shifted by what
        # the new-business wins show (quick wins tend to be smaller).
        mu_m = pm.Normal("won_amount_mu", 11.0, 3.0)
        sd_m = pm.HalfNormal("won_amount_sd", 2.0)
        pm.Normal("won_amount", mu_m, sd_m, observed=d["won_log_amount"])
        shift = pm.Normal("nb_amount_shift", 0.0, 1.0)
        mu_a = pm.Deterministic("nb_amount_mu", mu_m + shift)
        sd_a = pm.Deterministic("nb_amount_sd", sd_m)
        pm.Normal("nb_amount", mu_a, sd_a, observed=d["nb_log_amount"])
    return model


# --- compile once, reuse ---------------------------------------------------------------------
_COMPILED: dict[tuple[Any, ...], Any] = {}


def compiled_model(fd: FitData, config: ModelConfig) -> tuple[Any, bool]:
    """A nutpie-compiled model for ``fd``: compiled on first use of its shape, then reused with
    ``with_data``. Returns (compiled, reused)."""
    import nutpie

    # Sampling settings (draws, seed...) do not change the compiled graph; the priors do.
    key = (fd.shape_key, config.effect_scale)
    cached = _COMPILED.get(key)
    if cached is None:
        model = build_model(fd, config)
        _COMPILED[key] = nutpie.compile_pymc_model(model, backend="numba")
        cached = _COMPILED[key]
        reused = False
    else:
        reused = True
    compiled = cached.with_data(**_data(fd))
    if fd.quarters or fd.teams:  # coordinates follow the data, not the first compile
        compiled = _with_coords(compiled, fd)
    return compiled, reused


def _with_coords(compiled: Any, fd: FitData) -> Any:
    import dataclasses

    coords = dict(compiled.coords or {})
    coords.update(
        {
            "quarter": fd.quarters,
            "past_quarter": fd.quarters[:-1],
            "team": fd.teams,
            "segment": fd.segments,
            "stage": fd.stages,
        }
    )
    return dataclasses.replace(compiled, _coords=coords)


# --- fit, diagnostics, posterior -------------------------------------------------------------
@dataclass(frozen=True)
class Diagnostics:
    divergences: int
    max_rhat: float | None  # None: one chain, r-hat is undefined (and the gate is not passed)
    min_ess_bulk: float
    draws: int
    chains: int
    seconds: float
    compiled_reused: bool

    def ok(self, config: ModelConfig) -> bool:
        return (
            self.divergences <= config.max_divergences
            and self.max_rhat is not None
            and self.max_rhat <= config.max_rhat
            and self.min_ess_bulk >= config.min_ess
        )

    def problems(self, config: ModelConfig) -> list[str]:
        out = []
        if self.divergences > config.max_divergences:
            out.append(f"{self.divergences} divergences (max {config.max_divergences})")
        if self.max_rhat is None:
            out.append(f"r-hat undefined with {self.chains} chain (needs 2 or more)")
        elif self.max_rhat > config.max_rhat:
            out.append(f"r-hat {self.max_rhat:.3f} (max {config.max_rhat})")
        if self.min_ess_bulk < config.min_ess:
            out.append(f"bulk ESS {self.min_ess_bulk:.0f} (min {config.min_ess:.0f})")
        return out


def _max_rhat(rhat: Any) -> float | None:
    """The largest r-hat over the parameters; None where it is undefined (a single chain)."""
    values = np.concatenate([np.ravel(rhat[v].values) for v in rhat.data_vars])
    finite = values[np.isfinite(values)]
    return float(finite.max()) if finite.size else None


# Parameters the simulator reads; their diagnostics gate promotion.
PARAMS = [
    "a_w", "b_w", "a_t", "b_t", "c_w", "c_t", "quarter_w", "quarter_t", "team_w", "seg_w",
    "sd_team_w", "sd_seg_w",
    "sd_quarter_w", "sd_quarter_t", "sd_quarter_e", "gap_w", "gap_t", "link_w", "link_t",
    "disc_mu", "disc_sd",
    "nb_rate", "nb_season", "nb_trend", "nb_alpha", "nb_win", "sd_nb_win", "nb_amount_mu",
    "nb_amount_sd",
]  # fmt: skip


@dataclass(frozen=True)
class FittedForecastModel:
    """A posterior with the configuration it was fitted under and its diagnostics."""

    idata: az.InferenceData
    config: ModelConfig
    diagnostics: Diagnostics
    levels: dict[str, list[str]]
    as_of: str

    @property
    def config_hash(self) -> str:
        return self.config.config_hash()

    def draws(self) -> dict[str, np.ndarray]:
        """Each parameter's draws, chains stacked: shape (draws, *dims)."""
        post = self.idata["posterior"]
        return {
            name: post[name].values.reshape(-1, *post[name].values.shape[2:]) for name in PARAMS
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        idata = self.idata.copy()
        idata["posterior"].attrs.update(
            {
                "config_hash": self.config_hash,
                "config": self.config.model_dump_json(),
                "levels": json.dumps(self.levels),
                "diagnostics": json.dumps(self.diagnostics.__dict__),
                "as_of": self.as_of,
                "model": MODEL_NAME,
                "model_version": MODEL_VERSION,
            }
        )
        idata.to_netcdf(str(path))
        return path


def load_posterior(path: str | Path, config: ModelConfig) -> FittedForecastModel:
    """Load a saved posterior; refuse it when it was fitted under another configuration."""
    import arviz as az

    path = Path(path)
    if not path.exists():
        raise NotFoundError(f"{path}: no saved forecast posterior")
    idata = az.from_netcdf(str(path))
    attrs = idata["posterior"].attrs
    saved = str(attrs.get("config_hash", ""))
    if saved != config.config_hash():
        raise ModelMismatchError(
            f"{path}: posterior fitted under configuration {saved or '?'} "
            f"({attrs.get('config', '?')}), asked for {config.config_hash()} "
            f"({config.model_dump_json()}); refit it"
        )
    diag = json.loads(str(attrs["diagnostics"]))
    return FittedForecastModel(
        idata=idata,
        config=config,
        diagnostics=Diagnostics(**diag),
        levels=json.loads(str(attrs["levels"])),
        as_of=str(attrs["as_of"]),
    )


def fit(fd: FitData, config: ModelConfig | None = None) -> FittedForecastModel:
    """Sample the posterior with nutpie (seeded) and compute its diagnostics."""
    import arviz as az
    import nutpie

    config = config or ModelConfig()
    started = time.perf_counter()
    compiled, reused = compiled_model(fd, config)
    idata = nutpie.sample(
        compiled,
        draws=config.draws,
        tune=config.tune,
        chains=config.chains,
        cores=1,
        seed=config.seed,
        progress_bar=False,
        save_warmup=False,
        target_accept=config.target_accept,
    )
    seconds = time.perf_counter() - started
    post = idata.posterior[PARAMS]
    rhat = az.rhat(post)
    ess = az.ess(post, method="bulk")
    diag = Diagnostics(
        divergences=int(idata.sample_stats["diverging"].values.sum()),
        max_rhat=_max_rhat(rhat),
        min_ess_bulk=float(min(float(np.nanmin(ess[v].values)) for v in ess.data_vars)),
        draws=config.draws,
        chains=config.chains,
        seconds=round(seconds, 3),
        compiled_reused=reused,
    )
    levels = {
        "quarters": fd.quarters, "teams": fd.teams, "segments": fd.segments, "stages": fd.stages,
    }  # fmt: skip
    return FittedForecastModel(idata, config, diag, levels, fd.as_of.isoformat())
