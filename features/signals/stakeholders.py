"""Stakeholder signals: the buying committee mapped on the deal by the date."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.data.schema import StakeholderRole
from features.signals.events import EventIndex, codes, flag
from features.signals.registry import SignalKind, node, signal


@node
def contact_index(stakeholders: pd.DataFrame, deal_index: pd.Index) -> EventIndex:
    """Each contact counted once, from the first time it was added with any role."""
    first = stakeholders.groupby(["deal_id", "contact_id"])["added_at"].min().reset_index()
    return EventIndex(codes(first["deal_id"], deal_index), first["added_at"])


@node
def role_firsts(stakeholders: pd.DataFrame) -> pd.DataFrame:
    return stakeholders.groupby(["deal_id", "role"])["added_at"].min().reset_index()


@node
def role_index(role_firsts: pd.DataFrame, deal_index: pd.Index) -> EventIndex:
    return EventIndex(codes(role_firsts["deal_id"], deal_index), role_firsts["added_at"])


@signal("distinct stakeholders (contacts) recorded on the deal")
def n_stakeholders(contact_index: EventIndex, deal_code: np.ndarray, as_of: pd.Series) -> pd.Series:
    idx = contact_index
    return pd.Series((idx.end(deal_code, as_of) - idx.start(deal_code)).astype("float64"))


@node
def role_counts(
    role_firsts: pd.DataFrame, role_index: EventIndex, deal_code: np.ndarray, as_of: pd.Series
) -> pd.DataFrame:
    """Per role, 1 if a stakeholder with that role was recorded by the date."""
    lo, hi = role_index.start(deal_code), role_index.end(deal_code, as_of)
    roles = role_firsts["role"].to_numpy()
    return pd.DataFrame(
        {
            r.value: (lambda cs: cs[hi] - cs[lo])(role_index.cumsum(roles == r.value))
            for r in StakeholderRole
        }
    )


@signal("1 if a decision maker is among the stakeholders", SignalKind.FLAG)
def decision_maker_engaged(role_counts: pd.DataFrame) -> pd.Series:
    return flag(role_counts[StakeholderRole.DECISION_MAKER.value] > 0)


@signal("1 if a champion is among the stakeholders", SignalKind.FLAG)
def champion_identified(role_counts: pd.DataFrame) -> pd.Series:
    return flag(role_counts[StakeholderRole.CHAMPION.value] > 0)


@signal("number of distinct stakeholder roles (breadth of the buying committee covered)")
def stakeholder_roles(role_counts: pd.DataFrame) -> pd.Series:
    return pd.Series((role_counts > 0).sum(axis=1).astype("float64").to_numpy())
