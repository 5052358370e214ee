"""What the Bayesian layer learns from: past quarters' pipelines at the same point of the quarter.

For a forecast as of ``as_of`` (``d`` days into its quarter), each of the previous quarters is
rebuilt as it stood ``d`` days into it, its open deals scored by a scorer fitted before that
quarter began (one scorer per quarter, so history is scored exactly as the forecast is), and
labelled with what was known at ``as_of``:

- ``WON_IN_QUARTER``: closed won within that quarter (the quarter ended before ``as_of``);
- ``WON_LATER``: won after it, by ``as_of``; ``LOST``: lost by ``as_of``;
- ``UNRESOLVED``: still open at ``as_of`` (we only know it did not win within the quarter).

Beside the deals: new business (deals created after the quarter's rebuild date that closed won
within it; their number, how many were created, their amounts) and discounts (amount won over
amount at rebuild time for the deals won within the quarter). Nothing decided after ``as_of`` is
read: every label checks ``closed_at <= as_of``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from features.data.calendar import previous_quarter, quarter_bounds, quarter_of
from features.data.schema import CanonicalTables, Outcome
from features.data.stages import StageConfig
from features.errors import NotEnoughDataError
from features.pipeline.metrics import compute_metric
from features.signals.pointintime import deal_states_as_of
from forecasting.scoring import PACE_DAYS, Scorer, ScorerFactory

WON_IN_QUARTER, WON_LATER, LOST, UNRESOLVED = 0, 1, 2, 3
# Probabilities are clipped before the logit so a 0 or 1 from a scorer stays finite.
P_CLIP = 1e-4
HISTORY_QUARTERS = 6
# log(EUR 100k): amounts enter the model as log(amount) - AMOUNT_CENTRE
AMOUNT_CENTRE = 11.5
MIN_HISTORY_QUARTERS = 2
# A scorer fitted soon after the data starts has learnt only from the deals that closed fast.
WARMUP_COHORT_DAYS = 91
WARMUP_SHARE = 0.9


def logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), P_CLIP, 1 - P_CLIP)
    return np.log(q / (1 - q))


def deal_features(scored: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logit P(win), logit P(close this quarter | win), centred log amount) of scored deals.

    The amount is there because a revenue forecast needs probabilities calibrated by value: big
    deals (long, complex projects) close later than a count-calibrated score says.
    """
    p_win = np.clip(scored["p_win"].to_numpy(dtype=np.float64), P_CLIP, 1 - P_CLIP)
    p_q = np.clip(scored["p_won_this_quarter"].to_numpy(dtype=np.float64), 0.0, p_win)
    amount = scored["amount"].to_numpy(dtype=np.float64)
    log_amount = np.where(
        amount > 0, np.log(np.where(amount > 0, amount, 1.0)) - AMOUNT_CENTRE, 0.0
    )
    return logit(p_win), logit(p_q / p_win), np.nan_to_num(log_amount)


def rebuild_date(quarter: str, offset: pd.Timedelta) -> pd.Timestamp:
    """The instant ``offset`` into ``quarter`` (capped at its end)."""
    start, end = quarter_bounds(quarter)
    return min(start + offset, end)


def scorer_cutoff(quarter: str) -> pd.Timestamp:
    """Scorers for a quarter are fitted on what was known the instant before it began."""
    return quarter_bounds(quarter)[0] - pd.Timedelta(microseconds=1)


class ScorerCache:
    """One scorer per quarter (fitted before it began), fitted once and reused; and the past
    pipelines it scored, which do not depend on the forecast date (only their labels do)."""

    def __init__(self, factory: ScorerFactory) -> None:
        self.factory = factory
        self._fitted: dict[str, Scorer | None] = {}
        self.cutoffs: list[pd.Timestamp] = []
        self.rebuilt: dict[tuple[str, pd.Timedelta], _Quarter] = {}

    def for_quarter(
        self, tables: CanonicalTables, stages: StageConfig, quarter: str
    ) -> Scorer | None:
        """The quarter's scorer, or None when too little had closed before it to fit one."""
        if quarter not in self._fitted:
            cutoff = scorer_cutoff(quarter)
            self.cutoffs.append(cutoff)
            try:
                self._fitted[quarter] = self.factory(tables, stages, cutoff)
            except NotEnoughDataError:
                self._fitted[quarter] = None
        return self._fitted[quarter]

    def method(self, quarter: str) -> str:
        """How the quarter's deals were scored: 'models', 'stage_history' (or the factory's
        name), 'none' when nothing could be fitted."""
        if self._fitted.get(quarter) is None:
            return "none"
        methods = getattr(self.factory, "methods", None)
        if isinstance(methods, dict):
            return str(methods.get(scorer_cutoff(quarter), "unknown"))
        return str(getattr(self.factory, "__name__", type(self.factory).__name__))


