"""Read a CRM export directory into validated canonical tables, reporting every problem at once.

An export is a directory of CSV or Parquet files. Without a mapping the files carry the canonical
names (``deals.csv``, ``stage_history.parquet``, ...; only ``deals`` is required; subfolders are
ignored). With a mapping (``features.data.mapping``) any file names and columns are converted.

:func:`read_export` runs the import as a list of phases (``PHASES``) over one
:class:`~features.data.importer.run.ImportRun`:

- ``read``: each file is found, decoded and parsed (``read``), and converted to canonical
  columns and values (``convert``; snapshot tables in ``snapshots``);
- checks of whole tables and of references between them (``checks``);
- lookups of ids in other files of the export (``lookups``: owner names, teams);
- currencies: the corporate one, each deal's, and a rate for each (``currencies``);
- what the deal rows prove (``derive``: outcome, export time, closes after it, deals entered
  after they closed, deals-only stage history);
- notes on what is possible but suspicious (``suspicious``);
- canonical shape and the schema contract (``finish``).

Problems name the file, the 1-based data row and its line in a CSV file, the user's own column
name, and what is wrong; identical problems are shown once with their count. Text from the
export is never echoed raw (``problems.shown``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd

from features.data.importer.checks import HISTORY_TABLES, check_history, check_table
from features.data.importer.convert import REQUIRED, convert
from features.data.importer.currencies import check_rates, currencies
from features.data.importer.derive import (
    check_deal_times,
    close_after_export,
    derive_outcome,
    derive_stage_history,
    flag_entered_after_close,
    set_observed_at,
)
from features.data.importer.finish import finish
from features.data.importer.problems import (
    MAX_PRINTED_PROBLEMS,
    ImportProblem,
    ImportValidationError,
    ProblemGroup,
    group_problems,
    shown,
    write_problems_csv,
)
from features.data.importer.read import find_canonical, find_source, read_file
from features.data.importer.run import ImportOptions, ImportRun
from features.data.importer.snapshots import convert_snapshot
from features.data.importer.suspicious import (
    note_activities_before_creation,
    note_after_export,
    note_unsafe_text,
)
from features.data.importer.values import MAX_AMOUNT, YEAR_RANGE
from features.data.mapping import Conversions, Mapping, currency_code, known_encoding
from features.data.schema import CanonicalTables
from features.data.stages import StageConfig, load_stage_config
from features.errors import InputError

__all__ = [
    "MAX_AMOUNT",
    "MAX_PRINTED_PROBLEMS",
    "REQUIRED",
    "YEAR_RANGE",
    "ImportProblem",
    "ImportResult",
    "ImportValidationError",
    "ProblemGroup",
    "check_currency",
    "check_encoding",
    "group_problems",
    "read_export",
    "write_problems_csv",
]


@dataclass(frozen=True)
class ImportResult:
    """A validated export.

    ``tables``: every canonical table (absent ones empty). ``notes``: what the user should know
    (values stored as ``other``, rows dropped or derived, the encoding assumed, ...), already
    safe to print.

    ``provided``: per table, the canonical (and ``custom_*``) columns whose values came from the
    export: a column the file has (mapped or by its canonical name, even if some cells are
    empty), a mapping constant or default, or a value the importer derived from provided data
    (``outcome`` from ``stage``, ``observed_at`` from the export time, ``history_source``,
    ``stage_history.derived``, the stage history of a deals-only export, field changes of a
    snapshot table). A column the importer only filled with missing values is not in it, so a
    store can leave such a column's stored values alone. With several files for one table, a
    column is provided if any of them provides it. Every table is a key (absent ones map to an
    empty set).
    """

    tables: CanonicalTables
    notes: list[str]
    provided: dict[str, frozenset[str]]


Frames = dict[str, pd.DataFrame]
Phase = Callable[[ImportRun, Frames], None]


def read_export(
    path: str | Path,
    *,
    mapping: Mapping | None = None,
    stages: StageConfig | None = None,
    exported_at: datetime | None = None,
    known_deal_ids: Iterable[str] = frozenset(),
    strict: bool = False,
    encoding: str | None = None,
    currency: str | None = None,
    default_currency: str | None = None,
    rates: str | Path | None = None,
    known_rates: pd.DataFrame | None = None,
) -> ImportResult:
    """Read and validate an export directory; raise ``ImportValidationError`` listing all problems.

    ``known_deal_ids`` are deals already in the store, so a history-only delta can refer to them.
    ``strict`` refuses unmapped values of descriptive categories instead of storing ``other``.
    ``encoding`` names the text encoding of every CSV file, over the mapping's (``InputError``
    if Python does not know it); without one, see ``features.data.importer.read``.
    ``currency`` names the corporate currency (``default_currency`` is used when nothing
    names one), ``rates`` a CSV or Parquet file of exchange rates in canonical columns, and
    ``known_rates`` the store's rates (see ``features.data.importer.currencies``).
    """
    root = Path(path)
    check_encoding(encoding)
    run = ImportRun(
        ImportOptions(
            stages or load_stage_config(),
            mapping,
            strict=strict,
            encoding=encoding,
            exported_at=exported_at,
            known_deal_ids=frozenset(known_deal_ids),
            currency=check_currency(currency, "--currency"),
            default_currency=check_currency(default_currency, "PIPECAST_CURRENCY"),
            rates_file=None if rates is None else Path(rates),
            known_rates=known_rates,
        ),
        root=root,
    )
    if not root.is_dir():
        raise ImportValidationError([ImportProblem(str(root), None, None, "not a directory")])
    frames: Frames = {}
    read_tables(run, root, frames)
    read_rates_file(run, frames)
    if "deals" not in frames:
        raise ImportValidationError(run.problems)
    for phase in PHASES:
        phase(run, frames)
    if run.problems:
        raise ImportValidationError(run.problems)
    tables = finish(run, frames)
    provided = {t: frozenset(run.provided.get(t, ())) for t in CanonicalTables.TABLES}
    return ImportResult(tables=tables, notes=run.notes, provided=provided)


def check_currency(code: str | None, option: str) -> str | None:
    """An ISO 4217 code in upper case, or ``InputError`` naming the option."""
    try:
        return currency_code(code)
    except ValueError as err:
        raise InputError(f"{option}: {err}") from None


def check_encoding(encoding: str | None) -> None:
    """Raise ``InputError`` unless Python can decode text in ``encoding`` (None: automatic)."""
    try:
        known_encoding(encoding)
    except ValueError as err:
        raise InputError(f"--encoding: {err}") from None


# --- reading --------------------------------------------------------------------------------------
def read_tables(run: ImportRun, root: Path, frames: Frames) -> None:
    """Every table's files, converted and concatenated; absent tables stay absent."""
    for table in CanonicalTables.TABLES:
        parts = _canonical(run, root, table) if run.mapping is None else _mapped(run, root, table)
        if parts:
            frames[table] = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]


