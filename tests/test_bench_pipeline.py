"""The pipeline reports benchmark still runs (tiny size; its figures are read, not asserted)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_bench_pipeline_runs():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_pipeline.py"), "--deals", "300",
         "--repeat", "1"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout  # fmt: skip
    for phase in ("baseline_deal_states", "signals", "metrics", "hygiene", "review"):
        assert phase in out
    assert "x baseline time" in out
