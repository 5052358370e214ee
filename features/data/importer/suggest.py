"""A starting mapping for a CRM export (``pipecast mapping suggest EXPORT_DIR``).

A user with custom stages, task types or contact roles should get a working mapping in minutes,
not by reading the mapping format. The suggestion starts from the shipped mapping of the CRM the
export comes from (``features/data/mappings/``: Salesforce when there is an ``Opportunity.csv``,
HubSpot when a file has a ``Deal Stage`` column) and fits it to the export:

- the files it names are found (a HubSpot export file keeps its own name);
- every distinct stage, activity type, contact role, forecast category and loss reason in the
  export is looked at: a value the importer would place already (the shipped map, a canonical
  value or label, case and spacing aside) stays as it is; a Salesforce stage whose deals are all
  closed is placed by ``IsClosed``/``IsWon``; every other value is written with the target
  ``"?"`` and a comment (row count, probability, the targets it may take);
- a required column the export lacks is written as ``"?"`` with the file's columns beside it; a
  loss reason column under another name is taken when exactly one column looks like one;
- date formats are checked on the export's values (a format that parses none of them is replaced
  by one that parses all, or marked when none or two ambiguous ones do);
- files that are not UTF-8 set ``encoding: windows-1252``; the currencies found are said.

A mapping that still holds a ``"?"`` is refused on load, naming each key (``mapping.UNFILLED``),
so nothing unplaced slips through: the user fills in the marks and loads.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from features.data.config import parse_yaml, read_yaml
from features.data.importer.convert import REQUIRED
from features.data.importer.read import find_source, read_file
from features.data.importer.run import ImportOptions, ImportRun
from features.data.importer.values import clean_text
from features.data.mapping import (
    ENUMS,
    SNAPSHOT_DERIVED,
    UNFILLED,
    ColumnRef,
    Conversions,
    Mapping,
    as_text,
    fold,
    parse_mapping,
    unfilled_keys,
)
from features.data.schema import TIMESTAMP_COLUMNS
from features.data.stages import StageConfig
from features.errors import InputError

MAPPINGS = Path(__file__).resolve().parents[1] / "mappings"
TEMPLATES = {"salesforce": "salesforce.yaml", "hubspot": "hubspot.yaml"}
# Tried on a date column whose mapped format parses none of its values (None: ISO 8601).
DATE_FORMATS: tuple[str | None, ...] = (
    None,
    "%m/%d/%Y %H:%M",
    "%m/%d/%Y %I:%M %p",
    "%d/%m/%Y %H:%M",
    "%m/%d/%Y",
    "%d/%m/%Y",
    "%d.%m.%Y %H:%M",
    "%d.%m.%Y",
)
_SAMPLE = 500
_LOSS_COLUMN = re.compile(r"loss|lost|reason|motivo|perd|raz[oó]n|verlies|grund", re.IGNORECASE)
_PROBABILITY = ("Probability", "Deal probability")
# Value maps the suggestion fills: (table, column) and the canonical targets' description.
_VALUE_COLUMNS = (
    ("deals", "forecast_category"),
    ("deals", "loss_reason"),
    ("activities", "type"),
    ("stakeholders", "role"),
)


@dataclass(frozen=True)
class Suggestion:
    """The mapping as YAML text (with comments), the CRM it was made for, and the keys marked
    ``"?"`` that the user must fill in."""

    crm: str
    text: str
    marks: list[str]


class _Export:
    """The files of an export directory, read (all cells as text) on first use."""

    def __init__(self, root: Path, stages: StageConfig) -> None:
        if not root.is_dir():
            raise InputError(f"{root}: not a directory (give the folder of the export's files)")
        self.root = root
        self.run = ImportRun(ImportOptions(stages), root=root)
        self._frames: dict[str, pd.DataFrame | None] = {}

    def names(self) -> list[str]:
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_file() and p.suffix.lower() in (".csv", ".parquet")
        )

    def find(self, pattern: str) -> str | None:
        path = find_source(self.run, self.root, pattern)
        return None if path is None else path.name

    def frame(self, name: str) -> pd.DataFrame | None:
        if name not in self._frames:
            raw = read_file(self.run, self.root / name, None)
            self._frames[name] = None if raw is None else raw.frame
        return self._frames[name]

    def header(self, name: str) -> list[str]:
        frame = self.frame(name)
        return [] if frame is None else [str(c) for c in frame.columns]


def _text_kind(path: Path) -> str:
    """``ascii``, ``utf-8`` (beyond ASCII) or ``other`` (not UTF-8)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    ascii_only = True
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                decoder.decode(chunk)
                ascii_only = ascii_only and chunk.isascii()
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return "other"
    return "ascii" if ascii_only else "utf-8"


