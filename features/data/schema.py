"""The canonical CRM data model: one typed, documented schema per table.

Every CRM export is mapped into these tables before anything else touches it. Timestamps are
naive UTC ``datetime64``; dates such as ``expected_close_date`` are timestamps at midnight.
Stage values are stage *keys* from the stage configuration (``features/data/stages.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import ClassVar, Optional

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series


class Outcome(StrEnum):
    OPEN = "open"
    WON = "won"
    LOST = "lost"


class ForecastCategory(StrEnum):
    """Rep-set categories from the seed: commit (>90%), best case (50-90%), pipeline (<50%)."""

    PIPELINE = "pipeline"
    BEST_CASE = "best_case"
    COMMIT = "commit"
    OMITTED = "omitted"
    CLOSED = "closed"


class LossReason(StrEnum):
    """The seed's five loss reasons (pick one)."""

    COMPETITOR = "competitor"
    STATUS_QUO = "status_quo"
    PRICE = "price"
    TIMING = "timing"
    FIT = "fit"


class ActivityType(StrEnum):
    CALL = "call"
    MEETING = "meeting"
    EMAIL = "email"
    DEMO = "demo"
    SITE_VISIT = "site_visit"
    PROPOSAL = "proposal"


class StakeholderRole(StrEnum):
    DECISION_MAKER = "decision_maker"
    CHAMPION = "champion"
    INFLUENCER = "influencer"
    FINANCE = "finance"
    ENGINEERING = "engineering"
    OPERATIONS = "operations"
    PROCUREMENT = "procurement"
    OTHER = "other"


class TargetScope(StrEnum):
    COMPANY = "company"
    TEAM = "team"
    OWNER = "owner"


class HistorySource(StrEnum):
    """Where a deal's history came from.

    ``crm``: the export carried stage/field history. ``derived``: a deals-only export; history
    holds only what the deal row itself proves (created, current stage, closed).
    """

    CRM = "crm"
    DERIVED = "derived"


def _values(enum: type[StrEnum]) -> list[str]:
    return [e.value for e in enum]


# Fields whose changes field_history tracks, so they can be rebuilt as of any date.
TRACKED_FIELDS: tuple[str, ...] = (
    "amount",
    "expected_close_date",
    "forecast_category",
    "next_step",
    "next_step_date",
)
# Tracked fields whose values are dates (ISO ``YYYY-MM-DD`` text in field_history).
DATE_FIELDS: frozenset[str] = frozenset({"expected_close_date", "next_step_date"})
# An ISO 4217 currency code (USD, MXN, EUR), upper case.
CURRENCY_CODE = r"^[A-Z]{3}$"


class DealsSchema(pa.DataFrameModel):
    """One row per deal: its state as of ``observed_at`` (the export time)."""

    deal_id: Series[str] = pa.Field(unique=True, description="CRM opportunity id")
    account: Series[str] = pa.Field(nullable=True, description="customer account name or id")
    owner: Series[str] = pa.Field(description="rep who owns the deal")
    team: Series[str] = pa.Field(nullable=True, description="sales team of the owner")
    segment: Series[str] = pa.Field(nullable=True, description="market segment")
    product: Series[str] = pa.Field(nullable=True, description="product line")
    created_at: Series[pd.Timestamp] = pa.Field(description="opportunity created")
    amount: Series[float] = pa.Field(ge=0, nullable=True, description="current deal value")
    stage: Series[str] = pa.Field(description="current stage key")
    expected_close_date: Series[pd.Timestamp] = pa.Field(nullable=True)
    forecast_category: Series[str] = pa.Field(
        nullable=True, isin=_values(ForecastCategory), description="rep's forecast category"
    )
    next_step: Series[str] = pa.Field(nullable=True)
    next_step_date: Series[pd.Timestamp] = pa.Field(nullable=True)
    competitor: Series[str] = pa.Field(nullable=True, description="known competitor, if any")
    closed_at: Series[pd.Timestamp] = pa.Field(nullable=True)
    outcome: Series[str] = pa.Field(isin=_values(Outcome))
    loss_reason: Series[str] = pa.Field(nullable=True, isin=_values(LossReason))
    history_source: Series[str] = pa.Field(isin=_values(HistorySource))
    observed_at: Series[pd.Timestamp] = pa.Field(description="when this row's values were true")
    # Optional so that frames built by hand (tests, the generator) may leave them out; the
    # importer and the store always carry them. Missing currency: the corporate currency.
    currency: Optional[Series[str]] = pa.Field(  # noqa: UP045 (pandera reads Optional)
        nullable=True,
        str_matches=CURRENCY_CODE,
        description="ISO code of the currency of amount (and of its field history)",
    )
    entered_after_close: Optional[Series[bool]] = pa.Field(  # noqa: UP045
        description="logged in the CRM at or after its close: never open there "
        "(see features.data.importer.derive)",
    )

    class Config:
        strict = False  # custom columns mapped in by the user (prefixed ``custom_``) are allowed
        coerce = True


