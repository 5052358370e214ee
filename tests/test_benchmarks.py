"""The benchmark scripts still run (tiny sizes; their figures are read by people, not asserted)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize(
    ("script", "expect"),
    [("bench_generate_load.py", "ratio to baseline"), ("bench_snapshots.py", "/ baseline time")],
)
def test_benchmark_script_runs(script: str, expect: str):
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--deals", "300"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    assert expect in out
