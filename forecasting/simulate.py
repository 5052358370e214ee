"""Monte Carlo of the quarter's revenue: posterior draws x scenarios, vectorised over deals.

Each scenario takes one posterior draw (parameter uncertainty) with that draw's shared effects of
the forecast quarter on winning and on timing (drawn from their spread across quarters and
updated by what the quarter has won so far: see :mod:`forecasting.model`), and then, for every
open deal at once, whether it wins, whether it closes this quarter and at what amount (discount
drawn per deal), plus new business (deals not created yet that will close won this quarter),
plus what is already won. Totals come out for the company, each team
and each rep.

Speed: for draw ``d`` and scenario ``s`` with effects ``u_s`` (win) and ``v_s`` (timing),
P(win and close) = sigmoid(eta_w + u_s) * sigmoid(eta_t + v_s), and a deal is won this quarter
when ``U < P``, i.e. when ``U * (1 + A * e^-u_s) * (1 + B * e^-v_s) < 1`` with
``A = e^-eta_w`` and ``B = e^-eta_t`` computed once per draw. So the per-(scenario, deal) work is
one uniform and a few multiplies, with no transcendental function; one uniform decides win and
timing jointly (``U < P(win)`` alone is "won, maybe later"). Scenarios are processed in chunks of
whole draws, in float32; rep totals are segment sums over deals sorted by rep.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from forecasting.history import deal_features

F32 = np.float32


@dataclass(frozen=True)
class Posterior:
    """The posterior draws the simulator needs (arrays over draws), with their levels."""

    draws: dict[str, np.ndarray]
    levels: dict[str, list[str]]

    @property
    def n(self) -> int:
        return len(self.draws["a_w"])

    def point(self) -> Posterior:
        """The posterior mean as a single draw (no parameter uncertainty)."""
        return Posterior(
            {k: v.mean(axis=0, keepdims=True) for k, v in self.draws.items()}, self.levels
        )


@dataclass(frozen=True)
class NewBusiness:
    """What the simulator needs to draw this quarter's new business."""

    days_left: float
    season: int  # quarter of year, 0-3
    share: dict[str, dict[str, float]] = field(default_factory=dict)  # scope -> name -> share


@dataclass(frozen=True)
class SimOptions:
    n_scenarios: int = 4000
    seed: int = 0
    quarter_effect: bool = True
    parameter_uncertainty: bool = True
    chunk_elements: int = 1 << 18


@dataclass(frozen=True)
class SimResult:
    """Quarter-end revenue per scenario, for the company, each team and each rep."""

    company: np.ndarray  # (S,)
    teams: pd.DataFrame  # (S, teams)
    owners: pd.DataFrame  # (S, owners)
    # (N,) each deal's chance of being won this quarter: its probability averaged over the
    # draws (the expectation of the share of scenarios it wins, without their noise)
    p_won_in_quarter: np.ndarray
    tracked: np.ndarray  # (S, len(track)) won-this-quarter of the tracked deals
    new_business: np.ndarray  # (S,)
    won_so_far: float

    def quantiles(self, qs: tuple[float, ...] = (0.1, 0.5, 0.9)) -> list[float]:
        return [float(v) for v in np.quantile(self.company, qs)]


def _level_effects(
    rng: np.random.Generator,
    values: pd.Series,
    levels: list[str],
    effects: np.ndarray,  # (D, L)
    sd: np.ndarray,  # (D,)
) -> np.ndarray:
    """(D, N) float32 effect of each deal's level; a level unseen in history (a new team) gets
    a fresh draw from the population spread, shared by its deals."""
    idx = pd.Index(levels).get_indexer(pd.Index(values.astype("object")))
    unseen = pd.unique(values[idx < 0].dropna())
    extra = rng.standard_normal((len(sd), len(unseen))) * sd[:, None]
    # columns: the known levels, the unseen ones, then a zero for a missing value
    table = np.concatenate([effects, extra, np.zeros((len(sd), 1))], axis=1).astype(F32)
    pos = np.where(idx >= 0, idx, len(levels) + len(unseen))
    if len(unseen):
        new = pd.Index(unseen).get_indexer(pd.Index(values.astype("object")))
        pos = np.where((idx < 0) & (new >= 0), len(levels) + new, pos)
    return np.take(table, pos, axis=1)


