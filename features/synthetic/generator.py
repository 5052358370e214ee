"""Synthetic CRM generator: a multi-year manufacturing B2B pipeline as canonical tables + truth.

Models are only worth testing against data whose truth is known. This module simulates a sales
organisation (teams, reps of different skill, accounts, products) whose deals carry a latent
quality that drives the outcome but shows only noisily in what a CRM records: activity rhythm,
stakeholders, close-date pushes, amount changes, forecast categories. A shared quarter-level shock
moves many deals at once. The true win probability of every deal is kept in a separate truth frame.

Everything is vectorised over deals with numpy (one ``Generator`` built from the seed; no global
random state, no clock), so 100k deals take seconds rather than minutes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from features.data.schema import (
    TRACKED_FIELDS,
    CanonicalTables,
    ForecastCategory,
    HistorySource,
    LossReason,
    Outcome,
    StakeholderRole,
    TargetScope,
)
from features.data.stages import StageConfig, load_stage_config
from features.errors import InputError

FloatArr = npt.NDArray[np.float64]
IntArr = npt.NDArray[np.int64]
BoolArr = npt.NDArray[np.bool_]
ObjArr = npt.NDArray[np.object_]

ProgressFn = Callable[[int, int], None]

# --- the simulated world ----------------------------------------------------------------------
# (name, median ballpark amount in EUR, complexity multiplier on stage durations, share of deals)
PRODUCTS: tuple[tuple[str, float, float, float], ...] = (
    ("Spare parts & service contract", 30_000, 0.8, 0.25),
    ("Automation retrofit", 90_000, 1.0, 0.25),
    ("Robotic palletizing cell", 220_000, 1.2, 0.22),
    ("Packaging line", 450_000, 1.55, 0.18),
    ("Turnkey production line", 1_200_000, 2.6, 0.10),
)
# (name, amount multiplier, complexity multiplier, share of accounts)
SEGMENTS: tuple[tuple[str, float, float, float], ...] = (
    ("SMB", 0.6, 0.85, 0.40),
    ("Mid-Market", 1.0, 1.0, 0.40),
    ("Enterprise", 1.8, 1.35, 0.20),
)
INDUSTRIES = (
    "Food & Beverage",
    "Automotive",
    "Pharmaceuticals",
    "Metalworking",
    "Plastics",
    "Chemicals",
    "Electronics",
    "Logistics",
)
COMPETITORS = (
    "Vortex Industrial",
    "Hansa Maschinenbau",
    "NordTech Automation",
    "Apex Line Systems",
    "Meridian Robotics",
    "Polder Engineering",
)
REGIONS = ("Benelux", "DACH", "Nordics", "UK & Ireland", "France", "Iberia", "CEE", "Italy")
FIRST_NAMES = (
    "Anna", "Bram", "Carla", "Daan", "Eva", "Finn", "Greta", "Hugo", "Iris", "Jonas", "Katrin",
    "Lars", "Mila", "Niels", "Olga", "Pieter", "Quinn", "Roos", "Sven", "Tess", "Ulrich", "Vera",
    "Wout", "Xenia", "Yannick", "Zoe", "Marco", "Lotte", "Jens", "Sanne",
)  # fmt: skip
LAST_NAMES = (
    "de Vries", "Jansen", "Bakker", "Visser", "Smit", "Meyer", "Schmidt", "Muller", "Weber",
    "Berg", "Hansen", "Larsen", "Dubois", "Martin", "Peeters", "Maes", "Novak", "Rossi", "Keller",
    "Brouwer", "Dekker", "Mulder", "Vos", "Hendriks", "Koch", "Wagner", "Lindqvist", "Moreau",
    "Costa", "Hofman",
)  # fmt: skip
ACCOUNT_STEMS = (
    "Brabant", "Rijnmond", "Twente", "Kempen", "Veluwe", "Nordsee", "Alpen", "Elbe", "Maas",
    "Schelde", "Danube", "Baltic", "Fjord", "Ardennes", "Limburg", "Hanze", "Zeeland", "Eifel",
    "Tyrol", "Jura", "Lakeland", "Midland", "Highland", "Polder", "Delta", "Kanaal", "Ruhr",
    "Saxon", "Flanders", "Gelder",
)  # fmt: skip
ACCOUNT_KINDS = (
    "Metaal", "Foods", "Packaging", "Techniek", "Plastics", "Werke", "Industries", "Pharma",
    "Components", "Chemie", "Dairy", "Automotive", "Precision", "Fabriek", "Logistics",
    "Electronics", "Bakeries", "Castings", "Polymers", "Systems",
)  # fmt: skip
DECISION_CRITERIA = (
    "Throughput; total cost of ownership",
    "Uptime; service response time",
    "Price; delivery lead time",
    "Product quality; regulatory compliance",
    "Energy use; footprint on the shop floor",
    "Integration with existing MES; operator training",
)
BUYING_PROCESSES = (
    "Plant manager proposes, CFO approves",
    "Capex committee (quarterly)",
    "Central procurement tender",
    "Owner decides after site visit",
    "Group engineering sign-off, then local purchasing",
)
# Next steps by stage position (early, discovery, proposal, late).
NEXT_STEPS: tuple[tuple[str, ...], ...] = (
    ("Discovery call", "Stakeholder mapping session", "Confirm budget and timeline"),
    ("Technical deep-dive", "Demo at customer site", "Factory tour", "Reference call"),
    ("Send quote", "Proposal presentation", "Q&A on the quote"),
    ("Pricing call", "Contract redlines", "Executive sponsor meeting", "Await PO"),
)
ACTIVITY_TYPES = ("call", "meeting", "email", "demo", "site_visit", "proposal")
# Activity type mix by stage position (columns follow ACTIVITY_TYPES; 'proposal' is placed apart).
ACTIVITY_MIX = np.array(
    [
        [0.35, 0.25, 0.35, 0.03, 0.02, 0.0],
        [0.20, 0.27, 0.28, 0.15, 0.10, 0.0],
        [0.28, 0.27, 0.40, 0.03, 0.02, 0.0],
        [0.30, 0.30, 0.38, 0.01, 0.01, 0.0],
    ]
)
OTHER_ROLES = (
    StakeholderRole.INFLUENCER,
    StakeholderRole.FINANCE,
    StakeholderRole.ENGINEERING,
    StakeholderRole.OPERATIONS,
    StakeholderRole.PROCUREMENT,
    StakeholderRole.OTHER,
)
OTHER_ROLE_P = np.array([0.25, 0.15, 0.2, 0.2, 0.12, 0.08])
# Arrivals by calendar month: quiet August and December, busy autumn (trade-fair season).
MONTH_WEIGHT = np.array([0.9, 1.0, 1.1, 1.05, 1.0, 0.95, 0.8, 0.6, 1.1, 1.15, 1.05, 0.7])
ANNUAL_GROWTH = 0.12
SHOCK_SD = 0.45
# How strongly the quarter shock at a stage's exit moves the chance of advancing (logit scale).
EXIT_SHOCK_COEF = 0.6
FC_CODES = (
    ForecastCategory.PIPELINE,
    ForecastCategory.BEST_CASE,
    ForecastCategory.COMMIT,
    ForecastCategory.OMITTED,
    ForecastCategory.CLOSED,
)
F_AMOUNT, F_ECD, F_FC, F_NS, F_NSD = range(5)
_FIELD_IDX = {name: i for i, name in enumerate(TRACKED_FIELDS)}
assert [_FIELD_IDX[f] for f in TRACKED_FIELDS] == [F_AMOUNT, F_ECD, F_FC, F_NS, F_NSD]


@dataclass(frozen=True)
class GeneratedData:
    """Canonical tables plus the truth behind them (one truth row per deal)."""

    tables: CanonicalTables
    truth: pd.DataFrame  # deal_id, quality, p_win_true, final_outcome, ...
    quarter_shocks: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame({"quarter": [], "shock": []})
    )
    # The model behind the outcomes, for an oracle (see ``_Simulation._oracle_params``).
    oracle: dict[str, Any] = field(default_factory=dict)


def _sigmoid(x: FloatArr) -> FloatArr:
    return 1.0 / (1.0 + np.exp(-x))


def _masked(keep: BoolArr, values: ObjArr) -> ObjArr:
    """``values`` where ``keep``, else None (a missing CRM field)."""
    out = np.full(len(values), None, dtype=object)
    out[keep] = values[keep]
    return out


def _logit(p: float) -> float:
    return float(np.log(p / (1.0 - p)))


def _stage_position(k: int, n_open: int) -> int:
    """Map open stage k to one of four archetypes (early, discovery, proposal, late)."""
    if n_open <= 1:
        return 0
    return min(3, round(3 * k / (n_open - 1)))


@dataclass
class _Events:
    """Set-events of tracked fields, collected before the history chains are built."""

    deal: list[IntArr] = field(default_factory=list)
    fld: list[IntArr] = field(default_factory=list)
    t: list[FloatArr] = field(default_factory=list)
    val: list[FloatArr] = field(default_factory=list)
    init: list[BoolArr] = field(default_factory=list)

    def add(self, deal: IntArr, fld: int, t: FloatArr, val: FloatArr, init: bool = False) -> None:
        self.deal.append(deal.astype(np.int64))
        self.fld.append(np.full(len(deal), fld, dtype=np.int64))
        self.t.append(np.asarray(t, dtype=np.float64))
        self.val.append(np.asarray(val, dtype=np.float64))
        self.init.append(np.full(len(deal), init))


class _Clock:
    """Converts simulation time (float days since ``start``) to timestamps, dates and quarters."""

    def __init__(self, start: date, end: date) -> None:
        self.start = start
        self.horizon = float((end - start).days)
        self.start_s = int(np.datetime64(start, "s").astype(np.int64))
        self.start_d = int(np.datetime64(start, "D").astype(np.int64))
        n_days = int(self.horizon) + 6000  # room for deals simulated far past the export
        days = np.datetime64(start, "D") + np.arange(n_days)
        years = days.astype("datetime64[Y]").astype(np.int64) + 1970
        months = days.astype("datetime64[M]").astype(np.int64) % 12
        self.month = months
        self.weekday = (days.astype(np.int64) + 3) % 7  # 0 = Monday
        absq = years * 4 + months // 3
        self.q0 = int(absq[0])
        self.qidx = (absq - self.q0).astype(np.int64)
        self.n_quarters = int(self.qidx[-1]) + 1

    def quarter_of(self, t: FloatArr) -> IntArr:
        day = np.clip(np.nan_to_num(np.floor(t), nan=0.0, posinf=1e9), 0, len(self.qidx) - 1)
        return self.qidx[day.astype(np.int64)]

    def quarter_label(self, qi: int) -> str:
        a = self.q0 + qi
        return f"{a // 4}Q{a % 4 + 1}"

    def timestamps(self, t: FloatArr) -> npt.NDArray[np.datetime64]:
        ok = np.isfinite(t)
        secs = np.where(ok, np.rint(np.where(ok, t, 0.0) * 86400.0), 0).astype(np.int64)
        out = (secs + self.start_s).astype("datetime64[s]").astype("datetime64[us]")
        out[~ok] = np.datetime64("NaT")
        return out

    def seconds(self, t: FloatArr) -> IntArr:
        return np.rint(t * 86400.0).astype(np.int64) + self.start_s

    def dates(self, day: FloatArr) -> npt.NDArray[np.datetime64]:
        ok = np.isfinite(day)
        d = np.where(ok, day, 0).astype(np.int64) + self.start_d
        out = d.astype("datetime64[D]").astype("datetime64[us]")
        out[~ok] = np.datetime64("NaT")
        return out

    def date_strings(self, day: FloatArr) -> npt.NDArray[np.str_]:
        d = day.astype(np.int64) + self.start_d
        return np.datetime_as_string(d.astype("datetime64[D]"), unit="D")


def _names(
    rng: np.random.Generator, n: int, first: tuple[str, ...], last: tuple[str, ...]
) -> ObjArr:
    """``n`` distinct 'first last' names (numbered once the combinations run out)."""
    combos = np.array([f"{a} {b}" for a in first for b in last], dtype=object)
    rng.shuffle(combos)
    out = np.empty(n, dtype=object)
    for i in range(n):
        base = combos[i % len(combos)]
        out[i] = base if i < len(combos) else f"{base} {i // len(combos) + 1}"
    return out


def generate(
    n_deals: int,
    seed: int,
    *,
    start: date = date(2022, 1, 1),
    end: date = date(2025, 12, 31),
    stages: StageConfig | None = None,
    progress: ProgressFn | None = None,
    shock_sd: float = SHOCK_SD,
) -> GeneratedData:
    """Simulate ``n_deals`` deals created between ``start`` and ``end``, exported at ``end``.

    ``shock_sd`` is the spread of the shared quarter shock (stronger shocks move whole quarters).
    Deterministic for a seed. Deals still open at ``end`` stay open in the tables; their simulated
    fate past the export is in the truth frame.
    """
    if n_deals < 1:
        raise InputError(f"the number of deals must be at least 1, got {n_deals}")
    if end <= start:
        raise InputError(f"the end ({end}) must be after the start ({start})")
    cfg = stages if stages is not None else load_stage_config()
    report = progress if progress is not None else (lambda done, total: None)
    report(0, n_deals)
    rng = np.random.default_rng(seed)
    sim = _Simulation(n_deals, rng, _Clock(start, end), cfg, report, shock_sd)
    return sim.run()


class _Simulation:
    """One generation run; arrays over deals are attributes, phases are methods."""

    def __init__(
        self,
        n: int,
        rng: np.random.Generator,
        clock: _Clock,
        cfg: StageConfig,
        report: ProgressFn,
        shock_sd: float = SHOCK_SD,
    ) -> None:
        self.shock_sd = shock_sd
        self.n = n
        self.rng = rng
        self.clock = clock
        self.cfg = cfg
        self.report = report
        self.H = clock.horizon
        self.open_stages = cfg.open_stages
        self.K = len(self.open_stages)
        self.norms = np.array([float(cfg.norm_days(s.key) or 30.0) for s in self.open_stages])
        self.events = _Events()

    # --- phases --------------------------------------------------------------------------------
    def run(self) -> GeneratedData:
        self._organisation()
        self._deals()
        self._paths()
        self.report(int(self.n * 0.25), self.n)
        activities = self._activities()
        self.report(int(self.n * 0.5), self.n)
        stakeholders = self._stakeholders()
        stage_history = self._stage_history()
        self._field_events()
        field_history, current = self._field_history()
        self.report(int(self.n * 0.8), self.n)
        deals = self._deals_frame(current)
        targets = self._targets()
        truth = self._truth()
        shocks = pd.DataFrame(
            {
                "quarter": pd.Series(
                    [self.clock.quarter_label(i) for i in range(self.clock.n_quarters)], dtype="str"
                ),
                "shock": self.shock,
            }
        )
        tables = CanonicalTables(
            deals=deals,
            stage_history=stage_history,
            field_history=field_history,
            activities=activities,
            stakeholders=stakeholders,
            targets=targets,
        )
        self.report(self.n, self.n)
        return GeneratedData(
            tables=tables, truth=truth, quarter_shocks=shocks, oracle=self._oracle_params()
        )

    def _organisation(self) -> None:
        """Teams and reps; reps differ in skill, optimism, activity level and CRM hygiene."""
        rng = self.rng
        n_reps = max(6, round(self.n / 140))
        n_teams = max(2, int(np.ceil(n_reps / 7)))
        self.team_names = np.array(
            [
                f"Team {REGIONS[i % len(REGIONS)]}"
                + ("" if i < len(REGIONS) else f" {i // len(REGIONS) + 1}")
                for i in range(n_teams)
            ],
            dtype=object,
        )
        self.rep_names = _names(rng, n_reps, FIRST_NAMES, LAST_NAMES)
        self.rep_team = np.arange(n_reps) % n_teams
        self.team_effect = rng.normal(0.0, 0.2, n_teams)
        self.rep_skill = rng.normal(0.0, 0.35, n_reps)
        self.rep_capacity = rng.lognormal(0.0, 0.3, n_reps)
        self.rep_optimism = rng.uniform(0.6, 0.95, n_reps)  # fraction of the real time expected
        self.rep_activity = rng.lognormal(0.0, 0.25, n_reps)
        self.rep_fc_bias = rng.normal(0.5, 0.35, n_reps)  # logit added to perceived win chance
        self.rep_sloppiness = rng.uniform(0.02, 0.18, n_reps)  # share of missing next steps
        self.shock = rng.normal(0.0, self.shock_sd, self.clock.n_quarters)

    def _deals(self) -> None:
        """Arrivals (seasonal, growing), accounts, products, amounts, latent quality."""
        rng, clock, n, H = self.rng, self.clock, self.n, self.H
        n_days = int(H)
        years = np.arange(n_days) / 365.25
        w = (
            np.exp(ANNUAL_GROWTH * years)
            * MONTH_WEIGHT[clock.month[:n_days]]
            * np.where(clock.weekday[:n_days] < 5, 1.0, 0.03)
        )
        day = rng.choice(n_days, size=n, p=w / w.sum())
        self.created = np.sort(day + rng.uniform(7.0, 18.0, n) / 24.0)

        n_acc = max(30, n // 3)
        acc_seg = rng.choice(len(SEGMENTS), size=n_acc, p=[s[3] for s in SEGMENTS])
        acc_ind = rng.integers(0, len(INDUSTRIES), n_acc)
        acc_names = _names(rng, n_acc, ACCOUNT_STEMS, ACCOUNT_KINDS)
        acc_w = 1.0 / (np.arange(n_acc) + 5.0)
        acc = rng.choice(n_acc, size=n, p=acc_w / acc_w.sum())
        self.account = acc_names[acc]
        self.segment = acc_seg[acc]
        self.industry = acc_ind[acc]
        self.product = rng.choice(len(PRODUCTS), size=n, p=[p[3] for p in PRODUCTS])
        cap = self.rep_capacity
        self.rep = rng.choice(len(cap), size=n, p=cap / cap.sum())
        self.team = self.rep_team[self.rep]

        self.quality = rng.standard_normal(n)
        seg_amt = np.array([s[1] for s in SEGMENTS])[self.segment]
        seg_cx = np.array([s[2] for s in SEGMENTS])[self.segment]
        prod_med = np.array([p[1] for p in PRODUCTS])[self.product]
        prod_cx = np.array([p[2] for p in PRODUCTS])[self.product]
        self.complexity = prod_cx * seg_cx * rng.lognormal(0.0, 0.2, n)
        self.amount0 = np.maximum(np.round(prod_med * seg_amt * rng.lognormal(0, 0.5, n), -3), 5e3)
        # The quoted value drifts from the ballpark; weak deals tend to shrink in scope.
        drift = rng.normal(0.03 + 0.08 * self.quality, 0.18)
        self.amount1 = np.maximum(np.round(self.amount0 * np.exp(drift), -2), 2e3)
        self.enterprise = self.segment == len(SEGMENTS) - 1
        self.competitor = rng.random(n) < 0.3 + 0.15 * self.enterprise + 0.1 * (self.product >= 2)
        disc = rng.beta(2.0, 14.0, n) + 0.05 * self.competitor
        self.discount = np.clip(disc, 0.0, 0.35)
        self.amount2 = np.round(self.amount1 * (1.0 - self.discount), -2)

    def _paths(self) -> None:
        """Stage durations, outcome and timing; the quarter shock moves speed and win chance."""
        rng, n, K, q = self.rng, self.n, self.K, self.quality
        entries = np.empty((n, K + 1))
        entries[:, 0] = self.created
        durations = np.empty((n, K))
        stalled = np.zeros((n, K), dtype=bool)
        for k in range(K):
            base = self.norms[k] * rng.lognormal(0.0, 0.28, n) * self.complexity
            base *= np.exp(-0.3 * q)
            stalled[:, k] = rng.random(n) < _sigmoid(-2.5 - 1.1 * q)
            base += stalled[:, k] * rng.exponential(1.3 * self.norms[k], n)
            speed = np.exp(-0.3 * self.shock[self.clock.quarter_of(entries[:, k])])
            durations[:, k] = np.maximum(base * speed, 1.0)
            entries[:, k + 1] = entries[:, k] + durations[:, k]
        self.entries, self.durations, self.stalled = entries, durations, stalled

        # Advance probabilities per stage rise through the funnel (overall win ~30%).
        base_p = np.linspace(0.70, 0.88, K) ** (4.0 / K)
        intercept = np.log(base_p / (1 - base_p)) - 0.3
        skill = self.rep_skill[self.rep] + self.team_effect[self.team]
        seg_eff = np.array([0.1, 0.0, -0.15])[self.segment]
        common = 1.0 * q + skill + seg_eff - 0.15 * self.competitor
        logit = intercept[None, :] + common[:, None]
        self.adv_intercept, self.logit_common = intercept, common  # the oracle's inputs
        exit_shock = self.shock[self.clock.quarter_of(entries[:, 1:].ravel())].reshape(n, K)
        p_adv = _sigmoid(logit + EXIT_SHOCK_COEF * exit_shock)
        self.p_win_true = p_adv.prod(axis=1)
        self.p_win_base = _sigmoid(logit).prod(axis=1)
        fail = rng.random((n, K)) >= p_adv
        self.lost_at = np.where(fail.any(axis=1), fail.argmax(axis=1), K)
        self.won = self.lost_at == K
        self.last_k = np.minimum(self.lost_at, K - 1)

        idx = np.arange(n)
        lk = self.last_k
        # Deals that will be lost linger: the customer delays before saying no.
        frac = rng.uniform(0.5, 1.7, n)
        t_loss = entries[idx, lk] + durations[idx, lk] * frac
        # Zombies: weak deals handled by sloppy reps go silent, then are closed lost much later
        # (the cleanup the seed asks for), or never.
        z_p = _sigmoid(-1.4 - 0.5 * q + 6.0 * (self.rep_sloppiness[self.rep] - 0.1))
        self.zombie = ~self.won & (rng.random(n) < z_p)
        self.zombie_p = z_p
        stale = entries[idx, lk] + durations[idx, lk] * rng.uniform(0.1, 0.7, n)
        cleanup = stale + 90.0 + rng.exponential(120.0, n)
        cleanup[rng.random(n) < 0.08] = np.inf
        self.stale = np.where(self.zombie, stale, np.inf)
        self.t_end = np.where(self.won, entries[:, K], np.where(self.zombie, cleanup, t_loss))
        self.closed = self.t_end < self.H
        # Last moment the deal is worked: activities and field updates stop here.
        self.alive_end = np.minimum(np.minimum(self.stale, self.t_end), self.H)
        # reached[:, k]: the deal had entered open stage k by the export.
        ks = np.arange(K)[None, :]
        self.reached = (ks <= lk[:, None]) & (entries[:, :K] < self.H)
        # Exit of each stage: the next entry, or the loss for the stage the deal was lost in.
        exit_t = entries[:, 1:].copy()
        lost_mask = ~self.won
        exit_t[idx[lost_mask], lk[lost_mask]] = self.t_end[lost_mask]
        self.seg_end = np.minimum(exit_t, self.alive_end[:, None])
        self.losing_stage = (ks == lk[:, None]) & lost_mask[:, None]

        # Rep's perception of the deal, used for close dates and categories.
        self.optimism = np.clip(
            self.rep_optimism[self.rep] * rng.lognormal(0.0, 0.15, n), 0.35, 1.0
        )
        self.perceived_cx = self.complexity * rng.lognormal(0.0, 0.15, n)

    def _activities(self) -> pd.DataFrame:
        """Activity rhythm: rate rises with quality and fades in the stage where a deal is lost."""
        rng, K, q = self.rng, self.K, self.quality
        rate_base = (
            0.3 * self.rep_activity[self.rep] * np.exp(0.25 * q) * (1 + 0.2 * self.enterprise)
        )
        parts_deal, parts_t, parts_type, parts_k = [], [], [], []
        required_acts = self._required("activity:")
        for k in range(K):
            start = self.entries[:, k]
            length = self.seg_end[:, k] - start
            ok = self.reached[:, k] & (length > 0)
            losing = self.losing_stage[:, k]
            # Bursty rhythm: each stage has its own pace; stalls and losing stages are quieter.
            # Any deal can go quiet for a stage (e.g. waiting for capex approval).
            pace = rng.lognormal(0.0, 0.75, self.n) * (1.0 - 0.6 * self.stalled[:, k])
            pace *= np.where(rng.random(self.n) < 0.12, 0.12, 1.0)
            rate = rate_base * pace * (1.0 - 0.25 * losing)
            counts = np.where(ok, rng.poisson(np.where(ok, rate * np.maximum(length, 0), 0)), 0)
            deal = np.repeat(np.arange(self.n), counts)
            u = rng.random(len(deal))
            # Front-load activity in the losing stage: the gap before a loss grows.
            los = losing[deal]
            u[los] = rng.beta(1.0, 1.25, int(los.sum()))
            t = start[deal] + u * length[deal]
            mix = ACTIVITY_MIX[_stage_position(k, K)]
            types = rng.choice(len(ACTIVITY_TYPES), size=len(deal), p=mix / mix.sum())
            parts_deal.append(deal)
            parts_t.append(t)
            parts_type.append(types)
            parts_k.append(np.full(len(deal), k))
            for act in required_acts.get(self.open_stages[k].key, []):
                d = np.flatnonzero(ok)
                t_req = start[d] + np.minimum(rng.uniform(0.02, 0.3, len(d)), length[d] * 0.5)
                parts_deal.append(d)
                parts_t.append(t_req)
                parts_type.append(np.full(len(d), ACTIVITY_TYPES.index(act)))
                parts_k.append(np.full(len(d), k))
        deal = np.concatenate(parts_deal)
        t = np.concatenate(parts_t)
        types = np.concatenate(parts_type)
        ks = np.concatenate(parts_k)
        order = np.lexsort((t, deal))
        deal, t, types, ks = deal[order], t[order], types[order], ks[order]
        self.act_deal, self.act_t, self.act_type, self.act_k = deal, t, types, ks
        width = max(8, len(str(len(deal))))
        ids = np.array([f"A{i:0{width}d}" for i in range(1, len(deal) + 1)], dtype=object)
        return pd.DataFrame(
            {
                "activity_id": pd.Series(ids, dtype="str"),
                "deal_id": pd.Series(self.deal_ids[deal], dtype="str"),
                "type": pd.Series(np.array(ACTIVITY_TYPES, dtype=object)[types], dtype="str"),
                "occurred_at": self.clock.timestamps(t),
            }
        )

    @property
    def deal_ids(self) -> ObjArr:
        if not hasattr(self, "_deal_ids"):
            width = max(6, len(str(self.n)))
            self._deal_ids = np.array(
                [f"D{i:0{width}d}" for i in range(1, self.n + 1)], dtype=object
            )
        return self._deal_ids

    def _required(self, prefix: str) -> dict[str, list[str]]:
        """Stage key -> names of required fields with ``prefix`` (e.g. 'activity:')."""
        out: dict[str, list[str]] = {}
        for s in self.open_stages:
            names = [
                r.field.split(":", 1)[1] for r in s.required_fields if r.field.startswith(prefix)
            ]
            out[s.key] = names
        return out

    def _stage_index(self, prefix: str, name: str, fallback: int) -> int:
        for k, s in enumerate(self.open_stages):
            if any(r.field == f"{prefix}{name}" for r in s.required_fields):
                return k
        return min(fallback, self.K - 1)

    def _stakeholders(self) -> pd.DataFrame:
        """Buying committee: decision maker and champion show quality noisily; others by size."""
        rng, n, q = self.rng, self.n, self.quality
        idx = np.arange(n)
        alive = self.alive_end
        parts: list[tuple[IntArr, FloatArr, IntArr]] = []
        roles = list(StakeholderRole)

        def placed(k: int, has: BoolArr, early: float) -> None:
            start = self.entries[:, k]
            t = start + rng.uniform(0.05, 0.9, n) * self.durations[:, k]
            at_creation = rng.random(n) < early
            t = np.where(at_creation, self.created + rng.uniform(0.0, 2.0, n), t)
            keep = has & (t < alive)
            parts.append((idx[keep], t[keep], np.full(int(keep.sum()), -1)))

        k_dm = self._stage_index("stakeholder:", "decision_maker", 0)
        k_ch = self._stage_index("stakeholder:", "champion", 1)
        has_dm = rng.random(n) < _sigmoid(0.3 + 0.8 * q + 0.4 * self.enterprise)
        has_ch = rng.random(n) < _sigmoid(-0.4 + 1.0 * q)
        placed(k_dm, has_dm, 0.35)
        parts[-1] = (parts[-1][0], parts[-1][1], np.full(len(parts[-1][0]), 0))
        placed(k_ch, has_ch, 0.05)
        parts[-1] = (parts[-1][0], parts[-1][1], np.full(len(parts[-1][0]), 1))
        # First contact at creation, then a committee that grows with deal size.
        first = rng.choice(len(OTHER_ROLES), size=n, p=OTHER_ROLE_P)
        parts.append((idx, self.created + rng.uniform(0.0, 0.2, n), first + 2))
        lam = np.clip(
            0.8 + 0.6 * np.log1p(self.amount1 / 1e5) + 0.25 * q + 0.4 * self.enterprise, 0.1, 8
        )
        extra = rng.poisson(lam)
        d = np.repeat(idx, extra)
        span = np.maximum(alive[d] - self.created[d], 0.0)
        t = self.created[d] + rng.random(len(d)) * span
        r = rng.choice(len(OTHER_ROLES), size=len(d), p=OTHER_ROLE_P) + 2
        keep = t < alive[d]
        parts.append((d[keep], t[keep], r[keep]))
        deal = np.concatenate([p[0] for p in parts])
        t_all = np.concatenate([p[1] for p in parts])
        role = np.concatenate([p[2] for p in parts])
        order = np.lexsort((t_all, deal))
        deal, t_all, role = deal[order], t_all[order], role[order]
        self.has_dm_final = np.zeros(n, dtype=bool)
        self.has_dm_final[deal[role == 0]] = True
        self.has_ch_final = np.zeros(n, dtype=bool)
        self.has_ch_final[deal[role == 1]] = True
        # Contact numbers restart per deal: position within the deal's sorted block.
        starts = np.r_[0, np.flatnonzero(np.diff(deal)) + 1]
        pos = np.arange(len(deal)) - np.repeat(starts, np.diff(np.r_[starts, len(deal)]))
        role_names = np.array(
            [StakeholderRole.DECISION_MAKER.value, StakeholderRole.CHAMPION.value]
            + [r.value for r in OTHER_ROLES],
            dtype=object,
        )
        assert set(role_names) <= {r.value for r in roles}
        deal_ids = self.deal_ids[deal]
        contact = np.array(
            [f"C{d[1:]}-{p + 1:02d}" for d, p in zip(deal_ids, pos, strict=True)], dtype=object
        )
        return pd.DataFrame(
            {
                "deal_id": pd.Series(deal_ids, dtype="str"),
                "contact_id": pd.Series(contact, dtype="str"),
                "role": pd.Series(role_names[role], dtype="str"),
                "added_at": self.clock.timestamps(t_all),
            }
        )

    def _stage_history(self) -> pd.DataFrame:
        """One row per stage entered (first at created_at) plus the closing stage at closed_at."""
        deal_parts, stage_parts, t_parts = [], [], []
        idx = np.arange(self.n)
        for k in range(self.K):
            m = self.reached[:, k]
            deal_parts.append(idx[m])
            stage_parts.append(np.full(int(m.sum()), k))
            t_parts.append(self.entries[m, k])
        c = self.closed
        deal_parts.append(idx[c])
        stage_parts.append(np.where(self.won[c], self.K, self.K + 1))
        t_parts.append(self.t_end[c])
        deal = np.concatenate(deal_parts)
        stage = np.concatenate(stage_parts)
        t = np.concatenate(t_parts)
        order = np.lexsort((t, deal))
        keys = np.array(
            [s.key for s in self.open_stages] + [self.cfg.won_key, self.cfg.lost_key], dtype=object
        )
        return pd.DataFrame(
            {
                "deal_id": pd.Series(self.deal_ids[deal[order]], dtype="str"),
                "stage": pd.Series(keys[stage[order]], dtype="str"),
                "entered_at": self.clock.timestamps(t[order]),
                "derived": np.zeros(len(order), dtype=bool),
            }
        )

    def _field_events(self) -> None:
        """Every value each tracked field took, with when; chains are built from these."""
        rng, n, K, ev = self.rng, self.n, self.K, self.events
        idx = np.arange(n)
        q, rep = self.quality, self.rep
        before_end = self.alive_end

        # amount: ballpark at creation, exact quote at the proposal stage, discount at the end.
        ev.add(idx, F_AMOUNT, self.created, self.amount0, init=True)
        k_prop = next(
            (k for k, s in enumerate(self.open_stages) if s.key == "proposal"), min(K - 1, K // 2)
        )
        m = self.reached[:, k_prop] & (self.entries[:, k_prop] < before_end)
        if k_prop > 0:
            ev.add(idx[m], F_AMOUNT, self.entries[m, k_prop] + 0.01, self.amount1[m])
        else:
            ev.add(idx[m], F_AMOUNT, self.entries[m, k_prop] + 0.5, self.amount1[m])
        t_disc = self.entries[:, K - 1] + rng.uniform(0.2, 0.9, n) * self.durations[:, K - 1]
        m = self.reached[:, K - 1] & (t_disc < before_end)
        ev.add(idx[m], F_AMOUNT, t_disc[m], self.amount2[m])
        self.t_disc = np.where(m, t_disc, np.inf)

        # expected close date: set on each stage entry, pushed each time it passes, set at close.
        remaining = np.cumsum(self.norms[::-1])[::-1]
        fc_thr = self._category_thresholds()
        n_pos = len(NEXT_STEPS)
        ns_offset = np.cumsum([0, *[len(s) for s in NEXT_STEPS]])
        sloppy = self.rep_sloppiness[rep]
        for k in range(K):
            m = self.reached[:, k] & (self.entries[:, k] < before_end)
            d = idx[m]
            t0 = self.entries[d, k]
            est = np.floor(t0 + self.optimism[d] * remaining[k] * self.perceived_cx[d]) + 1
            ev.add(d, F_ECD, t0, est, init=k == 0)
            self._pushes(d, k, est, remaining[k])
            # forecast category: the rep's (optimistic, noisy) view of the deal's chance.
            wp = self.open_stages[k].win_probability
            logit = (
                _logit(min(max(wp, 0.02), 0.98))
                + 0.8 * (q[d] + rng.normal(0, 1.0, len(d)))
                + self.rep_fc_bias[rep[d]]
            )
            perceived = _sigmoid(logit)
            cat = np.where(perceived >= fc_thr[1], 2, np.where(perceived >= fc_thr[0], 1, 0))
            ev.add(d, F_FC, t0, cat.astype(np.float64), init=k == 0)
            # next step: stage-specific, sometimes missing (hygiene), with a date ahead.
            pos = _stage_position(k, K) if K > 1 else 0
            pos = min(pos, n_pos - 1)
            ns = ns_offset[pos] + rng.integers(0, len(NEXT_STEPS[pos]), len(d))
            missing = rng.random(len(d)) < sloppy[d]
            ns_val = np.where(missing, np.nan, ns)
            nsd = np.where(missing, np.nan, np.floor(t0 + rng.uniform(3, 21, len(d))))
            ev.add(d, F_NS, t0, ns_val, init=k == 0)
            ev.add(d, F_NSD, t0, nsd, init=k == 0)

        # Next steps move after many activities.
        upd = (self.act_type != ACTIVITY_TYPES.index("email")) & (
            rng.random(len(self.act_deal)) < 0.4
        )
        d = self.act_deal[upd]
        t = self.act_t[upd] + 1.0 / 1440.0
        pos = np.minimum(np.array([_stage_position(k, K) for k in range(K)]), n_pos - 1)[
            self.act_k[upd]
        ]
        sizes = np.array([len(s) for s in NEXT_STEPS])[pos]
        ns = ns_offset[pos] + np.floor(rng.random(len(d)) * sizes)
        missing = rng.random(len(d)) < sloppy[d]
        ev.add(d, F_NS, t, np.where(missing, np.nan, ns))
        ev.add(d, F_NSD, t, np.where(missing, np.nan, np.floor(t + rng.uniform(4, 21, len(d)))))

        # Closing: the close date becomes the actual date; category closed / omitted.
        c = idx[self.closed]
        ev.add(c, F_ECD, self.t_end[c], np.floor(self.t_end[c]))
        ev.add(c, F_FC, self.t_end[c], np.where(self.won[c], 4.0, 3.0))

    def _category_thresholds(self) -> tuple[float, float]:
        fc = self.cfg.forecast_categories
        best = fc["best_case"].min_probability if "best_case" in fc else 0.5
        commit = fc["commit"].min_probability if "commit" in fc else 0.9
        return best, commit

    def _pushes(self, d: IntArr, k: int, est: FloatArr, remaining: float) -> None:
        """Close-date pushes: whenever the date passes with the deal still in stage k."""
        rng = self.rng
        seg_end = self.seg_end[d, k]
        cur = est
        for _ in range(60):
            tp = cur + rng.uniform(0.3, 12.0, len(d))
            m = tp < seg_end
            if not m.any():
                break
            d, cur, tp, seg_end = d[m], cur[m], tp[m], seg_end[m]
            left = np.maximum(remaining * self.perceived_cx[d] - (tp - self.entries[d, k]), 0.0)
            new = np.floor(tp + 7.0 + self.optimism[d] * left + rng.exponential(14.0, len(d)))
            self.events.add(d, F_ECD, tp, new)
            cur = new

    def _field_history(self) -> tuple[pd.DataFrame, dict[int, FloatArr]]:
        """Turn set-events into change chains (old -> new) and the deals' export-time values."""
        ev = self.events
        deal = np.concatenate(ev.deal)
        fld = np.concatenate(ev.fld)
        t = np.concatenate(ev.t)
        val = np.concatenate(ev.val)
        init = np.concatenate(ev.init)
        # Only what the CRM knew by the export, and nothing after the deal closed.
        keep = (t < self.H) & (t <= self.t_end[deal])
        keep |= init
        deal, fld, t, val, init = deal[keep], fld[keep], t[keep], val[keep], init[keep]
        order = np.lexsort((~init, t, fld, deal))
        deal, fld, t, val, init = deal[order], fld[order], t[order], val[order], init[order]
        same = np.r_[False, (deal[1:] == deal[:-1]) & (fld[1:] == fld[:-1])]
        prev = np.r_[np.nan, val[:-1]]
        unchanged = (val == prev) | (np.isnan(val) & np.isnan(prev))
        change = same & ~unchanged & ~init
        # Export-time value: the last value of each (deal, field) group.
        last = np.r_[~same[1:], True]
        current: dict[int, FloatArr] = {}
        for f in range(len(TRACKED_FIELDS)):
            m = last & (fld == f)
            arr = np.full(self.n, np.nan)
            arr[deal[m]] = val[m]
            current[f] = arr

        sval = self._render(fld, val)
        old = np.r_[None, sval[:-1]]
        deal, fld, t, sval, old = deal[change], fld[change], t[change], sval[change], old[change]
        secs = self.clock.seconds(t)
        # No two changes of one deal+field in the same second.
        grp = np.r_[False, (deal[1:] == deal[:-1]) & (fld[1:] == fld[:-1])]
        for _ in range(100):
            clash = grp & (secs <= np.r_[0, secs[:-1]])
            if not clash.any():
                break
            secs[clash] = np.r_[0, secs[:-1]][clash] + 1
        names = np.array(TRACKED_FIELDS, dtype=object)
        return (
            pd.DataFrame(
                {
                    "deal_id": pd.Series(self.deal_ids[deal], dtype="str"),
                    "field": pd.Series(names[fld], dtype="str"),
                    "old_value": pd.Series(old, dtype="str"),
                    "new_value": pd.Series(sval, dtype="str"),
                    "changed_at": secs.astype("datetime64[s]").astype("datetime64[us]"),
                }
            ),
            current,
        )

    def _render(self, fld: IntArr, val: FloatArr) -> ObjArr:
        """Field values as CRM text: decimal amounts, ISO dates, category and next-step labels."""
        out = np.full(len(val), None, dtype=object)
        ok = ~np.isnan(val)
        m = ok & (fld == F_AMOUNT)
        out[m] = pd.Series(val[m]).astype(str).to_numpy(dtype=object)
        for f in (F_ECD, F_NSD):
            m = ok & (fld == f)
            out[m] = self.clock.date_strings(val[m]).astype(object)
        m = ok & (fld == F_FC)
        out[m] = np.array([c.value for c in FC_CODES], dtype=object)[val[m].astype(np.int64)]
        m = ok & (fld == F_NS)
        steps = np.array([s for group in NEXT_STEPS for s in group], dtype=object)
        out[m] = steps[val[m].astype(np.int64)]
        return out

    def _deals_frame(self, current: dict[int, FloatArr]) -> pd.DataFrame:
        """The deals table as exported at ``end``, with custom columns."""
        rng, n, K, clock = self.rng, self.n, self.K, self.clock
        stage_keys = np.array(
            [s.key for s in self.open_stages] + [self.cfg.won_key, self.cfg.lost_key], dtype=object
        )
        current_k = self.reached.sum(axis=1) - 1
        stage = np.where(self.closed, np.where(self.won, K, K + 1), current_k)
        outcome = np.where(
            self.closed, np.where(self.won, Outcome.WON.value, Outcome.LOST.value), "open"
        ).astype(object)
        lost_closed = self.closed & ~self.won
        reasons = self._loss_reasons()
        loss_reason = _masked(lost_closed, reasons)
        comp_name = np.array(COMPETITORS, dtype=object)[rng.integers(0, len(COMPETITORS), n)]
        known = self.competitor & (rng.random(n) < 0.85)
        competitor = _masked(known, comp_name)
        steps = np.array([s for group in NEXT_STEPS for s in group] + [None], dtype=object)
        ns = current[F_NS]
        ns_code = np.where(np.isnan(ns), len(steps) - 1, np.nan_to_num(ns)).astype(np.int64)

        def custom_text(options: tuple[str, ...], k: int) -> ObjArr:
            reached = self.reached[:, k] & (self.entries[:, k] < self.alive_end)
            filled = np.where(reached, rng.random(n) < 0.85, rng.random(n) < 0.1)
            pick = np.array(options, dtype=object)[rng.integers(0, len(options), n)]
            return _masked(filled, pick)

        k_dc = self._stage_index("custom:", "decision_criteria", 1)
        k_bp = self._stage_index("custom:", "buying_process", 1)
        k_cs = self._stage_index("custom:", "contract_sent_date", K - 1)
        t_cs = self.entries[:, k_cs] + rng.uniform(0.05, 0.5, n) * self.durations[:, k_cs]
        has_cs = self.reached[:, k_cs] & (t_cs < self.alive_end) & (rng.random(n) < 0.85)
        cs = np.full(n, None, dtype=object)
        cs[has_cs] = clock.date_strings(np.floor(t_cs[has_cs])).astype(object)
        self.current_amount = current[F_AMOUNT]
        return pd.DataFrame(
            {
                "deal_id": pd.Series(self.deal_ids, dtype="str"),
                "account": pd.Series(self.account, dtype="str"),
                "owner": pd.Series(self.rep_names[self.rep], dtype="str"),
                "team": pd.Series(self.team_names[self.team], dtype="str"),
                "segment": pd.Series(
                    np.array([s[0] for s in SEGMENTS], dtype=object)[self.segment], dtype="str"
                ),
                "product": pd.Series(
                    np.array([p[0] for p in PRODUCTS], dtype=object)[self.product], dtype="str"
                ),
                "created_at": clock.timestamps(self.created),
                "amount": current[F_AMOUNT],
                "stage": pd.Series(stage_keys[stage], dtype="str"),
                "expected_close_date": clock.dates(current[F_ECD]),
                "forecast_category": pd.Series(
                    np.array([c.value for c in FC_CODES], dtype=object)[
                        current[F_FC].astype(np.int64)
                    ],
                    dtype="str",
                ),
                "next_step": pd.Series(steps[ns_code], dtype="str"),
                "next_step_date": clock.dates(current[F_NSD]),
                "competitor": pd.Series(competitor, dtype="str"),
                "closed_at": clock.timestamps(np.where(self.closed, self.t_end, np.nan)),
                "outcome": pd.Series(outcome, dtype="str"),
                "loss_reason": pd.Series(loss_reason, dtype="str"),
                "history_source": pd.Series([HistorySource.CRM.value] * n, dtype="str"),
                "observed_at": clock.timestamps(np.full(n, self.H)),
                "custom_industry": pd.Series(
                    np.array(INDUSTRIES, dtype=object)[self.industry], dtype="str"
                ),
                "custom_decision_criteria": pd.Series(
                    custom_text(DECISION_CRITERIA, k_dc), dtype="str"
                ),
                "custom_buying_process": pd.Series(
                    custom_text(BUYING_PROCESSES, k_bp), dtype="str"
                ),
                "custom_contract_sent_date": pd.Series(cs, dtype="str"),
            }
        )

    def _loss_reasons(self) -> ObjArr:
        """One of the seed's five reasons, tied to what happened in the deal."""
        rng, n = self.rng, self.n
        reasons = list(LossReason)
        w = np.empty((n, len(reasons)))
        champion = self.has_ch_final
        late = self.last_k >= max(self.K - 2, 0)
        w[:, reasons.index(LossReason.COMPETITOR)] = 0.25 + 2.2 * self.competitor
        w[:, reasons.index(LossReason.STATUS_QUO)] = 0.5 + 0.7 * ~champion
        w[:, reasons.index(LossReason.PRICE)] = 0.35 + 0.9 * late + 1.0 * (self.discount > 0.15)
        stalled_here = self.stalled[np.arange(n), self.last_k]
        w[:, reasons.index(LossReason.TIMING)] = 0.45 + 0.8 * stalled_here
        w[:, reasons.index(LossReason.FIT)] = (
            0.3 + 1.0 * (self.last_k == 0) + 0.6 * (self.quality < -0.5)
        )
        zw = np.zeros(len(reasons))
        zw[reasons.index(LossReason.STATUS_QUO)] = 1.0
        zw[reasons.index(LossReason.TIMING)] = 1.2
        w[self.zombie] = zw
        cum = np.cumsum(w, axis=1)
        u = rng.random(n) * cum[:, -1]
        pick = (u[:, None] >= cum).sum(axis=1)
        self.loss_reason_true = np.array([r.value for r in reasons], dtype=object)[pick]
        return self.loss_reason_true

    def _targets(self) -> pd.DataFrame:
        """Quarterly targets per company, team and owner: planned bookings with stretch.

        Planned bookings are the shock-free expected wins by the quarter a deal would close if
        won, smoothed over neighbouring quarters, so targets do not know the realised outcome.
        """
        rng, clock = self.rng, self.clock
        q_first = 0
        q_last = int(clock.quarter_of(np.array([self.H - 1.0]))[0])
        nq = q_last + 2  # also the quarter after the export: it is being planned
        qi = clock.quarter_of(self.entries[:, self.K])
        expected = self.p_win_base * self.amount2
        n_reps = len(self.rep_names)
        by_rep = np.zeros((n_reps, nq))
        ok = qi < nq
        np.add.at(by_rep, (self.rep[ok], qi[ok]), expected[ok])
        kernel = np.array([0.25, 0.5, 0.25])
        smooth = np.stack([np.convolve(r, kernel, mode="same") for r in by_rep])
        # Quarters after the export have no future deals in the data: plan them from last year.
        for j in range(q_last + 1, nq):
            smooth[:, j] = smooth[:, j - 4] * np.exp(ANNUAL_GROWTH) if j >= 4 else smooth[:, j]
        stretch = rng.uniform(1.1, 1.4, (n_reps, nq))
        rep_t = np.round(smooth * stretch, -3)
        n_teams = len(self.team_names)
        team_t = np.zeros((n_teams, nq))
        np.add.at(team_t, self.rep_team, rep_t)
        company = team_t.sum(axis=0)
        rows_scope: list[str] = []
        rows_id: list[str] = []
        rows_q: list[str] = []
        rows_amt: list[float] = []
        for j in range(q_first, nq):
            label = clock.quarter_label(j)
            rows_scope.append(TargetScope.COMPANY.value)
            rows_id.append("company")
            rows_q.append(label)
            rows_amt.append(float(company[j]))
            for ti in range(n_teams):
                rows_scope.append(TargetScope.TEAM.value)
                rows_id.append(str(self.team_names[ti]))
                rows_q.append(label)
                rows_amt.append(float(team_t[ti, j]))
            for ri in range(n_reps):
                rows_scope.append(TargetScope.OWNER.value)
                rows_id.append(str(self.rep_names[ri]))
                rows_q.append(label)
                rows_amt.append(float(rep_t[ri, j]))
        return pd.DataFrame(
            {
                "scope": pd.Series(rows_scope, dtype="str"),
                "scope_id": pd.Series(rows_id, dtype="str"),
                "quarter": pd.Series(rows_q, dtype="str"),
                "amount": np.array(rows_amt, dtype=np.float64),
            }
        )

    def _truth(self) -> pd.DataFrame:
        """What the models try to recover: latent quality, true win chance, fate past the export."""
        clock, K = self.clock, self.K
        keys = np.array([s.key for s in self.open_stages] + [None], dtype=object)
        final_outcome = np.where(self.won, Outcome.WON.value, Outcome.LOST.value).astype(object)
        close_q = clock.quarter_of(np.where(np.isfinite(self.t_end), self.t_end, 0.0))
        return pd.DataFrame(
            {
                "deal_id": pd.Series(self.deal_ids, dtype="str"),
                "quality": self.quality,
                "p_win_true": self.p_win_true,
                "p_win_base": self.p_win_base,
                "final_outcome": pd.Series(final_outcome, dtype="str"),
                "final_closed_at": clock.timestamps(self.t_end),
                "closed_by_export": self.closed,
                "lost_stage": pd.Series(keys[np.where(self.won, K, self.lost_at)], dtype="str"),
                "zombie": self.zombie,
                "stale_at": clock.timestamps(self.stale),
                "final_amount": self.amount2 * 1.0,
                "loss_reason_true": pd.Series(
                    _masked(~self.won, self.loss_reason_true), dtype="str"
                ),
                "rep_skill": self.rep_skill[self.rep],
                "complexity": self.complexity,
                "competitor_present": self.competitor,
                "close_quarter_shock": np.where(
                    np.isfinite(self.t_end), self.shock[close_q], np.nan
                ),
                # The oracle's inputs: the deal's shared advance logit (quality, rep and team
                # skill, segment, competitor), its chance of going silent if it is lost, and when
                # it entered each open stage on its true path (also past the export).
                "logit_common": self.logit_common,
                "zombie_probability": self.zombie_p,
                **{
                    f"entered_{s.key}": clock.timestamps(
                        np.where(k <= self.last_k, self.entries[:, k], np.nan)
                    )
                    for k, s in enumerate(self.open_stages)
                },
            }
        )

    def _oracle_params(self) -> dict[str, Any]:
        """The outcome model shared by all deals: with the truth's per-deal ``logit_common`` it
        gives P(advance out of open stage k) = sigmoid(intercept_k + logit_common
        + exit_shock_coef * shock), the shock of the quarter the stage is left in ~ N(0, shock_sd).
        """
        return {
            "stages": [s.key for s in self.open_stages],
            "advance_intercepts": [float(v) for v in self.adv_intercept],
            "exit_shock_coef": EXIT_SHOCK_COEF,
            "shock_sd": SHOCK_SD,
        }


