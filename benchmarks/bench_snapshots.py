"""Benchmark: weekly training snapshots (signals + labels) for N deals over 3 years.

The dataset is generated once (``features.synthetic.generator.generate``) and pickled; each phase
then runs in its own child process so its peak RSS is its own (os.wait4). Speed is reported as
rows/s and as a ratio against a baseline measured in the same run on the same grid of (deal, Monday)
rows: the plain point-in-time rebuild ``deal_states(..., open_only=True)`` that the signals build
on (the one, strict, rule: tracked fields from dated history before the export). The ratio is
what the signal and label work costs on top of rebuilding the deal states.

    python benchmarks/bench_snapshots.py --deals 100000
"""

from __future__ import annotations

import argparse
import pickle
import sys
import tempfile
import textwrap
import time
from datetime import date
from pathlib import Path

from harness import run_child

START, END = date(2023, 1, 1), date(2025, 12, 31)

PHASES = {
    "baseline_deal_states": """
        from features.signals.pointintime import deal_states
        from features.signals.snapshots import snapshot_dates
        frame = deal_states(tables, snapshot_dates({start!r}, {end!r}), cfg, open_only=True)
    """,
    "snapshots": """
        from features.signals.snapshots import build_snapshots
        frame = build_snapshots(tables, cfg, start={start!r}, end={end!r})
    """,
}

RUNNER = """
import json, pickle, resource, time
from features.data.stages import load_stage_config
with open({data!r}, "rb") as fh:
    tables = pickle.load(fh)
cfg = load_stage_config()
loaded_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t0 = time.perf_counter()
{body}
seconds = time.perf_counter() - t0
print(json.dumps({{"seconds": seconds, "rows": len(frame), "columns": frame.shape[1],
                  "loaded_rss_mb": loaded_mb}}))
"""


def run_phase(name: str, data: str) -> dict:
    body = textwrap.dedent(PHASES[name].format(start=START.isoformat(), end=END.isoformat()))
    code = RUNNER.format(data=data, body=body)
    return run_child(name, code)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--deals", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from features.synthetic.generator import generate

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        tables = generate(args.deals, args.seed, start=START, end=END).tables
        data = str(Path(tmp) / "tables.pickle")
        with open(data, "wb") as fh:
            pickle.dump(tables, fh)
        sizes = {name: len(frame) for name, frame in tables.items()}
        del tables
        print(f"generated {args.deals:,} deals in {time.perf_counter() - t0:.1f}s: {sizes}")
        results = {name: run_phase(name, data) for name in PHASES}

    base, snap = results["baseline_deal_states"], results["snapshots"]
    for name, r in results.items():
        print(
            f"{name:>22}: {r['rows']:>10,} rows x {r['columns']:>3} cols in {r['seconds']:7.2f}s "
            f"= {r['rows'] / r['seconds']:>10,.0f} rows/s; peak RSS {r['peak_rss_mb']:,.0f} MB "
            f"(data loaded: {r['loaded_rss_mb']:,.0f} MB)"
        )
    assert snap["rows"] == base["rows"], "snapshots and the baseline must cover the same grid"
    print(
        f"snapshots / baseline time: {snap['seconds'] / base['seconds']:.2f}x; "
        f"extra peak memory: {snap['peak_rss_mb'] - base['peak_rss_mb']:+,.0f} MB"
    )


if __name__ == "__main__":
    main()