def read_rates_file(run: ImportRun, frames: Frames) -> None:
    """``--rates FILE``: exchange rates in canonical columns, added to the export's."""
    path = run.options.rates_file
    if path is None:
        return
    if not path.is_file():
        run.problem(str(path), "--rates: no such file")
        return
    raw = read_file(run, path, run.options.encoding)
    if raw is None:
        return
    part = convert(run, "exchange_rates", raw, Conversions(), mapped=False)
    have = frames.get("exchange_rates")
    frames["exchange_rates"] = part if have is None else pd.concat([have, part], ignore_index=True)


def _canonical(run: ImportRun, root: Path, table: str) -> list[pd.DataFrame]:
    path = find_canonical(run, root, table)
    if path is None:
        if table == "deals" and not run.problems:
            run.problem("deals.csv", "file not found: deals.csv or deals.parquet is required")
        return []
    raw = read_file(run, path, run.options.encoding)
    return [] if raw is None else [convert(run, table, raw, Conversions(), mapped=False)]


def _mapped(run: ImportRun, root: Path, table: str) -> list[pd.DataFrame]:
    assert run.mapping is not None
    tm = run.mapping.table(table)
    if tm is None:
        return []
    parts = []
    for source in tm.sources:
        path = find_source(run, root, source.file)
        if path is None:
            if table == "deals":
                run.problem(source.file, "file not found (named by the mapping for deals)")
            else:
                run.note(f"{source.file} not in the export: no {table} from it")
            continue
        encoding = run.options.encoding or source.encoding or run.mapping.encoding
        raw = read_file(run, path, encoding)
        if raw is None:
            continue
        conv = tm.merged(source)
        if source.is_snapshot:
            parts.append(convert_snapshot(run, raw, conv, source))
        else:
            parts.append(convert(run, table, raw, conv, mapped=True))
    return parts


# --- phases after reading -------------------------------------------------------------------------
def check_deals(run: ImportRun, frames: Frames) -> None:
    check_table(run, "deals", frames["deals"])
    derive_outcome(run, frames["deals"])


def check_stage_targets(run: ImportRun, frames: Frames) -> None:
    """The mapping's stage names onto keys the stage configuration lacks, unused here: a note.

    (Used ones are refused row by row as unknown stages, naming the mapping's key.)
    """
    if run.mapping is None:
        return
    keys = set(run.stages.by_key)
    used = {
        str(v)
        for t in ("deals", "stage_history")
        if t in frames and "stage" in frames[t]
        for v in frames[t]["stage"].dropna().unique()
    }
    for name, target in run.mapping.stages.items():
        if target not in keys and target not in used:
            run.note(
                f"the mapping's stages: maps {shown(name)} to {shown(target)}, not a stage of the "
                f"stage configuration {sorted(keys)}; no row uses it here (check --stages)"
            )


def check_histories(run: ImportRun, frames: Frames) -> None:
    """History rows must name a deal of this export or of the store."""
    deals = set(frames["deals"]["deal_id"].dropna()) | run.options.known_deal_ids
    for table in HISTORY_TABLES:
        if table in frames:
            frames[table] = check_history(run, table, frames[table], deals)


def check_targets(run: ImportRun, frames: Frames) -> None:
    if "targets" in frames:
        check_table(run, "targets", frames["targets"])


def export_time(run: ImportRun, frames: Frames) -> None:
    set_observed_at(run, frames, run.options.exported_at)
    close_after_export(run, frames)


def deal_times(run: ImportRun, frames: Frames) -> None:
    check_deal_times(run, frames["deals"])


def derived_history(run: ImportRun, frames: Frames) -> None:
    """A deals-only export: the stage history its rows prove (see ``derive``)."""
    if "stage_history" not in frames and not run.problems:
        frames["stage_history"] = derive_stage_history(run, frames["deals"])


PHASES: tuple[Phase, ...] = (
    check_deals,
    check_stage_targets,
    check_histories,
    check_targets,
    check_rates,
    currencies,
    export_time,
    deal_times,
    flag_entered_after_close,
    note_after_export,
    note_activities_before_creation,
    note_unsafe_text,
    derived_history,
)
