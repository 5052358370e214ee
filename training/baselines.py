"""What a team has without pipecast, scored on the same rows as the model.

- ``stage_default``: the stage's configured default probability (the seed's 10/25/50/70%).
- ``stage_historical``: the share of deals that reached the stage and were won, over deals
  closed by the cut-off (the seed's "historical conversion"), Laplace-smoothed.
- ``naive_bayes``: what open CRMs ship — Odoo's predictive lead scoring: naive Bayes over the stage
  and the categorical fields of closed deals, with Laplace smoothing. As in Odoo, a won deal
  counts as won in every stage and a lost deal as lost in each stage up to the one it was lost
  in, so the stage term is P(reached the stage | outcome). The fields are those fixed at creation
  (segment, product, competitor present, static custom columns), as Odoo's are.

Each is fitted on deals closed by the cut-off (never later) and predicts for snapshot rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from features.data.schema import CUSTOM_PREFIX, CanonicalTables, Outcome
from features.data.stages import StageConfig

NB_FIELDS = ("segment", "product", "competitor_present")


def _closed(deals: pd.DataFrame, cutoff: pd.Timestamp) -> pd.DataFrame:
    closed = pd.to_datetime(deals["closed_at"]) <= cutoff
    out = deals.loc[closed, ["deal_id", "outcome"]].copy()
    out["won"] = (out["outcome"].astype(object) == Outcome.WON.value).to_numpy()
    return out.reset_index(drop=True)


def reached_order(tables: CanonicalTables, stages: StageConfig, cutoff: pd.Timestamp) -> pd.Series:
    """Highest open-stage order each deal reached by ``cutoff`` (from the stage history)."""
    order = {s.key: float(s.order) for s in stages.open_stages}
    sh = tables.stage_history
    sh = sh[pd.to_datetime(sh["entered_at"]) <= cutoff]
    orders = sh["stage"].astype(object).map(order)
    return orders.groupby(sh["deal_id"].to_numpy()).max().dropna()


def _prior(closed: pd.DataFrame) -> float:
    return float((closed["won"].sum() + 1.0) / (len(closed) + 2.0))


@dataclass
class StageDefault:
    """The stage's configured default win probability; unknown stage: the prior win rate."""

    name: str = "stage_default"
    prior_: float = 0.5

    def fit(
        self, tables: CanonicalTables, stages: StageConfig, cutoff: pd.Timestamp
    ) -> StageDefault:
        self.prior_ = _prior(_closed(tables.deals, cutoff))
        return self

    def predict(self, rows: pd.DataFrame) -> np.ndarray:
        p = pd.to_numeric(rows["stage_win_probability"], errors="coerce")
        return p.fillna(self.prior_).to_numpy(dtype="float64")


@dataclass
class StageHistorical:
    """Win rate of closed deals that reached each stage, as of the cut-off (Laplace)."""

    name: str = "stage_historical"
    rates_: dict[str, float] = field(default_factory=dict)
    prior_: float = 0.5

    def fit(
        self, tables: CanonicalTables, stages: StageConfig, cutoff: pd.Timestamp
    ) -> StageHistorical:
        closed = _closed(tables.deals, cutoff)
        self.prior_ = _prior(closed)
        reached = reached_order(tables, stages, cutoff).reindex(closed["deal_id"]).to_numpy()
        won = closed["won"].to_numpy()
        self.rates_ = {}
        for s in stages.open_stages:
            at = reached >= s.order
            self.rates_[s.key] = float((won[at].sum() + 1.0) / (at.sum() + 2.0))
        return self

    def predict(self, rows: pd.DataFrame) -> np.ndarray:
        p = rows["stage"].astype(object).map(self.rates_)
        return pd.to_numeric(p, errors="coerce").fillna(self.prior_).to_numpy(dtype="float64")