def write_dataset(
    data: GeneratedData, out_dir: Path, fmt: Literal["parquet", "csv"] = "parquet"
) -> list[Path]:
    """Write the six canonical tables to ``out_dir`` and the truth to ``out_dir/truth/``.

    The truth sits in a subfolder so that an importer reading the top-level table files never
    sees it.
    """
    if fmt not in ("parquet", "csv"):
        raise InputError(f"the format must be 'parquet' or 'csv', got {fmt!r}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir} exists and is not a folder; give a folder to write into")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"{out_dir}: cannot create the folder ({err.strerror})") from None
    written: list[Path] = []
    for name, frame in data.tables.items():
        path = out_dir / f"{name}.{fmt}"
        if fmt == "parquet":
            frame.to_parquet(path, index=False)
        else:
            frame.to_csv(path, index=False)
        written.append(path)
    truth_dir = out_dir / "truth"
    truth_dir.mkdir(exist_ok=True)
    for name, frame in (("truth", data.truth), ("quarter_shocks", data.quarter_shocks)):
        path = truth_dir / f"{name}.parquet"
        frame.to_parquet(path, index=False)
        written.append(path)
    if data.oracle:
        path = truth_dir / "oracle.json"
        path.write_text(json.dumps(data.oracle, indent=2) + "\n")
        written.append(path)
    return written
