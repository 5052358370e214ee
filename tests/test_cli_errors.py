"""The CLI on bad input: one line naming what is wrong, the right exit code, never a traceback.

Issue 7 (3.1, 3.10, 3.13): each case here printed a traceback, crashed, or "loaded" into a file that
is not a store before. Every message is checked for what it names; every output for the absence of
a traceback and of raw terminal control characters.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner, Result

from features.errors import StoreError
from features.settings import get_settings
from serving.cli import app
from serving.cli.common import safe_text

FIXTURES = Path(__file__).parent / "fixtures"
runner = CliRunner()


@pytest.fixture(autouse=True)
def _fresh_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PIPECAST_DB", "PIPECAST_STAGES", "PIPECAST_DEBUG", "PIPECAST_LOCK_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a loaded store, an export and files that are not stores."""
    root = tmp_path_factory.mktemp("cli-errors")
    shutil.copytree(FIXTURES / "canonical", root / "export")
    loaded = runner.invoke(
        app,
        [
            "load",
            str(root / "export"),
            "--db",
            str(root / "s.duckdb"),
            "--exported-at",
            "2024-06-01",
        ],
    )
    assert loaded.exit_code == 0, loaded.output
    (root / "text.duckdb").write_text("not a database\n" * 10)
    (root / "empty.duckdb").write_bytes(b"")
    (root / "store.csv").write_text("deal_id,amount\nD1,5\n")
    with sqlite3.connect(root / "crm.db") as con:
        con.execute("CREATE TABLE deals (id TEXT)")
    (root / "a-file").write_text("x")
    return root


def invoke(place: Path, *args: str) -> Result:
    return runner.invoke(app, [a.replace("{p}", str(place)) for a in args])


def assert_one_line(result: Result, code: int, *fragments: str) -> None:
    text = result.output
    assert result.exit_code == code, text
    assert "Traceback" not in text and "internal error" not in text, text
    assert len(result.stderr.strip().splitlines()) == 1, text
    for fragment in fragments:
        assert fragment in text, text


RANGE = "outside the supported range 1900-01-01..2199-12-31"


@pytest.mark.parametrize(
    ("args", "code", "fragments"),
    [
        (["metrics", "--as-of", "", "--db", "{p}/s.duckdb"], 2, ["--as-of: empty"]),
        (["signals", "--as-of", "  ", "--db", "{p}/s.duckdb"], 2, ["--as-of: empty"]),
        (["hygiene", "--as-of", "9999-12-31", "--db", "{p}/s.duckdb"], 2, [RANGE, "9999"]),
        (["metrics", "--as-of", "2999-12-31", "--db", "{p}/s.duckdb"], 2, [RANGE]),
        (["review", "--as-of", "1066-10-14", "--db", "{p}/s.duckdb"], 2, [RANGE]),
        (["metrics", "--as-of", "2025-02-30", "--db", "{p}/s.duckdb"], 2, ["cannot read"]),
        (
            ["snapshots", "--start", "2024-01-01", "--end", "9999-01-01", "--out", "{p}/x.pq"],
            2,
            ["--end", RANGE],
        ),
        (
            ["load", "{p}/export", "--db", "{p}/n.duckdb", "--exported-at", "garbage"],
            2,
            ["--exported-at: cannot read 'garbage'"],
        ),
        (["summary", "--db", "{p}/text.duckdb"], 1, ["text.duckdb is not a DuckDB store"]),
        (["summary", "--db", "{p}/empty.duckdb"], 1, ["empty.duckdb is an empty file"]),
        (["summary", "--db", "{p}/crm.db"], 1, ["crm.db is an SQLite database"]),
        (["load", "{p}/export", "--db", "{p}/crm.db"], 1, ["SQLite database"]),
        (["load", "{p}/export", "--db", "{p}/store.csv"], 1, ["store.csv is not a DuckDB"]),
        (["load", "{p}/export", "--db", "{p}/new.parquet"], 1, ["must end in .duckdb"]),
        (["load", "{p}/export", "--db", "{p}/no/dir/s.duckdb"], 1, ["no such directory"]),
        (["summary", "--db", "{p}/no/dir/s.duckdb"], 1, ["no such store"]),
        (["metrics", "--as-of", "2024-06-01", "--db", "{p}/a-file/s.duckdb"], 1, ["no such"]),
        (["summary", "--db", ""], 2, ["--db: empty path"]),
        (["summary", "--db", "{p}"], 1, ["is a directory"]),
        (
            ["snapshots", "--start", "2024-01-01", "--end", "2024-02-01", "--out", "."],
            2,
            ["--out: . is a directory"],
        ),
        (
            ["snapshots", "--start", "2024-01-01", "--end", "2024-02-01", "--out", "{p}/a-file/x"],
            2,
            ["a-file is a file, not a directory"],
        ),
        (["generate", "--deals", "5", "--out", "{p}/a-file"], 2, ["a-file exists and is not"]),
        (["generate", "--deals", "5", "--out", "{p}/g", "--end", "2021-01-01"], 2, ["after"]),
        (["generate", "--deals", "5", "--out", "{p}/g", "--start", "soon"], 2, ["--start"]),
        (["stages", "--stages", "{p}/nope.yaml"], 2, ["nope.yaml"]),
    ],
)
def test_bad_input_is_one_line(place: Path, args: list[str], code: int, fragments: list[str]):
    before = {p.name: p.read_bytes() for p in place.iterdir() if p.is_file()}
    result = invoke(place, *args)
    assert_one_line(result, code, *fragments)
    after = {p.name: p.read_bytes() for p in place.iterdir() if p.is_file()}
    assert after == before  # nothing written, no store file made
    assert not (place / "g").exists()


