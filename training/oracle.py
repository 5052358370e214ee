"""The oracle: each generated deal's true probability of winning given its hidden state at as-of.

Only for generated data (``pipecast train --truth DIR``). The generator decides a deal's fate
stage by stage: it leaves open stage *k* forward with probability
``sigmoid(intercept_k + logit_common + exit_shock_coef * shock)``, where ``logit_common`` holds the
deal's latent quality, its rep's and team's skill, its segment and competitor, and ``shock`` is the
quarter shock (N(0, shock_sd)) of the quarter it leaves the stage in. Given the stage it is in at
as-of, it wins if it clears that stage and every later one:

    P(win | hidden state at as-of) = prod_{k >= stage} E_shock[sigmoid(intercept_k + logit_common
                                                                      + coef * shock)]

The expectations over the future shocks are Gauss-Hermite sums (20 nodes), each exit averaged on
its own. One more piece of hidden state is used: a deal the generator made a zombie (lost, gone
silent, closed much later or never) has no chance once it has gone silent (``stale_at``).

No model can beat this on average: it knows exactly what the CRM shows only through noise
(quality, skill). A model that does beat it learned something known only later — a leak. It does
not use the time the deal has spent in its stage or its activity rhythm; on full-history
generated data the model did not beat it on any slice of either (see the README).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from features.errors import InputError

GH_NODES = 20


@dataclass(frozen=True)
class Oracle:
    """Per-deal hidden state and the shared outcome model, read from a truth folder."""

    truth: pd.DataFrame  # indexed by deal_id
    stages: tuple[str, ...]
    intercepts: np.ndarray
    shock_coef: float
    shock_sd: float

    @classmethod
    def from_dir(cls, path: str | Path) -> Oracle:
        """Read ``truth.parquet`` and ``oracle.json`` from ``path`` (a dataset or its truth/)."""
        folder = Path(path)
        if (folder / "truth").is_dir():
            folder = folder / "truth"
        files = {name: folder / name for name in ("truth.parquet", "oracle.json")}
        for name, file in files.items():
            if not file.is_file():
                raise InputError(
                    f"--truth {path}: no {name} there; it is written by `pipecast generate` "
                    "(in OUT/truth/)"
                )
        try:
            params = json.loads(files["oracle.json"].read_text())
            stages = tuple(params["stages"])
            intercepts = np.asarray(params["advance_intercepts"], dtype="float64")
            coef, sd = float(params["exit_shock_coef"]), float(params["shock_sd"])
        except (ValueError, KeyError, TypeError) as err:
            raise InputError(f"{files['oracle.json']}: not an oracle description ({err})") from None
        truth = pd.read_parquet(files["truth.parquet"])
        needed = [
            "deal_id",
            "logit_common",
            "zombie",
            "stale_at",
            *(f"entered_{s}" for s in stages),
        ]
        missing = [c for c in needed if c not in truth.columns]
        if missing:
            raise InputError(
                f"{files['truth.parquet']}: missing column(s) {missing}; regenerate the data with "
                "this version of `pipecast generate`"
            )
        return cls(truth.set_index("deal_id"), stages, intercepts, coef, sd)

    def stage_advance(self, logit_common: np.ndarray) -> np.ndarray:
        """P(leave each open stage forward), future shock averaged: shape (deals, stages)."""
        x, w = np.polynomial.hermite_e.hermegauss(GH_NODES)
        w = w / w.sum()
        out = np.empty((len(logit_common), len(self.stages)))
        for k, a in enumerate(self.intercepts):
            z = a + logit_common[:, None] + self.shock_coef * self.shock_sd * x[None, :]
            out[:, k] = (1.0 / (1.0 + np.exp(-z))) @ w
        return out

    def predict(self, rows: pd.DataFrame) -> np.ndarray:
        """P(win) of each (deal_id, as_of) row; NaN for deals the truth does not know."""
        t = self.truth.reindex(rows["deal_id"].to_numpy())
        known = t["logit_common"].notna().to_numpy()
        if len(rows) and known.mean() < 0.99:
            raise InputError(
                f"the truth knows only {known.sum():,} of {len(rows):,} rows' deals: is it the "
                "truth of the data in this store?"
            )
        as_of = pd.to_datetime(rows["as_of"]).to_numpy().astype("datetime64[us]")
        entered = np.stack(
            [
                pd.to_datetime(t[f"entered_{s}"]).to_numpy().astype("datetime64[us]")
                for s in self.stages
            ],
            axis=1,
        )
        # NaT compares False: stages never entered do not count.
        stage = np.maximum((entered <= as_of[:, None]).sum(axis=1) - 1, 0)
        advance = self.stage_advance(t["logit_common"].fillna(0.0).to_numpy(dtype="float64"))
        log_adv = np.log(advance)
        tail = np.cumsum(log_adv[:, ::-1], axis=1)[:, ::-1]  # sum over stages k >= j
        p = np.exp(tail[np.arange(len(rows)), stage])
        stale = pd.to_datetime(t["stale_at"]).to_numpy().astype("datetime64[us]")
        silent = t["zombie"].fillna(False).to_numpy(dtype=bool) & (stale <= as_of)
        return np.where(known, np.where(silent, 0.0, p), np.nan)
