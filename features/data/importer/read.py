"""Reading an export's files: finding them, decoding their text, parsing CSV or Parquet.

A CSV file is decoded before it is parsed:

- a byte-order mark decides (UTF-8, UTF-16 or UTF-32 with a BOM always work);
- else the encoding named by ``--encoding``, the mapping's source, or the mapping's top level;
- else UTF-8; a file that is not valid UTF-8 is read as Windows-1252 (what Excel and Salesforce
  hand out every day) with a note naming the file and how to name another encoding. A file that
  is not Windows-1252 either, or looks like UTF-16 without a BOM, is refused naming the byte, its
  line and the option.

The delimiter is read from the header line (``,`` unless ``;``, tab or ``|`` splits it into more
columns, noted). Every cell is read as text (ids keep leading zeros, "NA" stays a name). A header
given twice is kept apart (the second as ``Amount (column 9)``) and refused only if the import
uses it. Rows with more or fewer fields than the header are refused with their row and line;
fields of any size are read. Line numbers are exact also after a quoted field spanning lines.
"""

from __future__ import annotations

import codecs
import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from features.data.importer.problems import ImportProblem, printable
from features.data.importer.run import ImportRun

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
FALLBACK_ENCODING = "windows-1252"
_DELIMITERS = (",", ";", "\t", "|")
_BLOCK = 8 << 20  # pyarrow parses in blocks; a row longer than a block needs a bigger one
_HEAD = 1 << 20  # enough of a file for its header line
_MAX_BLOCK = (1 << 31) - 1


@dataclass(frozen=True)
class RawFile:
    """A file as read: every column as the user named it, and where its rows start."""

    name: str
    frame: pd.DataFrame
    is_csv: bool
    lines: np.ndarray | None = None  # CSV line of each data row, when not simply row + 1
    duplicates: dict[str, tuple[int, ...]] = field(default_factory=dict)


# --- finding files ------------------------------------------------------------------------------
def find_canonical(run: ImportRun, root: Path, table: str) -> Path | None:
    """The canonical file of a table: ``<table>.csv`` or ``<table>.parquet``, never both."""
    found = [p for p in (root / f"{table}.csv", root / f"{table}.parquet") if p.is_file()]
    if len(found) > 1:
        run.problem(found[0].name, f"both {found[0].name} and {found[1].name} exist for {table}")
        return None
    return found[0] if found else None


def find_source(run: ImportRun, root: Path, name: str) -> Path | None:
    """A mapping's file name, or glob pattern matching exactly one file, in the export root."""
    if not any(ch in name for ch in "*?["):
        return root / name if (root / name).is_file() else None
    matches = sorted(p for p in root.glob(name) if p.is_file())
    if len(matches) > 1:
        names = [printable(p.name) for p in matches]
        run.problem(name, f"pattern matches several files: {names}")
        return None
    return matches[0] if matches else None


def read_file(run: ImportRun, path: Path, encoding: str | None) -> RawFile | None:
    """Read one file; problems are recorded (and None returned), never raised."""
    if path.suffix.lower() == ".parquet":
        return _read_parquet(run, path)
    return _read_csv(run, path, encoding)


def _read_parquet(run: ImportRun, path: Path) -> RawFile | None:
    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # a reader failure is a problem of this file, reported with the rest
        run.problem(path.name, f"cannot be read as Parquet: {printable(str(err))}")
        return None
    frame.columns = [str(c).strip() for c in frame.columns]
    return RawFile(path.name, frame.reset_index(drop=True), is_csv=False)


# --- decoding -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Decoded:
    text: str
    utf8: bool  # the file's bytes are this text in UTF-8 without a BOM: parse them as they are


def _line_of(data: bytes, pos: int) -> int:
    return data.count(b"\n", 0, pos) + 1


def decode(run: ImportRun, name: str, data: bytes, encoding: str | None) -> Decoded | None:
    """The file's text (see the module docstring for the rules), or None with a problem.

    ``encoding`` None means: UTF-8, else Windows-1252 with a note.
    """
    for bom, codec in _BOMS:
        if data.startswith(bom):
            return _decode_as(run, name, data, codec)
    if encoding is not None:
        return _decode_as(run, name, data, encoding)
    option = "pass --encoding ENC to `pipecast load` or set `encoding:` in the mapping"
    if b"\x00" in data[:4096]:  # never in UTF-8 or Windows-1252 text; half of UTF-16's bytes
        run.problem(name, f"looks like UTF-16 without a byte-order mark: {option} (utf-16-le)")
        return None
    try:
        return Decoded(data.decode("utf-8"), utf8=True)
    except UnicodeDecodeError as err:
        bad, line = data[err.start], _line_of(data, err.start)
    try:
        text = data.decode(FALLBACK_ENCODING)
    except UnicodeDecodeError as err:
        run.problem(
            name,
            f"is neither UTF-8 (byte 0x{bad:02X} on line {line}) nor {FALLBACK_ENCODING} "
            f"(byte 0x{data[err.start]:02X} on line {_line_of(data, err.start)}): {option}",
        )
        return None
    run.note(
        f"{printable(name)} is not UTF-8 (byte 0x{bad:02X} on line {line}): read as "
        f"{FALLBACK_ENCODING}; if that is wrong, {option}"
    )
    return Decoded(text, utf8=False)