@dataclass(frozen=True)
class FitData:
    """Arrays the Bayesian model is fitted on (levels are the names behind the indices)."""

    as_of: pd.Timestamp
    quarters: list[str]
    teams: list[str]
    segments: list[str]
    stages: list[str]
    # deal rows: identical (scores, team, segment, quarter) aggregated, counts per outcome
    x_win: np.ndarray
    x_time: np.ndarray
    x_amount: np.ndarray
    team: np.ndarray
    segment: np.ndarray
    quarter: np.ndarray
    weight: np.ndarray  # (rows, 4): how many deals of the row ended in each outcome code
    # early rows: each quarter's pipeline at its first instant (the forecast quarter last):
    # logit of the quarter's own scorer's P(won by the forecast's point of the quarter), counts
    # (won by then, not): what this quarter has shown so far against what its scorer expected
    e_x_pace: np.ndarray
    e_x_amount: np.ndarray
    e_quarter: np.ndarray
    e_weight: np.ndarray
    # per quarter (the forecast quarter last): log(its scorer's expected value won within it /
    # the stage rule's) for its pipeline at its start, centred on the history quarters' mean
    q_gap: np.ndarray
    # discounts: log(amount won / amount at rebuild) of deals won within their quarter
    disc_stage: np.ndarray
    disc_log_ratio: np.ndarray
    # log amount won of every deal won within its quarter: the market's deal sizes, which the
    # few new-business wins borrow their spread from
    won_log_amount: np.ndarray
    # new business per history quarter
    nb_days: np.ndarray
    nb_quarter: np.ndarray
    nb_created: np.ndarray
    nb_won: np.ndarray
    nb_qoy: np.ndarray
    nb_log_amount: np.ndarray
    # share of new-business revenue per team and per owner over the history quarters
    nb_share: dict[str, dict[str, float]] = field(default_factory=dict)
    meta: dict[str, float] = field(default_factory=dict)

    @property
    def current(self) -> int:
        """Index of the forecast quarter among ``quarters`` (the last)."""
        return len(self.quarters) - 1

    @property
    def shape_key(self) -> tuple[int, int, int, int]:
        """Sizes of the model's parameters: a compiled model is reusable for equal keys."""
        return len(self.quarters), len(self.teams), len(self.segments), len(self.stages)


@dataclass(frozen=True)
class _Quarter:
    name: str
    end: pd.Timestamp
    deals: pd.DataFrame  # scored open deals with their final amounts, closed_at and outcome
    created: int
    won_new: pd.DataFrame  # new deals won within the quarter: owner, team, amount
    days_left: float
    # the scorer's P(won within d days), d = 0..PACE_DAYS, per deal (rebuilt at the start only)
    pace: np.ndarray | None = None
    # at the start only: the stage rule's expected value of the pipeline closing in the quarter
    # (amount x the stage's win probability, expected close date in the quarter)
    rule_expected: float | None = None


