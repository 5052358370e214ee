"""Import an export into the store: read and check it, then load it whole (or change nothing).

One sequence for every caller (``pipecast load``, ``POST /v1/data/import``): the store's writer
lock is taken first, so the export is checked against the deals the store holds at that moment
(a history-only delta may refer to them), and the load lands in one swap of the store file.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from features.data.importer import check_currency, check_encoding, read_export
from features.data.mapping import Mapping
from features.data.stages import StageConfig
from features.data.store import LoadReport, Store


@dataclass(frozen=True)
class Loaded:
    """What a load changed and what the importer noted."""

    report: LoadReport
    notes: list[str]


def load_export(
    path: str | Path,
    db: str | Path,
    *,
    stages: StageConfig,
    mapping: Mapping | None = None,
    exported_at: datetime | None = None,
    strict: bool = False,
    encoding: str | None = None,
    currency: str | None = None,
    default_currency: str | None = None,
    rates: str | Path | None = None,
    lock_timeout: float | None = None,
) -> Loaded:
    """Read ``path`` and load it into the store ``db``.

    Raises ``ImportValidationError`` (every problem of the export) with the store unchanged,
    ``StoreBusyError`` when another load holds the store longer than ``lock_timeout``.
    """
    check_encoding(encoding)  # before the store is opened: a typo changes nothing
    check_currency(currency, "currency")
    with Store(db, read_only=False, lock_timeout=lock_timeout) as store:
        result = read_export(
            path,
            mapping=mapping,
            stages=stages,
            exported_at=exported_at,
            known_deal_ids=store.deal_ids(),
            strict=strict,
            encoding=encoding,
            currency=currency,
            default_currency=default_currency,
            rates=rates,
            known_rates=store.read("exchange_rates"),
        )
        # Columns the export carried: a column it lacks keeps the stored values.
        report = store.load(result.tables, provided=result.provided)
    return Loaded(report=report, notes=result.notes)