class StageHistorySchema(pa.DataFrameModel):
    """Every stage change. ``stage`` null means the stage at that time is unknown.

    Rows with ``derived`` true come from a deals-only export: the deal was *seen* in ``stage`` at
    ``entered_at`` but may have entered it earlier.
    """

    deal_id: Series[str]
    stage: Series[str] = pa.Field(nullable=True)
    entered_at: Series[pd.Timestamp]
    derived: Series[bool]

    class Config:
        strict = True
        coerce = True


class FieldHistorySchema(pa.DataFrameModel):
    """Changes of tracked fields; values are text (ISO dates, decimal numbers)."""

    deal_id: Series[str]
    field: Series[str] = pa.Field(isin=list(TRACKED_FIELDS))
    old_value: Series[str] = pa.Field(nullable=True)
    new_value: Series[str] = pa.Field(nullable=True)
    changed_at: Series[pd.Timestamp]

    class Config:
        strict = True
        coerce = True


class ActivitiesSchema(pa.DataFrameModel):
    """Contacts with the customer. ``type`` is missing for a kind the CRM mapping does not name:
    it still counts as an activity, in no per-type count."""

    activity_id: Series[str] = pa.Field(unique=True)
    deal_id: Series[str]
    type: Series[str] = pa.Field(nullable=True, isin=_values(ActivityType))
    occurred_at: Series[pd.Timestamp]

    class Config:
        strict = True
        coerce = True


class StakeholdersSchema(pa.DataFrameModel):
    deal_id: Series[str]
    contact_id: Series[str]
    role: Series[str] = pa.Field(isin=_values(StakeholderRole))
    added_at: Series[pd.Timestamp]

    class Config:
        strict = True
        coerce = True


class TargetsSchema(pa.DataFrameModel):
    """Quarterly targets. ``scope_id`` is the team or owner name, or ``company``."""

    scope: Series[str] = pa.Field(isin=_values(TargetScope))
    scope_id: Series[str]
    quarter: Series[str] = pa.Field(str_matches=r"^\d{4}Q[1-4]$", description="e.g. 2025Q3")
    amount: Series[float] = pa.Field(ge=0)

    class Config:
        strict = True
        coerce = True


class ExchangeRatesSchema(pa.DataFrameModel):
    """Exchange rates against the corporate currency, as Salesforce's ``ConversionRate``.

    ``rate``: units of ``currency`` per one unit of the corporate currency (an amount in
    ``currency`` divided by it is in the corporate currency). ``valid_from``: a dated rate, in
    force from then until the currency's next dated rate; missing: a fixed rate. The row with
    ``is_corporate`` names the corporate currency (rate 1); every amount is reported in it.
    """

    currency: Series[str] = pa.Field(str_matches=CURRENCY_CODE)
    rate: Series[float] = pa.Field(gt=0)
    valid_from: Series[pd.Timestamp] = pa.Field(nullable=True)
    is_corporate: Series[bool]

    class Config:
        strict = True
        coerce = True


TABLE_SCHEMAS: dict[str, type[pa.DataFrameModel]] = {
    "deals": DealsSchema,
    "stage_history": StageHistorySchema,
    "field_history": FieldHistorySchema,
    "activities": ActivitiesSchema,
    "stakeholders": StakeholdersSchema,
    "targets": TargetsSchema,
    "exchange_rates": ExchangeRatesSchema,
}