def detect_crm(export: _Export) -> str:
    """``salesforce`` or ``hubspot`` from the export's files; InputError naming what was sought."""
    names = export.names()
    if any(n.lower() == "opportunity.csv" for n in names):
        return "salesforce"
    for name in names:
        if "Deal Stage" in export.header(name):
            return "hubspot"
    raise InputError(
        f"{export.root}: not a Salesforce export (no Opportunity.csv) nor a HubSpot deals export "
        f"(no file with a 'Deal Stage' column); files: {names[:20]}"
    )


def _without_marks(data: Any) -> Any:
    """``data`` without the entries whose value is the ``"?"`` mark."""
    if isinstance(data, dict):
        return {k: _without_marks(v) for k, v in data.items() if v != UNFILLED}
    if isinstance(data, list):
        return [_without_marks(v) for v in data]
    return data


def _first_present(ref: ColumnRef | None, header: Iterable[str]) -> str | None:
    if ref is None:
        return None
    have = set(header)
    return next((c for c in ([ref] if isinstance(ref, str) else ref) if c in have), None)


@dataclass
class _Suggester:
    """Fits one template (raw YAML data) to one export; comments are keyed by YAML path."""

    export: _Export
    stages: StageConfig
    data: dict[str, Any]
    comments: dict[tuple[Any, ...], str] = field(default_factory=dict)
    header: list[str] = field(default_factory=list)

    # --- where things are ------------------------------------------------------------------
    @property
    def mapping(self) -> Mapping:
        """The data so far as a mapping (entries still marked left out)."""
        return Mapping.model_validate(_without_marks(self.data))

    def sources(self, table: str) -> list[tuple[int, str, Conversions]]:
        """(index, file found, merged conversions) of each source of ``table`` in the export."""
        tm = self.mapping.table(table)
        if tm is None:
            return []
        out = []
        for i, src in enumerate(tm.sources):
            found = self.export.find(src.file)
            if found is not None:
                out.append((i, found, tm.merged(src)))
        return out

    def section(self, table: str, i: int, part: str) -> tuple[dict[str, Any], tuple[Any, ...]]:
        """The dict holding ``part`` (columns, values, dates) for source ``i``: the source's own
        if the template writes it there, else the table's (created when absent)."""
        tdata = self.data["tables"][table]
        src = tdata["sources"][i]
        if part in src or (len(tdata["sources"]) > 1 and part not in tdata):
            return src.setdefault(part, {}), ("tables", table, "sources", i, part)
        return tdata.setdefault(part, {}), ("tables", table, part)

    def mark(self, path: tuple[Any, ...], note: str) -> None:
        self.comments[path] = note

    # --- the steps -------------------------------------------------------------------------
    def files(self) -> None:
        """Each deals source names the file found (a HubSpot export keeps its dated name)."""
        for i, src in enumerate(self.data["tables"]["deals"]["sources"]):
            found = self.export.find(src["file"])
            if found is None and self.crm_deals_file is not None:
                src["file"] = self.crm_deals_file
                self.mark(("tables", "deals", "sources", i, "file"), "the export's deals file")

    crm_deals_file: str | None = None

    def required_columns(self) -> None:
        for table in list(self.data["tables"]):
            tm = self.mapping.tables[table]
            for i, name, conv in self.sources(table):
                header = self.export.header(name)
                derived = SNAPSHOT_DERIVED if tm.sources[i].is_snapshot else ()
                for col in (c for c in REQUIRED.get(table, ()) if c not in derived):
                    ref = conv.columns.get(col)
                    if col in conv.constants or col in conv.defaults:
                        continue
                    if ref is not None and _first_present(ref, header) is not None:
                        continue
                    columns, path = self.section(table, i, "columns")
                    columns[col] = UNFILLED
                    self.mark(
                        (*path, col),
                        f"no column for {table}.{col} in {name}; it has: " + ", ".join(header[:25]),
                    )

    def loss_reason_column(self) -> None:
        """A loss reason column under another name: taken if exactly one column looks like one."""
        found = self.sources("deals")
        if not found:
            return
        i, name, conv = found[0]
        header = self.export.header(name)
        if _first_present(conv.columns.get("loss_reason"), header) is not None:
            return
        tm = self.mapping.tables["deals"]
        used = {
            c for ref in conv.columns.values() for c in ([ref] if isinstance(ref, str) else ref)
        }
        used |= set(tm.custom.values())  # e.g. HubSpot's free-text reason, kept as custom
        candidates = [c for c in header if _LOSS_COLUMN.search(c) and c not in used]
        columns, path = self.section("deals", i, "columns")
        if len(candidates) == 1:
            columns["loss_reason"] = candidates[0]
            self.mark((*path, "loss_reason"), "taken for its name: check it")
        elif candidates:
            columns["loss_reason"] = UNFILLED
            self.mark((*path, "loss_reason"), f"one of {candidates}, or delete this line")
        else:
            columns.pop("loss_reason", None)

    # --- values ----------------------------------------------------------------------------
    def distinct(self, name: str, conv: Conversions, col: str) -> pd.Series:
        """Row counts of each distinct value of ``col`` in file ``name`` (the mapping's skipped
        rows left out); empty when the file lacks the column."""
        frame = self.export.frame(name)
        if frame is None:
            return pd.Series(dtype="int64")
        header = [str(c) for c in frame.columns]
        user = _first_present(conv.columns.get(col), header)
        if user is None:
            return pd.Series(dtype="int64")
        cells = clean_text(frame[user])
        skip = conv.skip.get(col, [])
        skipped = {fold(as_text(v)) for v in skip if v is not None}
        dropped = cells.map(fold, na_action="ignore").isin(skipped)
        cells = cells[~dropped.to_numpy(dtype=bool)]
        return cells.dropna().value_counts(sort=False).sort_index()

    def stage_names(self) -> None:
        """Every stage name of the export: placed by the template, the stage configuration or
        IsClosed/IsWon; else marked, with its deals' typical probability."""
        known = dict(self.data.get("stages") or {})
        by_name = {fold(s.label): s.key for s in self.stages.stages}
        by_name |= {fold(s.key): s.key for s in self.stages.stages}
        folded = {fold(str(k)): v for k, v in known.items()}
        counts: dict[str, int] = {}
        for table in ("deals", "stage_history"):
            for _, name, conv in self.sources(table):
                for value, n in self.distinct(name, conv, "stage").items():
                    counts[str(value)] = counts.get(str(value), 0) + int(n)
        closed = self.closed_stages()
        out: dict[str, Any] = {}
        for value in sorted(counts):
            f = fold(value)
            if value in known or f in folded:
                out[value] = known.get(value, folded.get(f))
            elif f in by_name:
                continue  # a stage label or key of the configuration: no entry needed
            elif value in closed:
                out[value] = closed[value]
                self.mark(("stages", value), "from IsClosed/IsWon")
            else:
                out[value] = UNFILLED
                self.mark(("stages", value), self.stage_hint(value, counts[value]))
        self.data["stages"] = out

    def closed_stages(self) -> dict[str, str]:
        """Salesforce stage names whose deals are all closed: won if all won, lost if none."""
        found = self.sources("deals")
        if not found:
            return {}
        _, name, conv = found[0]
        frame = self.export.frame(name)
        stage_col = _first_present(conv.columns.get("stage"), self.export.header(name))
        if frame is None or stage_col is None or not {"IsClosed", "IsWon"} <= set(frame.columns):
            return {}
        truth = {"1", "true", "t", "yes", "y"}
        closed = clean_text(frame["IsClosed"]).str.lower().isin(truth)
        won = clean_text(frame["IsWon"]).str.lower().isin(truth)
        out = {}
        names = clean_text(frame[stage_col])
        for value, rows in names.groupby(names).groups.items():
            c, w = closed.loc[rows], won.loc[rows]
            if c.all() and w.all():
                out[str(value)] = self.stages.won_key
            elif c.all() and not w.any():
                out[str(value)] = self.stages.lost_key
        return out

    def stage_hint(self, value: str, n: int) -> str:
        opens = "|".join(self.stages.open_keys)
        hint = f"{n} rows; one of {opens}"
        found = self.sources("deals")
        if found:
            frame = self.export.frame(found[0][1])
            header = self.export.header(found[0][1])
            stage_col = _first_present(found[0][2].columns.get("stage"), header)
            prob_col = _first_present(list(_PROBABILITY), header)
            if frame is not None and stage_col and prob_col:
                rows = clean_text(frame[stage_col]) == value
                cells = clean_text(frame.loc[rows.to_numpy(dtype=bool), prob_col])
                p = pd.to_numeric(cells, errors="coerce")
                if p.notna().any():
                    med = float(p.median()) / (100.0 if p.max() > 1 else 1.0)
                    near = min(self.stages.open_stages, key=lambda s: abs(s.win_probability - med))
                    hint += f"; probability {med:.0%}, nearest {near.key}"
        return hint

    def value_maps(self) -> None:
        """Each descriptive column's values: placed, or marked with its targets."""
        for table, col in _VALUE_COLUMNS:
            allowed = ENUMS[(table, col)]
            targets = "|".join(allowed) + (", or null (no type)" if col == "type" else "")
            for i, name, conv in self.sources(table):
                if col in conv.constants:
                    continue
                value_map = {as_text(k): v for k, v in conv.values.get(col, {}).items()}
                placed = {fold(k) for k in value_map} | {fold(a) for a in allowed}
                values, path = self.section(table, i, "values")
                for value, n in self.distinct(name, conv, col).items():
                    if str(value) in value_map or fold(str(value)) in placed:
                        continue
                    entry = values.setdefault(col, {})
                    entry[str(value)] = UNFILLED
                    self.mark((*path, col, str(value)), f"{n} rows in {name}; one of {targets}")

    # --- dates, encoding, currencies -------------------------------------------------------
    def date_formats(self) -> None:
        """A mapped format that fails on the export's values is replaced or marked."""
        for table in list(self.data["tables"]):
            for i, name, conv in self.sources(table):
                frame = self.export.frame(name)
                if frame is None:
                    continue
                header = [str(c) for c in frame.columns]
                for col in [*TIMESTAMP_COLUMNS.get(table, ()), "modified_at"]:
                    user = _first_present(conv.columns.get(col, col), header)
                    if user is None:
                        continue
                    sample = clean_text(frame[user]).dropna().head(_SAMPLE)
                    self.fit_dates(table, i, col, sample, conv.dates.get(col))

    def fit_dates(
        self, table: str, i: int, col: str, sample: pd.Series, fmt: str | list[str] | None
    ) -> None:
        if sample.empty or _parses(sample, fmt):
            return
        fits = [f for f in DATE_FORMATS if _parses(sample, f)]
        dates, path = self.section(table, i, "dates")
        example = ", ".join(repr(v) for v in sample.head(3))
        if len(fits) == 1:
            if fits[0] is None:
                dates.pop(col, None)
            else:
                dates[col] = fits[0]
                self.mark((*path, col), f"fits the export's values ({example})")
        else:
            dates[col] = UNFILLED
            why = f"formats {fits} all fit" if fits else "no known format fits"
            self.mark((*path, col), f"a pandas date format for {example}: {why}")

    def encoding(self) -> Iterable[str]:
        """``encoding: windows-1252`` when no file is UTF-8 text beyond ASCII and some are not
        UTF-8; a mixed export is left to the importer, which reads each file as it is."""
        kinds = {
            n: _text_kind(self.export.root / n)
            for n in self.export.names()
            if n.lower().endswith(".csv")
        }
        other = sorted(n for n, k in kinds.items() if k == "other")
        if not other:
            return []
        files = ", ".join(other[:8]) + (f" and {len(other) - 8} more" if len(other) > 8 else "")
        if "utf-8" in kinds.values():
            return [f"not UTF-8 (each read as Windows-1252, noted at load): {files}"]
        self.data["encoding"] = "windows-1252"
        self.mark(("encoding",), f"not UTF-8: {files} (what Excel and Salesforce write)")
        return []

    def currencies(self) -> list[str]:
        """Header lines about the deals' currencies and where their rates come from."""
        found = self.sources("deals")
        if not found:
            return []
        _, name, conv = found[0]
        codes = sorted(str(c).upper() for c in self.distinct(name, conv, "currency").index)
        rates = self.sources("exchange_rates")
        if len(codes) <= 1:
            return [f"deal currency: {codes[0]}"] if codes else []
        lines = [f"deals in {len(codes)} currencies ({', '.join(codes)}), reported in one"]
        if rates:
            files = ", ".join(r[1] for r in rates)
            lines.append(f"corporate currency, converted with the rates of {files}")
        else:
            self.data["currency"] = UNFILLED
            self.mark(("currency",), f"the corporate currency, one of {codes} (or another)")
            lines.append("no rates in the export: pass --rates FILE.csv (currency,rate,valid_from)")
        return lines


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _parses(sample: pd.Series, fmt: str | list[str] | None) -> bool:
    formats = fmt if isinstance(fmt, list) else [fmt]
    ok = pd.Series(False, index=sample.index)
    for f in formats:
        parsed = pd.to_datetime(sample, format=f or "ISO8601", errors="coerce", utc=True)
        ok |= parsed.notna()
    return bool(ok.all())


