"""The API load benchmark runs end to end at a tiny size and reports sane figures.

Its thresholds (issue 11's targets) are read by people, not asserted: times depend on the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]

pytestmark = pytest.mark.slow  # a real server, a store and a trained champion: about a minute


def test_api_benchmark_runs_and_reports_every_endpoint(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_api.py"),
            *("--deals", "400", "--requests", "20", "--seconds", "5", "--concurrency", "2"),
            *("--json", str(out)),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    rows = {r["name"]: r for r in report["rows"]}
    names = list(rows)
    assert names[0] == "GET /healthz"
    assert "POST /v1/score (1 deal)" in rows and "GET /v1/deals/scores" in rows
    # The many-deal what-if sends up to 100 deals (fewer when the tiny store has fewer open).
    assert any(n.startswith("POST /v1/score (") and n != "POST /v1/score (1 deal)" for n in names)
    forecast = "GET /v1/forecast (cached)" in rows
    assert forecast or any("/v1/forecast" in n for n in report["notes"])
    for r in rows.values():
        assert r["failed"] == 0, r
        assert r["requests"] > 0, r
        assert 0 < r["p50_ms"] <= r["p99_ms"], r
        assert r["rps"] > 0 and r["rps_ratio"] > 0 and r["p99_ratio"] > 0, r
    assert rows["GET /healthz"]["rps_ratio"] == 1.0
    targets = report["targets"]
    assert set(targets) == {
        "single-deal scoring rps >= 40% of trivial",
        "cached forecast p99 <= 2x trivial p99",
    }
    assert isinstance(targets["single-deal scoring rps >= 40% of trivial"]["met"], bool)
    assert (targets["cached forecast p99 <= 2x trivial p99"]["met"] is None) == (not forecast)
    # The printed table carries the same rows and says whether each target is met.
    for name in names:
        assert name in done.stdout
    assert "target single-deal scoring" in done.stdout
    if report["server_peak_rss_mb"] is not None:
        assert report["server_peak_rss_mb"] > 0