def _deal_terms(
    post: Posterior, deals: pd.DataFrame, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per draw and deal (float32): A = e^-eta_w, B = e^-eta_t and the amount if won."""
    dr, lv = post.draws, post.levels
    x_win, x_time, x_amount = (x.astype(F32) for x in deal_features(deals))
    col = lambda v: np.asarray(v, dtype=F32)[:, None]  # noqa: E731
    eta_w = col(dr["a_w"]) + col(dr["b_w"]) * x_win[None, :]
    eta_w += col(dr["c_w"]) * x_amount[None, :]
    eta_w += _level_effects(rng, deals["team"], lv["teams"], dr["team_w"], dr["sd_team_w"])
    eta_w += _level_effects(rng, deals["segment"], lv["segments"], dr["seg_w"], dr["sd_seg_w"])
    eta_t = col(dr["a_t"]) + col(dr["b_t"]) * x_time[None, :]
    eta_t += col(dr["c_t"]) * x_amount[None, :]
    stage = pd.Index(lv["stages"]).get_indexer(pd.Index(deals["stage"].astype("object")))
    # Unknown stage: the stages' discount parameters pooled (their mean).
    mu_tab = np.concatenate([dr["disc_mu"], dr["disc_mu"].mean(axis=1, keepdims=True)], axis=1)
    sd_tab = np.concatenate([dr["disc_sd"], dr["disc_sd"].mean(axis=1, keepdims=True)], axis=1)
    pos = np.where(stage >= 0, stage, len(lv["stages"]))
    mult = rng.standard_normal((post.n, len(deals)), dtype=F32)
    mult *= np.take(sd_tab.astype(F32), pos, axis=1)
    mult += np.take(mu_tab.astype(F32), pos, axis=1)
    np.exp(mult, out=mult)
    mult *= deals["amount"].fillna(0.0).to_numpy(F32)[None, :]
    for eta in (eta_w, eta_t):
        np.clip(eta, -30, 30, out=eta)
        np.negative(eta, out=eta)
        np.exp(eta, out=eta)
    return eta_w, eta_t, mult


def _new_business(
    post: Posterior, nb: NewBusiness, draw: np.ndarray, rng: np.random.Generator, shock: bool
) -> np.ndarray:
    """Revenue of deals not yet created that close won this quarter, per scenario."""
    dr = post.draws
    s = len(draw)
    mu = np.exp(dr["nb_rate"][draw] + dr["nb_season"][draw, nb.season]) * max(nb.days_left, 0.0)
    alpha = np.maximum(dr["nb_alpha"][draw], 1e-6)
    lam = mu * rng.gamma(alpha, 1.0 / alpha) if shock else mu
    arrivals = rng.poisson(lam)
    z = rng.standard_normal(s) if shock else np.zeros(s)
    p = 1.0 / (1.0 + np.exp(-(dr["nb_win"][draw] + dr["sd_nb_win"][draw] * z)))
    wins = rng.binomial(arrivals, p)
    logs = rng.normal(
        np.repeat(dr["nb_amount_mu"][draw], wins), np.repeat(dr["nb_amount_sd"][draw], wins)
    )
    csum = np.concatenate([[0.0], np.cumsum(np.exp(logs))])
    ends = np.cumsum(wins)
    result: np.ndarray = csum[ends] - csum[ends - wins]
    return result


def simulate(
    post: Posterior,
    deals: pd.DataFrame,
    *,
    won_so_far: pd.DataFrame,
    new_business: NewBusiness,
    options: SimOptions = SimOptions(),
    pull_in: np.ndarray | None = None,
    track: np.ndarray | None = None,
) -> SimResult:
    """The quarter-end revenue distribution.

    ``deals``: scored open deals (deal_id, owner, team, segment, stage, amount, p_win,
    p_won_this_quarter); ``won_so_far``: deals already won this quarter (owner, team, amount);
    ``pull_in``: boolean mask of deals whose timing is forced into the quarter (if they win);
    ``track``: positions of deals whose per-scenario outcome is kept (to explain the P50).
    """
    rng = np.random.default_rng(options.seed)
    if not options.parameter_uncertainty:
        post = post.point()
    deals = deals.reset_index(drop=True)
    order = np.argsort(deals["owner"].astype(str).to_numpy(), kind="stable")
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    tracked_pos = inverse[np.asarray(track if track is not None else [], dtype=np.int64)]
    deals = deals.iloc[order].reset_index(drop=True)
    if pull_in is not None:
        pull_in = np.asarray(pull_in)[order]
    owners = deals["owner"].astype(str).to_numpy()
    starts = (
        np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]]) if len(deals) else np.array([], int)
    )
    owner_names = owners[starts] if len(deals) else np.array([], dtype=object)

    s_total, n_draws = options.n_scenarios, post.n
    per_draw = int(np.ceil(s_total / n_draws))
    a, b, amount = _deal_terms(post, deals, rng)
    if pull_in is not None:
        b[:, pull_in] = 0.0
    n = len(deals)
    draws_per_chunk = max(1, options.chunk_elements // max(per_draw * max(n, 1), 1))
    # This quarter's effects: the posterior of the forecast quarter (the last level), learnt
    # from what it has won so far on top of their spread across quarters.
    cur_w, cur_t = post.draws["quarter_w"][:, -1], post.draws["quarter_t"][:, -1]

    # Layout (draw, scenario, deal): deals are the long, contiguous inner axis of every pass
    # (numpy broadcasting over a short inner axis is slow); rep totals are sums of contiguous
    # runs of deals (sorted by rep). The quarter effects are the draw's, so each deal's chance
    # of winning in the quarter, 1 / ((1 + A e^-u)(1 + B e^-v)), is computed once per draw and
    # the scenarios only compare their uniforms against it (one pass, float32, in place).
    by_owner = np.zeros((n_draws * per_draw, len(owner_names)), dtype=np.float64)
    p_sum = np.zeros(n, dtype=np.float64)
    tracked = np.zeros((n_draws * per_draw, len(tracked_pos)), dtype=bool)
    for d0 in range(0, n_draws, draws_per_chunk):
        d1 = min(d0 + draws_per_chunk, n_draws)
        c = d1 - d0
        if options.quarter_effect:
            eu = np.exp(-cur_w[d0:d1, None]).astype(F32)
            ev = np.exp(-cur_t[d0:d1, None]).astype(F32)
        else:
            eu = ev = np.ones((c, 1), dtype=F32)
        p_in = a[d0:d1] * eu
        p_in += 1.0
        tb = b[d0:d1] * ev
        tb += 1.0
        p_in *= tb
        np.reciprocal(p_in, out=p_in)
        u = rng.random((c, per_draw, n), dtype=F32)
        won = u < p_in[:, None, :]
        np.multiply(amount[d0:d1, None, :], won, out=u)
        rows = slice(d0 * per_draw, d1 * per_draw)
        flat_won = won.reshape(c * per_draw, n)
        if n:
            by_owner[rows] = np.add.reduceat(u.reshape(c * per_draw, n), starts, axis=1)
            p_sum += p_in.sum(axis=0, dtype=np.float64)
        tracked[rows] = flat_won[:, tracked_pos]
    draw_of = np.repeat(np.arange(n_draws), per_draw)
    nb = _new_business(post, new_business, draw_of, rng, options.quarter_effect)
    won_owner = won_so_far.groupby(won_so_far["owner"].astype(str))["amount"].sum()
    owners_df = pd.DataFrame(by_owner, columns=owner_names)
    owners_df = owners_df.add(won_owner.reindex(owners_df.columns).fillna(0.0), axis=1)
    for name, value in won_owner.items():
        if name not in owners_df.columns:
            owners_df[name] = value
    owner_team = pd.concat([deals[["owner", "team"]], won_so_far[["owner", "team"]]])
    team_of = owner_team.drop_duplicates("owner").set_index("owner")["team"].astype(str)
    teams_df = owners_df.T.groupby(team_of.reindex(owners_df.columns).to_numpy()).sum().T
    for scope, frame in (("owner", owners_df), ("team", teams_df)):
        for name, share in new_business.share.get(scope, {}).items():
            if name in frame.columns:
                frame[name] = frame[name] + nb * share
    won_total = float(won_so_far["amount"].sum())
    company = by_owner.sum(axis=1) + nb + won_total
    return SimResult(
        company=company[:s_total],
        teams=teams_df.iloc[:s_total].reset_index(drop=True),
        owners=owners_df.iloc[:s_total].reset_index(drop=True),
        p_won_in_quarter=(p_sum / max(n_draws, 1))[inverse],
        tracked=tracked[:s_total],
        new_business=nb[:s_total],
        won_so_far=won_total,
    )
