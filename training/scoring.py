"""Deal scores for reps: which open deals to work first, why, and what to do next.

For every deal open at ``as_of``: P(win), P(closes won this quarter), the expected value this
quarter (amount x P(win) x P(closes this quarter | win) = amount x P(closes won this quarter)),
ranked by it; with ``reasons=True`` the top positive and negative reasons
(:mod:`training.explain`) and next actions: the deal's hygiene flags (each already says what to
do) and its stage's typical actions from the stage configuration.

:class:`FallbackScorer` answers the same question with the historical stage win rates and the
rep's close date at face value when there is no trained model (too little data), and says so in
the ``method`` column.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from features.data.schema import CanonicalTables
from features.data.stages import StageConfig
from features.errors import InputError
from features.pipeline.hygiene import hygiene_flags
from features.signals import compute_signals
from training.baselines import StageHistorical
from training.calibration import base_model
from training.datasets import Progress
from training.explain import reasons as explain_reasons

if TYPE_CHECKING:
    from training.fitting import FittedModels

COLUMNS = [
    "deal_id",
    "owner",
    "team",
    "segment",
    "product",
    "stage",
    "amount",
    "expected_close_date",
    "forecast_category",
    "p_win",
    "p_close_this_quarter_given_win",
    "p_won_this_quarter",
    "expected_value",
]
METHOD_MODEL = "model"
METHOD_FALLBACK = "historical_stage_rates"
CHUNK = 5_000
SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}


def open_deal_rows(
    tables: CanonicalTables,
    stages: StageConfig,
    as_of: pd.Timestamp,
    *,
    custom: list[str] | tuple[str, ...] = (),
    static_custom: list[str] | tuple[str, ...] = (),
    owner: str | None = None,
    team: str | None = None,
    deal_ids: list[str] | None = None,
) -> pd.DataFrame:
    """Signals of the deals open at ``as_of`` (optionally one rep's or team's, or only
    ``deal_ids``: rep and team statistics still read every deal); ``static_custom`` as in
    training (:class:`training.config.TrainingConfig`)."""
    try:
        rows = compute_signals(
            tables,
            [pd.Timestamp(as_of)],
            stages,
            custom=custom,
            static_custom=static_custom,
            deal_ids=deal_ids,
        )
    except KeyError as err:
        raise InputError(f"the model needs {err.args[0]}") from None
    if owner is not None:
        rows = rows[rows["owner"] == owner]
    if team is not None:
        rows = rows[rows["team"] == team]
    return rows.reset_index(drop=True)


def _frame(rows: pd.DataFrame, p_win: np.ndarray, p_q: np.ndarray) -> pd.DataFrame:
    as_of = pd.to_datetime(rows["as_of"]).dt.normalize()
    days = pd.to_numeric(rows["days_to_expected_close"], errors="coerce")
    ecd = as_of + pd.to_timedelta(days, unit="D")
    with np.errstate(invalid="ignore", divide="ignore"):
        given_win = np.where(p_win > 0, np.minimum(p_q / p_win, 1.0), 0.0)
    amount = pd.to_numeric(rows["amount"], errors="coerce").to_numpy()
    return pd.DataFrame(
        {
            "deal_id": rows["deal_id"].to_numpy(),
            "owner": rows["owner"].to_numpy(),
            "team": rows["team"].to_numpy(),
            "segment": rows["segment"].to_numpy(),
            "product": rows["product"].to_numpy(),
            "stage": rows["stage"].to_numpy(),
            "amount": amount,
            "expected_close_date": ecd.to_numpy(),
            "forecast_category": rows["forecast_category"].to_numpy(),
            "p_win": p_win,
            "p_close_this_quarter_given_win": given_win,
            "p_won_this_quarter": p_q,
            "expected_value": amount * p_q,
        }
    )


def _ranked(frame: pd.DataFrame) -> pd.DataFrame:
    order = frame.sort_values(
        ["expected_value", "p_won_this_quarter", "deal_id"],
        ascending=[False, False, True],
        na_position="last",
        kind="stable",
    )
    out = order.reset_index(drop=True)
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    return out


def score_deals(
    models: FittedModels,
    tables: CanonicalTables,
    stages: StageConfig,
    as_of: pd.Timestamp,
    *,
    reasons: bool = False,
    owner: str | None = None,
    team: str | None = None,
    deal_ids: list[str] | None = None,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """Score every open deal (or only ``deal_ids``) with the fitted models, in chunks
    (``progress`` per chunk)."""
    rows = open_deal_rows(
        tables,
        stages,
        as_of,
        custom=models.custom,
        static_custom=models.config.static_custom,
        owner=owner,
        team=team,
        deal_ids=deal_ids,
    )
    frame = score_rows(models, rows, stages, reasons=reasons, progress=progress)
    if reasons:
        frame["next_actions"] = next_actions(tables, stages, as_of, frame, owner=owner, team=team)
    frame["method"] = METHOD_MODEL
    out = _ranked(frame)
    out.attrs["model_versions"] = dict(models.versions)
    out.attrs["as_of"] = pd.Timestamp(as_of)
    if pd.Timestamp(as_of) < models.cutoff:
        out.attrs["note"] = (
            f"the models were trained on data up to {models.cutoff:%Y-%m-%d}, after "
            f"{pd.Timestamp(as_of):%Y-%m-%d}: these scores know outcomes that were not known then"
        )
    return out


def score_rows(
    models: FittedModels,
    rows: pd.DataFrame,
    stages: StageConfig,
    *,
    reasons: bool = False,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """Signal rows (:func:`open_deal_rows`) scored in chunks, in their order: :data:`COLUMNS`,
    and with ``reasons`` the ``reasons_for`` and ``reasons_against`` lists (no next actions:
    those read the store's hygiene, see :func:`score_deals`)."""
    parts, extra = [], []
    total = len(rows)
    for start in range(0, total, CHUNK):
        chunk = rows.iloc[start : start + CHUNK]
        p_win = models.predict_win(chunk)
        parts.append(_frame(chunk, p_win, models.predict_quarter(chunk, p_win)))
        if reasons:
            extra.append(_reason_columns(models, chunk, stages))
        if progress is not None:
            progress("scoring", min(start + CHUNK, total), total)
    frame = pd.concat(parts, ignore_index=True) if parts else _frame(rows, np.zeros(0), np.zeros(0))
    if reasons:
        words = pd.concat(extra, ignore_index=True) if extra else _no_reasons(0)
        frame = pd.concat([frame, words], axis=1)
    return frame


def _reason_columns(models: FittedModels, rows: pd.DataFrame, stages: StageConfig) -> pd.DataFrame:
    win = base_model(models.win)
    contrib = win.contributions(rows)
    values = rows.copy()
    # The words say what the model saw of custom columns (masked, days since); without any,
    # encoding the rows once more only costs (a fifth of a one-deal what-if).
    custom = [c for c in win.encoder_.feature_names_ if c.startswith("custom_")]
    if custom:
        encoded = win.encoder_.transform_columns(rows, custom)
        for col in custom:
            values[col] = encoded[col].astype(object).to_numpy()
    up, down = explain_reasons(contrib, values, stages, dates=frozenset(win.encoder_.date_columns_))
    return pd.DataFrame({"reasons_for": up, "reasons_against": down})


def _no_reasons(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {"reasons_for": [[] for _ in range(n)], "reasons_against": [[] for _ in range(n)]}
    )


def next_actions(
    tables: CanonicalTables,
    stages: StageConfig,
    as_of: pd.Timestamp,
    scored: pd.DataFrame,
    *,
    owner: str | None = None,
    team: str | None = None,
    typical: int = 2,
) -> list[list[str]]:
    """Per scored deal: its hygiene flags (most severe first), then its stage's typical actions."""
    flags: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for f in hygiene_flags(tables, stages, pd.Timestamp(as_of), owner=owner, team=team):
        flags[f.deal_id].append((SEVERITY_ORDER.get(f.severity.value, 3), f.message))
    out = []
    for deal_id, stage in zip(scored["deal_id"], scored["stage"], strict=True):
        actions = [m for _, m in sorted(flags.get(str(deal_id), []))]
        if isinstance(stage, str) and stage in stages.by_key:
            s = stages.stage(stage)
            actions += [f"{s.label}: {a}" for a in s.typical_actions[:typical]]
        out.append(actions)
    return out


@dataclass
class FallbackScorer:
    """Scores without a model: historical stage win rates as of ``as_of``, and the rep's expected
    close date at face value for the quarter (``method`` = ``historical_stage_rates``)."""

    reason: str = "no trained model"

    def score(
        self,
        tables: CanonicalTables,
        stages: StageConfig,
        as_of: pd.Timestamp,
        *,
        reasons: bool = False,
        owner: str | None = None,
        team: str | None = None,
        progress: Any = None,
    ) -> pd.DataFrame:
        as_of = pd.Timestamp(as_of)
        rows = open_deal_rows(tables, stages, as_of, owner=owner, team=team)
        p_win = StageHistorical().fit(tables, stages, as_of).predict(rows)
        in_quarter = pd.to_numeric(
            rows["days_to_expected_close"], errors="coerce"
        ) <= pd.to_numeric(rows["days_left_in_quarter"], errors="coerce")
        frame = _frame(rows, p_win, np.where(in_quarter.to_numpy(), p_win, 0.0))
        if reasons:
            frame = pd.concat([frame, _no_reasons(len(frame))], axis=1)
            frame["next_actions"] = next_actions(
                tables, stages, as_of, frame, owner=owner, team=team
            )
        frame["method"] = METHOD_FALLBACK
        out = _ranked(frame)
        out.attrs["model_versions"] = {"win_probability": None, "slip": None}
        out.attrs["fallback_reason"] = self.reason
        out.attrs["as_of"] = as_of
        return out
