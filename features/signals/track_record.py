"""Rep and team track record as of the date: win rate and cycle length, shrunk toward the overall.

Only deals closed on or before ``as_of`` count, and each figure is pulled toward the overall rate
as of that date (a beta prior), so a rep with two closes is not 0% or 100%. A deal entered in the
CRM after it closed counts as a close in the win rate, never in the cycle medians.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.data.schema import Outcome, entered_after_close
from features.data.stages import StageConfig
from features.signals.events import EventIndex, codes, days_between, nan_where
from features.signals.registry import SignalSpec, node, signal, signal_group

# Pseudo-closes of the beta prior that pulls a rep's or team's win rate toward the overall rate.
WIN_RATE_PRIOR_CLOSES = 10.0
# Prior precision of a rep's or team's advance log-odds shift (1 / 0.4**2): the shift is shrunk
# toward 0 (the company's rates) as if 0 had been seen with a standard deviation of 0.4, about the
# spread of people's skill on the log-odds scale, so a few exits move it little.
ADVANCE_PRIOR_PRECISION = 6.0
# Pseudo-closes that pull a rep's or team's median cycle length toward the overall median.
CYCLE_PRIOR_CLOSES = 5.0


def _track_record(deals: pd.DataFrame, by: str, who: pd.Series, as_of: pd.Series) -> pd.DataFrame:
    """Win rate and median cycle of ``who``'s deals closed on or before ``as_of``, shrunk toward
    the overall figures as of the same date (empirical-Bayes style, so few closes stay moderate)."""
    closed = deals[
        deals["outcome"].isin([Outcome.WON.value, Outcome.LOST.value]) & deals["closed_at"].notna()
    ].reset_index(drop=True)
    won = (closed["outcome"] == Outcome.WON.value).to_numpy()
    groups = pd.Index(closed[by].dropna().unique())

    overall = EventIndex(np.zeros(len(closed), dtype=np.int64), closed["closed_at"])
    zero = np.zeros(len(as_of), dtype=np.int64)
    o_lo, o_hi = overall.start(zero), overall.end(zero, as_of)
    o_n = (o_hi - o_lo).astype("float64")
    o_rate = (overall.cumsum(won)[o_hi] + 1.0) / (o_n + 2.0)  # Laplace: 0.5 before any close

    mine = EventIndex(codes(closed[by], groups), closed["closed_at"])
    code = codes(who, groups)
    lo, hi = mine.start(code), mine.end(code, as_of)
    n = np.where(code >= 0, hi - lo, 0).astype("float64")
    wins = np.where(code >= 0, mine.cumsum(won)[hi] - mine.cumsum(won)[lo], 0.0)
    k = WIN_RATE_PRIOR_CLOSES
    rate = (wins + k * o_rate) / (n + k)
    # A deal entered after it closed has no cycle: it counts as a close, not in the medians.
    timed = closed[~entered_after_close(closed, closed["deal_id"])].reset_index(drop=True)
    cycle_days, overall_cycle = _median_cycles(timed, by, groups, code, as_of)
    with np.errstate(divide="ignore", invalid="ignore"):
        cycle_ratio = cycle_days / np.where(overall_cycle > 0, overall_cycle, np.nan)
    return pd.DataFrame(
        {
            f"{by}_win_rate": rate,
            f"{by}_n_closed": n,
            f"{by}_median_cycle_days": cycle_days,
            f"{by}_win_rate_vs_company": rate - o_rate,
            f"{by}_cycle_vs_company": cycle_ratio,
        }
    )


def _median_cycles(
    timed: pd.DataFrame, by: str, groups: pd.Index, code: np.ndarray, as_of: pd.Series
) -> tuple[np.ndarray, np.ndarray]:
    """Median created -> closed days of each group's closes by ``as_of``, shrunk toward the
    overall median by ``CYCLE_PRIOR_CLOSES`` pseudo-closes; and that overall median."""
    cycle = days_between(timed["closed_at"], timed["created_at"]).to_numpy()
    overall = EventIndex(np.zeros(len(timed), dtype=np.int64), timed["closed_at"])
    zero = np.zeros(len(as_of), dtype=np.int64)
    o_med = _prefix_medians(cycle[overall.rows], overall.start(zero), overall.end(zero, as_of))
    mine = EventIndex(codes(timed[by], groups), timed["closed_at"])
    lo, hi = mine.start(code), mine.end(code, as_of)
    n = np.where(code >= 0, hi - lo, 0).astype("float64")
    med = _prefix_medians(cycle[mine.rows], lo, np.where(code >= 0, hi, lo))
    c = CYCLE_PRIOR_CLOSES
    return np.where(n > 0, (n * np.nan_to_num(med) + c * o_med) / (n + c), o_med), o_med


def _prefix_medians(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Median of ``values[lo:hi]`` per query; one np.median per distinct (lo, hi) pair."""
    out = np.full(len(lo), np.nan)
    has = hi > lo
    if not has.any():
        return out
    # Distinct (lo, hi) pairs as one int64 key each, found by sorting: np.unique(axis=0) on the
    # stacked pairs took ~35 ms a call on a 20k-deal snapshot chunk, this a few.
    a, b = lo[has].astype(np.int64), hi[has].astype(np.int64)
    key = a * (int(b.max()) + 1) + b
    order = np.argsort(key, kind="stable")
    ordered = key[order]
    first = np.empty(len(ordered), dtype=bool)
    first[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    inverse = np.empty(len(key), dtype=np.int64)
    inverse[order] = np.cumsum(first) - 1
    starts = order[first]
    meds = np.array([np.median(values[a[i] : b[i]]) for i in starts])
    out[has] = meds[inverse]
    return out


def _record_specs(by: str, who: str) -> list[SignalSpec]:
    return [
        SignalSpec(
            f"{by}_win_rate",
            f"{who}'s win rate over deals closed by the date, shrunk toward the overall rate",
        ),
        SignalSpec(f"{by}_n_closed", f"deals {who} closed (won or lost) by the date"),
        SignalSpec(
            f"{by}_median_cycle_days",
            f"{who}'s median days from creation to close, shrunk toward the overall median",
        ),
        SignalSpec(
            f"{by}_win_rate_vs_company",
            f"{who}'s shrunk win rate minus the company's as of the date (0.05 = 5 points "
            "better): the standing that carries over while the company's rate moves",
        ),
        SignalSpec(
            f"{by}_cycle_vs_company",
            f"{who}'s shrunk median cycle over the company's median as of the date (1.2 = 20% "
            "slower)",
        ),
    ]


@signal_group(_record_specs("owner", "the rep"))
def owner_record(deals: pd.DataFrame, owner: pd.Series, as_of: pd.Series) -> pd.DataFrame:
    return _track_record(deals, "owner", owner, as_of)


@signal_group(_record_specs("team", "the team"))
def team_record(deals: pd.DataFrame, team: pd.Series, as_of: pd.Series) -> pd.DataFrame:
    return _track_record(deals, "team", team, as_of)


# --- stage-to-stage conversion --------------------------------------------------------------------
@node
def stage_exits(
    stage_history: pd.DataFrame, deals: pd.DataFrame, stages: StageConfig
) -> pd.DataFrame:
    """One row per open stage a deal left forward (a later open stage, or won) or lost, stamped
    with the next stage's entry, and the company's advance rate from that stage over the exits
    before it (Laplace-smoothed). Backward moves are neither; derived history rows (deals-only
    imports) have no entry time and give no exits."""
    sh = stage_history[~stage_history["derived"].astype(bool)]
    sh = sh.sort_values(["deal_id", "entered_at"], kind="stable").reset_index(drop=True)
    order = {s.key: float(s.order) for s in stages.open_stages}
    same_deal = (sh["deal_id"].shift(-1) == sh["deal_id"]).fillna(False).to_numpy(dtype=bool)
    here = pd.Series(sh["stage"].map(order), dtype="float64").to_numpy()
    nxt = sh["stage"].shift(-1)
    nxt_order = pd.Series(nxt.map(order), dtype="float64").to_numpy()
    forward = (nxt == stages.won_key).to_numpy(dtype=bool) | (nxt_order > here)
    lost = (nxt == stages.lost_key).to_numpy(dtype=bool)
    keep = same_deal & ~np.isnan(here) & (forward | lost)
    owners = deals.set_index("deal_id")
    exits = pd.DataFrame(
        {
            "stage": sh["stage"].to_numpy()[keep],
            "exited_at": sh["entered_at"].shift(-1).to_numpy()[keep],
            "forward": forward[keep].astype("float64"),
            "owner": owners["owner"].reindex(sh["deal_id"].to_numpy()[keep]).to_numpy(),
            "team": owners["team"].reindex(sh["deal_id"].to_numpy()[keep]).to_numpy(),
        }
    )
    exits = exits.dropna(subset=["exited_at"]).sort_values("exited_at", kind="stable")
    by_stage = exits.groupby("stage", sort=False)["forward"]
    earlier_fwd = by_stage.cumsum() - exits["forward"]
    earlier_n = by_stage.cumcount()
    exits["expected"] = (earlier_fwd + 1.0) / (earlier_n + 2.0)
    return exits.reset_index(drop=True)


def _advance_skill(
    stage_exits: pd.DataFrame, by: str, who: pd.Series, as_of: pd.Series
) -> pd.Series:
    """Shift of ``who``'s log-odds of advancing against the company's rates, from the stage exits
    of their deals by ``as_of``: one Newton step of a logistic model with a Gaussian prior,
    sum(advanced - expected) / (sum expected * (1 - expected) + prior precision). Every stage a
    deal leaves is a measurement, so this knows a rep from open deals too, long before a win
    rate would. Missing while the company has no exit yet."""
    ex = stage_exits
    groups = pd.Index(ex[by].dropna().unique())
    idx = EventIndex(codes(ex[by], groups), ex["exited_at"])
    code = codes(who, groups)
    expected = ex["expected"].to_numpy()
    lo, hi = idx.start(code), idx.end(code, as_of)
    resid = idx.cumsum(ex["forward"].to_numpy() - expected)
    info = idx.cumsum(expected * (1.0 - expected))
    r = np.where(code >= 0, resid[hi] - resid[lo], 0.0)
    v = np.where(code >= 0, info[hi] - info[lo], 0.0)
    overall = EventIndex(np.zeros(len(ex), dtype=np.int64), ex["exited_at"])
    zero = np.zeros(len(as_of), dtype=np.int64)
    any_exit = overall.end(zero, as_of) > overall.start(zero)
    return nan_where(r / (v + ADVANCE_PRIOR_PRECISION), ~any_exit)


@signal(
    "the rep's stage-to-stage conversion over the stages their deals left by the date, against "
    "the company's rates then: shift in log-odds of advancing, shrunk toward 0 (average)"
)
def owner_advance_skill(stage_exits: pd.DataFrame, owner: pd.Series, as_of: pd.Series) -> pd.Series:
    return _advance_skill(stage_exits, "owner", owner, as_of)


@signal(
    "the team's stage-to-stage conversion over the stages its deals left by the date, against "
    "the company's rates then: shift in log-odds of advancing, shrunk toward 0 (average)"
)
def team_advance_skill(stage_exits: pd.DataFrame, team: pd.Series, as_of: pd.Series) -> pd.Series:
    return _advance_skill(stage_exits, "team", team, as_of)