def test_settings_errors_are_one_line(place: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPECAST_LOCK_TIMEOUT", "soon")
    result = invoke(place, "load", "{p}/export", "--db", "{p}/s.duckdb")
    assert_one_line(result, 2, "PIPECAST_LOCK_TIMEOUT='soon'")


def test_debug_shows_the_exception(place: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = invoke(place, "--debug", "summary", "--db", "{p}/text.duckdb")
    assert isinstance(result.exception, StoreError)
    monkeypatch.setenv("PIPECAST_DEBUG", "1")
    result = invoke(place, "summary", "--db", "{p}/text.duckdb")
    assert isinstance(result.exception, StoreError)


def test_the_edges_of_the_supported_range_work(place: Path) -> None:
    for day in ("1900-01-01", "2199-12-31"):
        for command in ("hygiene", "signals"):
            result = invoke(place, command, "--as-of", day, "--db", "{p}/s.duckdb")
            assert result.exit_code == 0, result.output


def test_summary_of_an_empty_store(tmp_path: Path) -> None:
    export = tmp_path / "empty"
    export.mkdir()
    header = (FIXTURES / "canonical" / "deals.csv").read_text().splitlines()[0]
    (export / "deals.csv").write_text(header + "\n")
    db = tmp_path / "e.duckdb"
    loaded = runner.invoke(
        app, ["load", str(export), "--db", str(db), "--exported-at", "2024-06-01"]
    )
    assert loaded.exit_code == 0, loaded.output
    result = runner.invoke(app, ["summary", "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "holds no deals" in result.output


# --- output safety (3.13, CLI side) ------------------------------------------------------------
ESC_NAME = "Evil\x1b[2J\x1b]0;owned\x07 Corp"
ESC_STEP = "call\x1b[31m back\r\x9b"


@pytest.fixture
def hostile(tmp_path: Path) -> Path:
    export = tmp_path / "export"
    shutil.copytree(FIXTURES / "canonical", export)
    deals = pd.read_csv(export / "deals.csv", dtype=str)  # empty cells stay missing
    deals = deals.replace(
        {"Acme Metals": ESC_NAME, "send contract": ESC_STEP, "anna": "[bold]anna"}
    )
    (export / "deals.csv").unlink()
    deals.to_parquet(export / "deals.parquet")  # a CR would end a CSV line
    db = tmp_path / "h.duckdb"
    loaded = runner.invoke(
        app, ["load", str(export), "--db", str(db), "--exported-at", "2024-06-01"]
    )
    assert loaded.exit_code == 0, loaded.output
    return db


def test_safe_text_escapes_control_characters() -> None:
    assert safe_text(ESC_NAME) == "Evil\\x1b[2J\\x1b]0;owned\\x07 Corp"
    assert safe_text(ESC_STEP) == "call\\x1b[31m back\\r\\x9b"
    assert safe_text("two\nlines\tand tab, café ✓") == "two\nlines\tand tab, café ✓"


@pytest.mark.parametrize(
    "args",
    [
        ["signals", "--as-of", "2024-06-01"],
        ["signals", "--as-of", "2024-06-01", "--deal", "D1"],
        ["review", "--as-of", "2024-06-01", "--min-amount", "0"],
        ["hygiene", "--as-of", "2024-06-01"],
        ["signals", "--as-of", "2024-06-01", "--json"],
    ],
)
def test_control_characters_never_reach_the_terminal(hostile: Path, args: list[str]) -> None:
    result = runner.invoke(app, [*args, "--db", str(hostile)])
    assert result.exit_code == 0, result.output
    for raw in ("\x1b", "\x07", "\r", "\x9b"):
        assert raw not in result.output
    if "--deal" in args or args[0] == "review":  # tables wide enough to show the cells
        assert "[bold]anna" in result.output  # printed as typed, not read as rich markup
    if args[0] == "review":
        assert "\\x1b[31m" in result.output  # shown, escaped


def test_error_messages_are_escaped_too(place: Path) -> None:
    result = invoke(place, "metrics", "--as-of", "\x1b[2J", "--db", "{p}/s.duckdb")
    assert_one_line(result, 2, "--as-of")
    assert "\x1b" not in result.output