def _decode_as(run: ImportRun, name: str, data: bytes, codec: str) -> Decoded | None:
    try:
        return Decoded(data.decode(codec), utf8=codecs.lookup(codec).name == "utf-8")
    except UnicodeDecodeError as err:
        run.problem(
            name,
            f"is not valid {codec} text (byte 0x{data[err.start]:02X} on line "
            f"{_line_of(data, err.start)}): name its encoding with --encoding or the mapping's "
            "`encoding:`, or save it as UTF-8",
        )
        return None


# --- CSV ------------------------------------------------------------------------------------------
def _delimiter(text: str) -> str:
    """The delimiter that splits the header line into the most columns (a comma on a tie)."""
    end = text.find("\n")
    first = text if end < 0 else text[:end]
    counts = {d: len(next(csv.reader([first], delimiter=d), [])) for d in _DELIMITERS}
    best = max(_DELIMITERS, key=lambda d: (counts[d], d == ","))
    return best if counts[best] > counts[","] else ","


def _header(text: str, delimiter: str) -> tuple[list[str], int] | None:
    """The header's names, and the lines it spans (a quoted name may hold a line break)."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = next(reader, None)
    return ([h.strip() for h in header], reader.line_num) if header else None


def _unique_names(header: list[str]) -> tuple[list[str], dict[str, tuple[int, ...]]]:
    """Header names made unique (``Amount (column 9)``), and the names given more than once."""
    positions: dict[str, list[int]] = {}
    for i, name in enumerate(header, start=1):
        positions.setdefault(name, []).append(i)
    names = [
        name if positions[name][0] == i else f"{name} (column {i})"
        for i, name in enumerate(header, start=1)
    ]
    names = [n or f"(column {i})" for i, n in enumerate(names, start=1)]
    dupes = {n: tuple(p) for n, p in positions.items() if len(p) > 1 and n}
    return names, dupes


def _parse(
    source: str | pa.Buffer, n: int, skip: int, delimiter: str, block: int
) -> tuple[pa.Table, int]:
    """Every field as text; returns the table and how many rows had the wrong field count.

    ``skip``: the header's lines (pyarrow skips lines, not quoted records).
    """
    invalid = [0]

    def count(_row: pacsv.InvalidRow) -> str:
        invalid[0] += 1
        return "skip"

    names = [f"f{i}" for i in range(n)]
    table = pacsv.read_csv(
        source,
        read_options=pacsv.ReadOptions(column_names=names, skip_rows=skip, block_size=block),
        parse_options=pacsv.ParseOptions(
            delimiter=delimiter, newlines_in_values=True, invalid_row_handler=count
        ),
        convert_options=pacsv.ConvertOptions(
            column_types=dict.fromkeys(names, pa.string()),
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
        ),
    )
    return table, invalid[0]


def _records(text: str, delimiter: str, n: int) -> tuple[list[int], list[tuple[int, int, int]]]:
    """Start line of each data row, and (row, line, fields) of rows with a wrong field count.

    The slow path (Python's csv module), taken only when lines are not simply row + 1.
    """
    if len(text) >= csv.field_size_limit():
        csv.field_size_limit(len(text) + 1)  # one field may be the whole file
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    next(reader, None)  # the header
    starts: list[int] = []
    ragged: list[tuple[int, int, int]] = []
    row, start = 0, reader.line_num + 1
    for rec in reader:
        line, start = start, reader.line_num + 1
        if not rec:  # a blank line: the parser skips it too
            continue
        row += 1
        if len(rec) != n:
            ragged.append((row, line, len(rec)))
        else:
            starts.append(line)
    return starts, ragged


class _Content:
    """A CSV file's bytes for the parser, and its text, decoded no further than needed.

    A UTF-8 file (the common case) is parsed straight from disk, like a file of any size, and
    only its head is decoded, for the header; pyarrow checks the rest is UTF-8. Any other file is
    decoded whole and handed to the parser re-encoded as UTF-8.
    """

    def __init__(
        self, path: Path, decoded: Decoded | None, data: bytes | None, head: str = ""
    ) -> None:
        self.path, self._decoded, self._data, self._head = path, decoded, data, head
        self.on_disk = decoded is None

    def source(self) -> str | pa.Buffer:
        if self._decoded is None:
            return str(self.path)
        utf8 = self._decoded.utf8 and self._data is not None
        return pa.py_buffer(self._data if utf8 else self._decoded.text.encode("utf-8"))

    def size(self) -> int:
        return self.path.stat().st_size if self._data is None else len(self._data)

    def head(self) -> str:
        return self._head if self._decoded is None else self._decoded.text[:_HEAD]

    def text(self) -> str:
        if self._decoded is None:
            return self.path.read_bytes().decode("utf-8")
        return self._decoded.text

    def lines(self) -> int:
        """Physical lines, counting a last line without a newline."""
        if self._decoded is not None:
            t = self._decoded.text
            return t.count("\n") + (0 if t.endswith("\n") or not t else 1)
        n, last = 0, b"\n"
        with self.path.open("rb") as fh:
            while chunk := fh.read(_BLOCK):
                n, last = n + chunk.count(b"\n"), chunk[-1:]
        return n + (0 if last == b"\n" else 1)

    def release(self) -> None:
        """Drop the bytes and text held: the parser has made its own copy."""
        self._decoded = self._data = None


def _content(run: ImportRun, path: Path, encoding: str | None, fast: bool) -> _Content | None:
    """The file's content (``fast``: try parsing it from disk as UTF-8 first)."""
    try:
        with path.open("rb") as fh:
            start = fh.read(_HEAD)
        utf8 = encoding is None or codecs.lookup(encoding).name == "utf-8"
        marked = any(start.startswith(bom) for bom, _ in _BOMS) or b"\x00" in start[:4096]
        head = _utf8_head(start) if fast and utf8 and not marked else None
        if head is not None:
            return _Content(path, None, None, head)
        data = path.read_bytes()
    except OSError as err:
        run.problem(path.name, f"cannot be read: {printable(err.strerror or str(err))}")
        return None
    decoded = decode(run, path.name, data, encoding)
    return None if decoded is None else _Content(path, decoded, data)


def _utf8_head(start: bytes) -> str | None:
    """The first bytes of a file as UTF-8 text (a character cut at the end is left out)."""
    try:
        return codecs.getincrementaldecoder("utf-8")().decode(start, final=False)
    except UnicodeDecodeError:
        return None


def _read_csv(run: ImportRun, path: Path, encoding: str | None) -> RawFile | None:
    content = _content(run, path, encoding, fast=True)
    try:
        return None if content is None else _parse_content(run, path.name, content)
    except _NotUtf8:  # found by the parser: decode it ourselves, to say where and what to do
        content = _content(run, path, encoding, fast=False)
        return None if content is None else _parse_content(run, path.name, content)


class _NotUtf8(Exception):
    pass


def _parse_content(run: ImportRun, name: str, content: _Content) -> RawFile | None:
    head = content.head()
    delimiter = _delimiter(head)
    found = _header(head, delimiter)
    if found is None:
        run.problem(name, "is empty: no header row")
        return None
    header, skip = found
    names, dupes = _unique_names(header)
    try:
        try:
            table, invalid = _parse(content.source(), len(names), skip, delimiter, _BLOCK)
        except pa.ArrowInvalid as err:
            if "straddl" not in str(err):
                raise
            big = min(content.size() + 1, _MAX_BLOCK)
            table, invalid = _parse(content.source(), len(names), skip, delimiter, big)
    except pa.ArrowInvalid as err:
        if content.on_disk and "UTF8" in str(err):
            raise _NotUtf8 from None
        run.problem(name, f"cannot be read as CSV: {printable(str(err))}")
        return None
    if delimiter != ",":
        run.note(f"{printable(name)}: read with {delimiter!r} as the delimiter")
    lines = _line_index(run, name, content, delimiter, len(names), table.num_rows, invalid)
    if invalid:
        return None
    content.release()  # the file's bytes and text, before the frame is made
    frame = table.rename_columns(names).to_pandas()
    return RawFile(name, frame, is_csv=True, lines=lines, duplicates=dupes)


def _line_index(
    run: ImportRun, name: str, content: _Content, delimiter: str, n: int, rows: int, invalid: int
) -> np.ndarray | None:
    """Lines of the data rows when they are not row + 1; ragged rows become problems."""
    if not invalid and content.lines() == rows + 1:
        return None
    starts, ragged = _records(content.text(), delimiter, n)
    for row, line, fields in ragged:
        run.problems.append(
            ImportProblem(
                name,
                row,
                None,
                f"has {fields} fields, the header has {n} (delimiter {delimiter!r}: a missing "
                "or extra delimiter, or an unclosed quote?)",
                line,
            )
        )
    if invalid and not ragged:  # the parsers disagree: still refuse, without a row
        run.problem(name, f"{invalid} rows have more or fewer fields than the header ({n})")
    if len(starts) != rows:
        return None
    return np.asarray(starts, dtype=np.int64)
