"""Every command runs on thin data: one matrix of commands x thin stores, through the real CLI.

Stores are real files built by ``pipecast load`` from small exports written here: an empty
export, a deals-only export whose amounts and expected close dates are blank, one without those
columns at all, and a small full export with a team and an owner of a single deal. Each scenario
adds a date: before the first deal, after the last, in a quarter in which nothing closes.
A command passes when it exits 0 (no "internal error"), and what it wrote can be read back.

Adding a command is one line in :data:`COMMANDS`; adding a case, one line in :data:`SCENARIOS`.
A case that fails in another engineer's code is marked ``xfail(strict=True)`` with the crash in
its reason, so the mark must go when the crash is fixed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner, Result

from serving.cli import app

DEALS = (
    "deal_id,account,owner,team,segment,product,created_at,amount,stage,expected_close_date,"
    "forecast_category,next_step,next_step_date,competitor,closed_at,outcome,loss_reason"
)
# A small full export. Nothing closes in 2024Q3 (A1 and A2 closed in Q2; the open deals are
# expected in 2025Q1 and later); team "solo" and owner "sam" have one deal each.
FULL = {
    "deals.csv": f"""{DEALS}
A1,Acme,ann,north,auto,press,2024-01-10,120000,closed_won,2024-05-31,closed,,,,2024-05-20,won,
A2,Bolt,ann,north,food,robot,2024-02-01,80000,closed_lost,2024-06-30,closed,,,X,2024-06-10,lost,price
A3,Crane,ann,north,auto,press,2024-09-01,200000,proposal,2025-02-28,best_case,quote,2025-02-01,,,open,
A4,Dyna,ann,north,energy,robot,2025-01-05,60000,needs_analysis,2025-12-31,pipeline,,,,,open,
S1,Elbe,sam,solo,energy,press,2024-03-01,50000,qualification,2025-03-31,pipeline,call,2024-04-01,,,open,
""",
    "stage_history.csv": """deal_id,stage,entered_at
A1,qualification,2024-01-10
A1,proposal,2024-03-01
A1,closed_won,2024-05-20
A2,qualification,2024-02-01
A2,closed_lost,2024-06-10
A3,qualification,2024-09-01
A3,proposal,2024-11-15
A4,qualification,2025-01-05
A4,needs_analysis,2025-02-01
S1,qualification,2024-03-01
""",
    "field_history.csv": """deal_id,field,old_value,new_value,changed_at
A3,expected_close_date,2024-12-31,2025-02-28,2024-12-01
A3,amount,150000,200000,2024-11-15
""",
    "activities.csv": """activity_id,deal_id,type,occurred_at
X1,A1,call,2024-02-01
X2,A3,meeting,2024-10-01
X3,A3,proposal,2024-11-20
X4,S1,call,2024-03-05
""",
    "stakeholders.csv": """deal_id,contact_id,role,added_at
A3,C1,decision_maker,2024-09-10
S1,C2,champion,2024-03-02
""",
    "targets.csv": """scope,scope_id,quarter,amount
company,company,2024Q3,300000
team,north,2025Q1,250000
owner,sam,2025Q1,40000
""",
}
# Deals-only exports (HubSpot style): no history, no amounts, no expected close dates.
DEALS_ONLY_BLANK = {
    "deals.csv": """deal_id,owner,team,created_at,stage,amount,expected_close_date,closed_at
H1,ann,north,2025-01-10,qualification,,,
H2,ann,north,2025-02-01,proposal,,,
H3,bob,south,2024-11-01,closed_won,,,2025-03-01
""",
}
DEALS_ONLY_NO_COLUMNS = {
    "deals.csv": """deal_id,owner,team,created_at,stage