# --- output ---------------------------------------------------------------------------------------
_PLAIN = re.compile(r"[A-Za-z\u00C0-\u024F][\w .\u00C0-\u024F/()-]*")


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    if _PLAIN.fullmatch(text) and text == text.strip() and yaml.safe_load(text) == text:
        return text
    return json.dumps(text, ensure_ascii=False)  # a double-quoted YAML string


def _flow(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_scalar(k)}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    return _scalar(value)


Notes = dict[tuple[Any, ...], str]


def _emit(node: dict[str, Any], path: tuple[Any, ...], notes: Notes, indent: int) -> list[str]:
    """Block YAML of ``node``; a note becomes a comment at the end of its key's line."""
    pad, lines = "  " * indent, []
    for key, value in node.items():
        here = (*path, key)
        tail = f"  # {notes[here]}" if here in notes else ""
        if isinstance(value, dict) and value and _nested(value, here, notes):
            lines.append(f"{pad}{_scalar(key)}:{tail}")
            lines += _emit(value, here, notes, indent + 1)
        elif isinstance(value, list) and any(isinstance(v, dict) for v in value):
            lines.append(f"{pad}{_scalar(key)}:{tail}")
            for i, item in enumerate(value):
                sub = _emit(item, (*here, i), notes, indent + 2)
                lines.append(f"{pad}  - {sub[0].lstrip()}")
                lines += sub[1:]
        else:
            lines.append(f"{pad}{_scalar(key)}: {_flow(value)}{tail}")
    return lines


