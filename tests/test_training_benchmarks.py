"""The training and scoring benchmark scripts still run (tiny sizes; figures are read by people)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["bench_training.py", "--rows", "9000"], "pipecast / baseline time"),
        (["bench_scoring.py", "--deals", "800", "--rows", "500", "--repeat", "1"], "x raw"),
    ],
)
def test_training_benchmark_scripts_run(args: list[str], expect: str) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    assert expect in out