def _rebuild_quarter(
    tables: CanonicalTables,
    stages: StageConfig,
    quarter: str,
    offset: pd.Timedelta,
    scorer: Scorer,
) -> _Quarter:
    """A past quarter's pipeline ``offset`` into it, scored; outcomes are attached raw and only
    turned into labels by :func:`_labelled` for a given forecast date. At the quarter's start
    (``offset`` 0) also how soon its scorer expected each deal won, day by day."""
    at = rebuild_date(quarter, offset)
    q_end = quarter_bounds(quarter)[1]
    scored = scorer.score(tables, stages, at).reset_index(drop=True)
    deals = tables.deals.set_index("deal_id")
    scored["_closed_at"] = pd.to_datetime(deals["closed_at"]).reindex(scored["deal_id"]).to_numpy()
    scored["_outcome"] = deals["outcome"].reindex(scored["deal_id"]).to_numpy()
    # Amounts as of the quarter's end: the amount each deal won at (q_end is before as_of).
    end_states = deal_states_as_of(tables, q_end, stages)
    final = end_states.set_index("deal_id")["amount"]
    scored["amount_won"] = final.reindex(scored["deal_id"]).to_numpy()
    created = pd.to_datetime(end_states["created_at"])
    new = end_states[created > at]
    won_new = new[(new["outcome"] == Outcome.WON.value) & (new["closed_at"] <= q_end)]
    pace, rule_expected = None, None
    if offset == pd.Timedelta(0):
        days = np.arange(PACE_DAYS + 1)
        within = scorer.won_within(tables, stages, at, days).reindex(scored["deal_id"])
        pace = np.nan_to_num(within.to_numpy(dtype=np.float64))
        pace[:, 0] = 0.0  # nothing is won within no time
        rule_expected = float(compute_metric(tables, stages, at, "weighted").closing_this_quarter)
    return _Quarter(
        name=quarter,
        end=q_end,
        deals=scored,
        created=len(new),
        won_new=won_new[["owner", "team", "amount"]].fillna({"amount": 0.0}),
        days_left=max((q_end - at).total_seconds() / 86400.0, 0.0),
        pace=pace,
        rule_expected=rule_expected,
    )


def _labelled(part: _Quarter, as_of: pd.Timestamp) -> _Quarter:
    """The quarter's deals with outcome codes as known at ``as_of`` (after the quarter ended)."""
    if part.end >= as_of:
        raise ValueError(f"{part.name} has not ended by {as_of}: its outcomes are not known")
    closed = part.deals["_closed_at"].to_numpy()
    outcome = part.deals["_outcome"].to_numpy()
    known = closed <= as_of.to_datetime64()  # NaT compares False: still open
    won = known & (outcome == Outcome.WON.value)
    code = np.full(len(closed), UNRESOLVED)
    code[known & ~won] = LOST
    code[won] = WON_LATER
    code[won & (closed <= part.end.to_datetime64())] = WON_IN_QUARTER
    deals = part.deals.drop(columns=["_closed_at", "_outcome"]).assign(outcome_code=code)
    return dataclasses.replace(part, deals=deals)


def _early_labelled(part: _Quarter, by: pd.Timestamp) -> pd.DataFrame:
    """A quarter's pipeline at its start, labelled 1 if won by ``by`` (inside the quarter), with
    its scorer's P(won by then) (``p_by``)."""
    assert part.pace is not None, "early rows come from a quarter rebuilt at its start"
    closed = part.deals["_closed_at"].to_numpy()
    won = (closed <= by.to_datetime64()) & (part.deals["_outcome"].to_numpy() == Outcome.WON.value)
    start = quarter_bounds(part.name)[0]
    day = int(np.clip(round((by - start) / pd.Timedelta(days=1)), 0, PACE_DAYS))
    return part.deals.drop(columns=["_closed_at", "_outcome"]).assign(
        early_won=won, p_by=part.pace[:, day]
    )


def scorer_gap(part: _Quarter) -> float:
    """log(the scorer's expected value won within the quarter / the stage rule's), for a
    quarter's pipeline at its start; NaN where either is not positive.

    Deal models refitted before each quarter carry the shocks of the quarters they learnt from
    (on 20k generated deals their in-quarter sums ran from 0.77 to 1.43 times the stage rule's);
    how far a quarter's scorer leans away from the rule predicts how far it misses.
    """
    assert part.rule_expected is not None, "the gap comes from a quarter rebuilt at its start"
    amount = part.deals["amount"].astype("float64").fillna(0.0).to_numpy()
    p = part.deals["p_won_this_quarter"].astype("float64").fillna(0.0).to_numpy()
    mine = float((amount * p).sum())
    if mine > 0 and part.rule_expected > 0:
        return float(np.log(mine / part.rule_expected))
    return float("nan")


def scorer_warmup_end(tables: CanonicalTables, as_of: pd.Timestamp) -> pd.Timestamp:
    """When a scorer's training window stops being cut short by the data's start: the date by
    which 90% of the deals created in the data's first 91 days, of those closed by ``as_of``,
    had closed. A scorer fitted sooner learnt only from the deals that closed fast; on 20,000
    generated deals (seed 3) the one fitted before 2022Q3 expected 343 in-quarter wins at its
    week 8 against 117 won, those from 2023Q2 on within 3%."""
    created = pd.to_datetime(tables.deals["created_at"])
    closed = pd.to_datetime(tables.deals["closed_at"])
    first = created < created.min() + pd.Timedelta(days=WARMUP_COHORT_DAYS)
    done = closed[first & (closed <= as_of)].dropna()
    if done.empty:
        return pd.Timestamp(created.min())
    when = np.sort(done.to_numpy(dtype="datetime64[ns]"))
    return pd.Timestamp(when[int(np.ceil(WARMUP_SHARE * len(when))) - 1])