def _nested(value: dict[str, Any], path: tuple[Any, ...], notes: Notes) -> bool:
    """Block style for a dict with a note inside it, or any dict of more than three entries."""
    inside = any(k[: len(path)] == path and len(k) > len(path) for k in notes)
    return inside or len(value) > 3 or any(isinstance(v, dict | list) for v in value.values())


def suggest_mapping(path: str | Path, stages: StageConfig, crm: str | None = None) -> Suggestion:
    """A mapping for the export at ``path`` (module docstring); ``crm`` overrides detection."""
    export = _Export(Path(path), stages)
    crm = crm or detect_crm(export)
    if crm not in TEMPLATES:
        raise InputError(f"--crm: expected one of {sorted(TEMPLATES)}, got {crm!r}")
    data = read_yaml(MAPPINGS / TEMPLATES[crm], "mapping")
    s = _Suggester(export, stages, data)
    if crm == "hubspot":
        deals = (n for n in export.names() if "Deal Stage" in export.header(n))
        s.crm_deals_file = next(deals, None)
    s.files()
    s.required_columns()
    s.loss_reason_column()
    s.stage_names()
    s.value_maps()
    s.date_formats()
    said = [*s.encoding(), *s.currencies()]
    first = ("name", "timezone", "encoding", "exported_at", "currency", "stages")
    s.data = {k: s.data[k] for k in first if k in s.data} | s.data
    marks = unfilled_keys(s.data)
    head = [
        f"pipecast mapping for {export.root.name}, suggested from the shipped {TEMPLATES[crm]}",
        f'{_count(len(marks), "value")} marked "?" to fill in (a mapping holding one is '
        "refused); the rest works as written",
        *said,
    ]
    lines = [*(f"# {line}" for line in head), *_emit(s.data, (), s.comments, 0)]
    text = "\n".join(lines) + "\n"
    if parse_yaml(text, "suggestion") != s.data:  # a bug of the writer, never the user's
        raise RuntimeError("the suggested mapping does not read back as written")
    parse_mapping(_without_marks(s.data), "suggestion")
    return Suggestion(crm, text, marks)
