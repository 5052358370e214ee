"""Benchmark: the pipeline reports (metrics, hygiene, review pack) for N deals at one date.

The dataset is generated once and pickled; each phase runs in its own child process so its peak
RSS is its own (os.wait4), and each phase runs its call ``--repeat`` times and keeps the fastest
(the machines here are shared). Speed is reported as a ratio against a baseline measured in the
same run: ``deal_states_as_of`` at the same date, the point-in-time rebuild every report starts
from. ``signals`` is every signal of the open deals (``compute_signals``); hygiene and the review
pack compute only the signals they read, on the states they built (``features.pipeline.facts``).

    python benchmarks/bench_pipeline.py --deals 30000
"""

from __future__ import annotations

import argparse
import pickle
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from harness import run_child

AS_OF = "2025-11-15"

PHASES = {
    "baseline_deal_states": """
        from features.signals.pointintime import deal_states_as_of
        run = lambda: len(deal_states_as_of(tables, as_of, cfg))
    """,
    "signals": """
        from features.signals import compute_signals
        run = lambda: len(compute_signals(tables, [as_of], cfg, open_only=True))
    """,
    "metrics": """
        from features.pipeline.metrics import compute_metrics
        run = lambda: compute_metrics(tables, cfg, as_of).open_pipeline.count
    """,
    "hygiene": """
        from features.pipeline.hygiene import hygiene_flags
        run = lambda: len(hygiene_flags(tables, cfg, as_of))
    """,
    "review": """
        from features.pipeline.review import review_pack
        run = lambda: review_pack(tables, cfg, as_of).deal_count
    """,
}

RUNNER = """
import json, pickle, time
from features.data.calendar import to_timestamp
from features.data.stages import load_stage_config
with open({data!r}, "rb") as fh:
    tables = pickle.load(fh)
cfg = load_stage_config()
as_of = to_timestamp({as_of!r})
{body}
times = []
for _ in range({repeat}):
    t0 = time.perf_counter()
    count = run()
    times.append(time.perf_counter() - t0)
print(json.dumps({{"seconds": min(times), "count": count}}))
"""


def run_phase(name: str, data: str, repeat: int) -> dict:
    body = textwrap.dedent(PHASES[name])
    return run_child(name, RUNNER.format(data=data, as_of=AS_OF, body=body, repeat=repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--deals", type=int, default=30_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from features.synthetic.generator import generate

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        tables = generate(args.deals, args.seed).tables
        data = str(Path(tmp) / "tables.pickle")
        with open(data, "wb") as fh:
            pickle.dump(tables, fh)
        sizes = {name: len(frame) for name, frame in tables.items()}
        del tables
        print(f"generated {args.deals:,} deals in {time.perf_counter() - t0:.1f}s: {sizes}")
        results = {name: run_phase(name, data, args.repeat) for name in PHASES}

    base = results["baseline_deal_states"]["seconds"]
    print(f"as of {AS_OF}, fastest of {args.repeat} runs per phase:")
    for name, r in results.items():
        print(
            f"{name:>22}: {r['seconds']:7.2f}s ({r['count']:,} rows/deals/flags); "
            f"{r['seconds'] / base:5.2f}x baseline time; peak RSS {r['peak_rss_mb']:,.0f} MB"
        )


if __name__ == "__main__":
    main()