def history_quarters(as_of: pd.Timestamp, n: int = HISTORY_QUARTERS) -> list[str]:
    """The ``n`` quarters before ``as_of``'s quarter, oldest first."""
    out: list[str] = []
    q = quarter_of(as_of)
    for _ in range(n):
        q = previous_quarter(q)
        out.append(q)
    return out[::-1]


def build_fit_data(
    tables: CanonicalTables,
    stages: StageConfig,
    as_of: pd.Timestamp,
    scorers: ScorerCache,
    *,
    n_quarters: int = HISTORY_QUARTERS,
    progress: Callable[[int, int], None] | None = None,
) -> FitData:
    """Past pipelines at ``as_of``'s point of the quarter, scored and labelled as of ``as_of``."""
    as_of = pd.Timestamp(as_of)
    offset = as_of - quarter_bounds(quarter_of(as_of))[0]
    first_created = pd.to_datetime(tables.deals["created_at"]).min()
    parts: list[_Quarter] = []
    candidates = history_quarters(as_of, n_quarters)
    for i, q in enumerate(candidates):
        if progress is not None:
            progress(i, len(candidates))
        if quarter_bounds(q)[0] < first_created:
            continue
        scorer = scorers.for_quarter(tables, stages, q)
        if scorer is None:
            continue
        key = (q, offset)
        if key not in scorers.rebuilt:
            scorers.rebuilt[key] = _rebuild_quarter(tables, stages, q, offset, scorer)
        parts.append(_labelled(scorers.rebuilt[key], as_of))
    # Every quarter's pipeline at its first instant, and what it had won by the forecast's point
    # of the quarter: for the forecast quarter itself, that is what it has shown so far.
    early: list[pd.DataFrame] = []
    gaps: list[float] = []
    for i, q in enumerate([p.name for p in parts] + [quarter_of(as_of)]):
        scorer = scorers.for_quarter(tables, stages, q)
        if scorer is None:
            raise NotEnoughDataError(f"too few deals closed before {q} to score its pipeline")
        key = (q, pd.Timedelta(0))
        if key not in scorers.rebuilt:
            scorers.rebuilt[key] = _rebuild_quarter(tables, stages, q, pd.Timedelta(0), scorer)
        by = min(rebuild_date(q, offset), as_of)
        early.append(_early_labelled(scorers.rebuilt[key], by).assign(q_idx=i))
        gaps.append(scorer_gap(scorers.rebuilt[key]))
    if len(parts) < MIN_HISTORY_QUARTERS:
        raise NotEnoughDataError(
            f"only {len(parts)} past quarters before {as_of:%Y-%m-%d} can be scored; the "
            f"forecast model needs at least {MIN_HISTORY_QUARTERS} (more history, or an "
            "earlier data start)"
        )
    return _assemble(as_of, parts, early, np.array(gaps), stages)


def _levels(values: pd.Series) -> list[str]:
    return sorted({str(v) for v in values.dropna()})


def _aggregate(frame: pd.DataFrame, teams: list[str], segments: list[str],
               counts: pd.DataFrame) -> pd.DataFrame:  # fmt: skip
    """Identical (scores, amount, team, segment, quarter) rows summed, counts per outcome."""
    x_win, x_time, x_amount = deal_features(frame)
    rows = pd.DataFrame(
        {
            "x_win": np.round(x_win, 3),
            "x_time": np.round(x_time, 3),
            "x_amount": np.round(x_amount, 1),
            "team": _index(frame["team"], teams),
            "segment": _index(frame["segment"], segments),
            "quarter": frame["q_idx"].to_numpy(),
        }
    )
    keys = list(rows.columns)
    both = pd.concat([rows, counts.astype(np.float64).set_axis(rows.index)], axis=1)
    return both.groupby(keys, sort=False).sum().reset_index()