# Natural keys: re-importing the same rows is a no-op; a newer export appends new history.
PRIMARY_KEYS: dict[str, tuple[str, ...]] = {
    "deals": ("deal_id",),
    "stage_history": ("deal_id", "entered_at", "derived"),
    "field_history": ("deal_id", "field", "changed_at"),
    "activities": ("activity_id",),
    "stakeholders": ("deal_id", "contact_id", "role"),
    "targets": ("scope", "scope_id", "quarter"),
    "exchange_rates": ("currency", "valid_from"),
}

TIMESTAMP_COLUMNS: dict[str, tuple[str, ...]] = {
    "deals": ("created_at", "expected_close_date", "next_step_date", "closed_at", "observed_at"),
    "stage_history": ("entered_at",),
    "field_history": ("changed_at",),
    "activities": ("occurred_at",),
    "stakeholders": ("added_at",),
    "targets": (),
    "exchange_rates": ("valid_from",),
}
# Columns a mapping may fill that the importer reads and the store does not keep: when the CRM
# last modified the deal (the export time is at least that; a deal closed "in the future" closed
# by then at the latest).
IMPORT_ONLY_COLUMNS: dict[str, dict[str, str]] = {
    "deals": {"modified_at": "last modification of the deal in the CRM (LastModifiedDate)"},
}

CUSTOM_PREFIX = "custom_"


def entered_after_close(deals: pd.DataFrame, deal_ids: pd.Series) -> np.ndarray:
    """Whether each of ``deal_ids`` was logged in the CRM after it closed (``deals`` column
    ``entered_after_close``; False for deals without it). Such deals were never open: they count
    as won or lost, never in what measures an open deal's path (cycle, time in stage,
    conversion, training snapshots)."""
    if "entered_after_close" not in deals.columns:
        return np.zeros(len(deal_ids), dtype=bool)
    flags = deals.drop_duplicates("deal_id").set_index("deal_id")["entered_after_close"]
    return flags.reindex(pd.Index(deal_ids)).fillna(False).to_numpy(dtype=bool)


def columns(table: str) -> list[str]:
    """The canonical columns of a table, in order."""
    return list(TABLE_SCHEMAS[table].to_schema().columns)


def empty_frame(table: str) -> pd.DataFrame:
    """An empty frame with the canonical columns and dtypes of ``table``."""
    schema = TABLE_SCHEMAS[table].to_schema()
    data = {}
    for name, col in schema.columns.items():
        dtype = str(col.dtype)
        if "datetime" in dtype or "Timestamp" in dtype:
            data[name] = pd.Series([], dtype="datetime64[us]")
        elif dtype in ("float64", "float"):
            data[name] = pd.Series([], dtype="float64")
        elif dtype == "bool":
            data[name] = pd.Series([], dtype="bool")
        else:
            data[name] = pd.Series([], dtype="str")
    return pd.DataFrame(data)


@dataclass(frozen=True)
class CanonicalTables:
    """A complete CRM dataset in the canonical model. Missing tables are empty frames."""

    deals: pd.DataFrame
    stage_history: pd.DataFrame = field(default_factory=lambda: empty_frame("stage_history"))
    field_history: pd.DataFrame = field(default_factory=lambda: empty_frame("field_history"))
    activities: pd.DataFrame = field(default_factory=lambda: empty_frame("activities"))
    stakeholders: pd.DataFrame = field(default_factory=lambda: empty_frame("stakeholders"))
    targets: pd.DataFrame = field(default_factory=lambda: empty_frame("targets"))
    exchange_rates: pd.DataFrame = field(default_factory=lambda: empty_frame("exchange_rates"))

    TABLES: ClassVar[tuple[str, ...]] = tuple(TABLE_SCHEMAS)

    def items(self) -> list[tuple[str, pd.DataFrame]]:
        return [(f.name, getattr(self, f.name)) for f in fields(self)]

    def validated(self) -> CanonicalTables:
        """Coerce and check every table against its schema (raises pandera SchemaErrors)."""
        checked = {
            name: TABLE_SCHEMAS[name].validate(frame, lazy=True) for name, frame in self.items()
        }
        return CanonicalTables(**checked)