H1,ann,north,2025-01-10,qualification
H2,ann,north,2025-02-01,proposal
""",
}
EXPORTS: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
    "empty": ({"deals.csv": DEALS + "\n"}, ()),
    "full": (FULL, ("--exported-at", "2025-06-30")),
    "deals_only": (DEALS_ONLY_BLANK, ("--exported-at", "2025-03-15")),
    "deals_only_no_columns": (DEALS_ONLY_NO_COLUMNS, ("--exported-at", "2025-03-15")),
}


@dataclass(frozen=True)
class Scenario:
    store: str
    as_of: str
    team: str | None = None
    owner: str | None = None

    @property
    def start(self) -> str:
        """Snapshot range start: a quarter before ``as_of``."""
        return (pd.Timestamp(self.as_of) - pd.Timedelta(days=90)).date().isoformat()

    def scope(self, *options: str) -> list[str]:
        """The scope options among those a command accepts (``--team``, ``--owner``)."""
        given = {"--team": self.team, "--owner": self.owner}
        return [a for o in options if given[o] is not None for a in (o, str(given[o]))]


def _json(result: Result, out: Path) -> None:
    json.loads(result.stdout)


def _png(result: Result, out: Path) -> None:
    assert (out / "health.png").read_bytes()[:4] == b"\x89PNG"


def _parquet(result: Result, out: Path) -> None:
    pd.read_parquet(out / "snapshots.parquet")


Args = Callable[[Scenario, Path], list[str]]
Check = Callable[[Result, Path], None] | None
TEAM_OWNER = ("--team", "--owner")


def dated(*argv: str, scope: tuple[str, ...] = TEAM_OWNER) -> Args:
    """``ARGV --as-of D [scope options]``; ``{out}`` in an argument is the test's output folder."""
    return lambda s, out: [a.format(out=out) for a in argv] + ["--as-of", s.as_of, *s.scope(*scope)]


def _snapshots(s: Scenario, out: Path) -> list[str]:
    return ["snapshots", "--start", s.start, "--end", s.as_of, "--out", f"{out}/snapshots.parquet"]


# command -> (its arguments for a scenario, a check of what it wrote)
COMMANDS: dict[str, tuple[Args, Check]] = {
    "summary": (lambda s, out: ["summary"], None),
    "metrics": (dated("metrics"), None),
    "metrics --json": (dated("metrics", "--json"), _json),
    "metrics --plot": (dated("metrics", "--plot", "{out}/health.png"), _png),
    "hygiene": (dated("hygiene"), None),
    "hygiene --json": (dated("hygiene", "--json"), _json),
    "review": (dated("review", "--min-amount", "0"), None),
    "review --json": (dated("review", "--json", "--min-amount", "0"), _json),
    "signals": (dated("signals", scope=("--owner",)), None),
    "signals --json": (dated("signals", "--json", scope=("--owner",)), _json),
    "snapshots": (_snapshots, _parquet),
    "audit": (lambda s, out: ["audit"], None),
    "audit --json": (lambda s, out: ["audit", "--json"], _json),
}

SCENARIOS: dict[str, Scenario] = {
    "empty store": Scenario("empty", "2025-06-15"),
    "deals-only, after the export": Scenario("deals_only", "2025-06-15"),
    "deals-only, before the export": Scenario("deals_only", "2025-02-15"),
    "deals-only without amount and close date columns": Scenario(
        "deals_only_no_columns", "2025-06-15"
    ),
    "before the first deal": Scenario("full", "2023-06-30"),
    "after the last deal": Scenario("full", "2031-03-01"),
    "quarter in which nothing closes": Scenario("full", "2024-08-15"),
    "team with a single deal": Scenario("full", "2025-01-20", team="solo"),
    "owner with a single deal": Scenario("full", "2025-01-20", owner="sam"),
}

# Crashes in code this module's author does not own; the reason names the crash.
KNOWN_CRASHES: dict[tuple[str, str], str] = {}


def _cases() -> list[Any]:
    cases: list[Any] = []
    for command in COMMANDS:
        for name in SCENARIOS:
            marks = []
            if (command, name) in KNOWN_CRASHES:
                marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_CRASHES[(command, name)]))
            cases.append(pytest.param(command, name, marks=marks, id=f"{command} | {name}"))
    return cases


@pytest.fixture(scope="session")
def thin_store(tmp_path_factory: pytest.TempPathFactory, load_store) -> Callable[[str], Path]:
    """``thin_store(name)``: the store loaded from export ``name`` (built once per session)."""
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            files, options = EXPORTS[name]
            folder = tmp_path_factory.mktemp(name)
            for file, text in files.items():
                (folder / file).write_text(text)
            built[name] = load_store(folder, *options)
        return built[name]

    return get


@pytest.mark.parametrize(("command", "scenario"), _cases())
def test_command_runs_on_thin_data(
    command: str, scenario: str, thin_store: Callable[[str], Path], tmp_path: Path
) -> None:
    case = SCENARIOS[scenario]
    db = thin_store(case.store)
    args, check = COMMANDS[command]
    result = CliRunner().invoke(app, [*args(case, tmp_path), "--db", str(db)])
    assert "internal error" not in result.output, result.output
    assert result.exit_code == 0, result.output
    if check is not None:
        check(result, tmp_path)