def _assemble(
    as_of: pd.Timestamp,
    parts: list[_Quarter],
    early: list[pd.DataFrame],
    gaps: np.ndarray,
    stages: StageConfig,
) -> FitData:
    deals = pd.concat([p.deals.assign(q_idx=i) for i, p in enumerate(parts)], ignore_index=True)
    teams, segments = _levels(deals["team"]), _levels(deals["segment"])
    first = pd.concat(early, ignore_index=True)
    won_early = first["early_won"].to_numpy(dtype=bool)
    e_agg = (
        pd.DataFrame(
            {
                "x_pace": np.round(logit(first["p_by"].to_numpy()), 3),
                "x_amount": np.round(deal_features(first)[2], 1),
                "quarter": first["q_idx"].to_numpy(),
                "won": won_early.astype(np.float64),
                "not": (~won_early).astype(np.float64),
            }
        )
        .groupby(["x_pace", "x_amount", "quarter"], sort=False)
        .sum()
        .reset_index()
    )
    stage_keys = stages.open_keys
    counts = pd.get_dummies(deals["outcome_code"]).reindex(
        columns=[WON_IN_QUARTER, WON_LATER, LOST, UNRESOLVED], fill_value=0
    )
    agg = _aggregate(deals, teams, segments, counts)
    won_q = deals[(deals["outcome_code"] == WON_IN_QUARTER)]
    ratio = won_q["amount_won"] / won_q["amount"]
    new = pd.concat([p.won_new for p in parts], ignore_index=True)
    total_new = float(new["amount"].sum())
    nb_share = {
        scope: {str(k): float(v) / total_new for k, v in new.groupby(scope)["amount"].sum().items()}
        if total_new > 0
        else {}
        for scope in ("team", "owner")
    }
    ok = np.isfinite(ratio) & (ratio > 0) & won_q["stage"].isin(stage_keys)
    # centred on the history quarters' mean; a quarter without a gap reads as an average one
    known = np.isfinite(gaps[:-1])
    q_gap = np.nan_to_num(gaps - gaps[:-1][known].mean()) if known.any() else np.zeros(len(gaps))
    return FitData(
        as_of=as_of,
        quarters=[p.name for p in parts] + [quarter_of(as_of)],
        teams=teams,
        segments=segments,
        stages=stage_keys,
        x_win=agg["x_win"].to_numpy(np.float64),
        x_time=agg["x_time"].to_numpy(np.float64),
        x_amount=agg["x_amount"].to_numpy(np.float64),
        team=agg["team"].to_numpy(np.int64),
        segment=agg["segment"].to_numpy(np.int64),
        quarter=agg["quarter"].to_numpy(np.int64),
        weight=agg[[WON_IN_QUARTER, WON_LATER, LOST, UNRESOLVED]].to_numpy(np.float64),
        e_x_pace=e_agg["x_pace"].to_numpy(np.float64),
        e_x_amount=e_agg["x_amount"].to_numpy(np.float64),
        e_quarter=e_agg["quarter"].to_numpy(np.int64),
        e_weight=e_agg[["won", "not"]].to_numpy(np.float64),
        q_gap=q_gap,
        disc_stage=_index(won_q.loc[ok, "stage"], stage_keys),
        disc_log_ratio=np.log(ratio[ok].to_numpy(np.float64)),
        won_log_amount=np.log(won_q.loc[won_q["amount_won"] > 0, "amount_won"].to_numpy(float)),
        nb_days=np.array([p.days_left for p in parts], dtype=np.float64),
        nb_quarter=np.arange(len(parts), dtype=np.int64),
        nb_created=np.array([p.created for p in parts], dtype=np.int64),
        nb_won=np.array([len(p.won_new) for p in parts], dtype=np.int64),
        nb_qoy=np.array([int(p.name[5]) - 1 for p in parts], dtype=np.int64),
        # a missing amount is unknown, not a deal worth EUR 1: left out of the amount fit
        nb_log_amount=np.log(new.loc[new["amount"] > 0, "amount"].to_numpy(np.float64)),
        nb_share=nb_share,
        meta={"deal_rows": float(len(deals)), "aggregated_rows": float(len(agg))},
    )


def _index(values: pd.Series, levels: list[str]) -> np.ndarray:
    """Index of each value in ``levels``; -1 for a level not seen (missing or new)."""
    return pd.Index(levels).get_indexer(pd.Index(values.astype("object")))