@dataclass
class NaiveBayesPeer:
    """Odoo-style predictive lead scoring (naive Bayes with Laplace smoothing)."""

    name: str = "naive_bayes"
    fields_: list[str] = field(default_factory=list)
    # per field: value -> (won count, lost count)
    tables_: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    stage_lost_: dict[str, float] = field(default_factory=dict)
    n_won_: float = 0.0
    n_lost_: float = 0.0

    def fit(
        self,
        tables: CanonicalTables,
        stages: StageConfig,
        cutoff: pd.Timestamp,
        custom: list[str] | tuple[str, ...] = (),
    ) -> NaiveBayesPeer:
        deals = tables.deals
        closed = _closed(deals, cutoff)
        values = _deal_fields(deals.set_index("deal_id").loc[closed["deal_id"]], custom)
        won = closed["won"].to_numpy()
        self.n_won_, self.n_lost_ = float(won.sum()), float((~won).sum())
        self.fields_ = list(values.columns)
        self.tables_ = {}
        for col in self.fields_:
            v = values[col].to_numpy()
            counts = {}
            for value in pd.unique(v):
                at = v == value
                counts[str(value)] = (float(won[at].sum()), float((~won)[at].sum()))
            self.tables_[col] = counts
        reached = reached_order(tables, stages, cutoff).reindex(closed["deal_id"]).to_numpy()
        # Lost deals count as lost in every stage up to the one they were lost in (Odoo).
        self.stage_lost_ = {
            s.key: float(((~won) & (reached >= s.order)).sum()) for s in stages.open_stages
        }
        return self

    def predict(self, rows: pd.DataFrame) -> np.ndarray:
        log_w = np.full(len(rows), np.log(self.n_won_ + 1.0))
        log_l = np.full(len(rows), np.log(self.n_lost_ + 1.0))
        values = _row_fields(rows, self.fields_)
        for col in self.fields_:
            table = self.tables_[col]
            k = len(table) + 1  # Laplace over the values seen, plus one for unseen ones
            pairs = values[col].map(lambda v, t=table: t.get(v, (0.0, 0.0)))
            cw = np.array([p[0] for p in pairs])
            cl = np.array([p[1] for p in pairs])
            log_w += np.log((cw + 1.0) / (self.n_won_ + k))
            log_l += np.log((cl + 1.0) / (self.n_lost_ + k))
        # Stage: every won deal counts in every stage, so P(stage | won) is 1 (smoothed alike).
        stage = rows["stage"].astype(object)
        lost_at = stage.map(self.stage_lost_)
        known = lost_at.notna().to_numpy()
        k = len(self.stage_lost_) + 1
        log_w += np.where(known, np.log((self.n_won_ + 1.0) / (self.n_won_ + k)), 0.0)
        log_l += np.where(
            known,
            np.log((lost_at.fillna(0).to_numpy(dtype="float64") + 1.0) / (self.n_lost_ + k)),
            0.0,
        )
        return 1.0 / (1.0 + np.exp(log_l - log_w))


def _deal_fields(deals: pd.DataFrame, custom: list[str] | tuple[str, ...]) -> pd.DataFrame:
    """The NB fields of closed deals, as text ('yes'/'no' for the competitor)."""
    comp = deals["competitor"].astype(object)
    named = comp.notna() & (comp.astype(str).str.strip() != "")
    out = pd.DataFrame(
        {
            "segment": deals["segment"].astype(object).astype(str).to_numpy(),
            "product": deals["product"].astype(object).astype(str).to_numpy(),
            "competitor_present": np.where(named, "yes", "no"),
        }
    )
    for col in custom:
        if col.startswith(CUSTOM_PREFIX) and col in deals.columns:
            out[col] = deals[col].astype(object).astype(str).to_numpy()
    return out


def _row_fields(rows: pd.DataFrame, fields: list[str]) -> pd.DataFrame:
    out: dict[str, pd.Series] = {}
    for col in fields:
        if col == "competitor_present":
            flag = pd.to_numeric(rows[col], errors="coerce").to_numpy()
            out[col] = pd.Series(np.where(flag == 1.0, "yes", "no"))
        elif col in rows.columns:
            out[col] = pd.Series(rows[col].astype(object).astype(str).to_numpy())
        else:
            out[col] = pd.Series(["nan"] * len(rows))
    return pd.DataFrame(out)
