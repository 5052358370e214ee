"""Benchmark: training time and peak memory for ~100k and ~1M snapshot rows.

For each size a CRM is generated with enough deals to give about that many weekly snapshot rows,
the snapshots are built once and pickled, and each phase runs in its own child process (its own
peak RSS, read with os.wait4):

- ``baseline``: a plain, untuned ``lightgbm.LGBMClassifier()`` (100 trees, 2 threads) fitted on
  the same encoded rows with the data-end labels: what "just run LightGBM" costs;
- ``pipecast``: :func:`training.fitting.fit_on_rows` with the default recipe: labels at the
  cut-off with censoring weights, the win model (800 trees) fitted on every row and once more
  before each of the three calibration folds (its out-of-time calibration), the slip model the
  same way on (snapshot, horizon) pairs.

The ratio pipecast / baseline is what the recipe costs over a bare model on the same rows.

    python benchmarks/bench_training.py --rows 100000 1000000
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

ROWS_PER_DEAL = 16.8  # weekly snapshot rows per generated deal over 2022-2025 (measured)

PHASES = {
    "baseline": """
        import lightgbm as lgb
        from training.datasets import labels_at
        from training.features import SnapshotEncoder
        lab = labels_at(rows, tables.deals, end, horizon_days=365)
        keep = lab["weight"].to_numpy() > 0
        X = SnapshotEncoder().fit(rows[keep]).transform(rows[keep])
        t0 = time.perf_counter()
        lgb.LGBMClassifier(n_jobs=2, verbose=-1).fit(X, lab["won_h"].to_numpy()[keep])
        seconds = time.perf_counter() - t0
        fitted_rows = int(keep.sum())
    """,
    "pipecast": """
        from training.config import make_config
        from training.fitting import fit_on_rows
        t0 = time.perf_counter()
        m = fit_on_rows(rows, tables, cfg, cutoff=end, config=make_config())
        seconds = time.perf_counter() - t0
        fitted_rows = m.train_rows["fit"]
    """,
}

RUNNER = """
import json, os, pickle, resource, time
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from features.data.stages import load_stage_config
with open({data!r}, "rb") as fh:
    tables, rows, end = pickle.load(fh)
cfg = load_stage_config()
loaded_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
{body}
print(json.dumps({{"seconds": seconds, "rows": len(rows), "fitted_rows": fitted_rows,
                  "loaded_rss_mb": loaded_mb}}))
"""


def prepare(n_rows: int, seed: int, folder: Path) -> tuple[str, int, float]:
    """Generate, build the snapshots once, pickle them; returns (path, deals, seconds)."""
    from features.data.stages import load_stage_config
    from features.signals.snapshots import data_end
    from features.synthetic.generator import generate
    from training.config import make_config
    from training.datasets import first_snapshot_date, snapshot_rows
    from training.fitting import resolve_custom

    deals = max(500, int(n_rows / ROWS_PER_DEAL))
    t0 = time.perf_counter()
    tables = generate(deals, seed).tables
    cfg, recipe = load_stage_config(), make_config()
    end = data_end(tables)
    rows = snapshot_rows(
        tables,
        cfg,
        start=first_snapshot_date(tables, recipe),
        end=end,
        config=recipe,
        custom=resolve_custom(tables, recipe),
    )
    path = folder / f"rows_{n_rows}.pickle"
    with open(path, "wb") as fh:
        pickle.dump((tables, rows, end), fh)
    return str(path), deals, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parents[1]))
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.rows:
            data, deals, prep = prepare(n, args.seed, Path(tmp))
            print(f"~{n:,} rows: {deals:,} deals generated and snapshotted in {prep:.1f}s")
            results = {}
            for name, body in PHASES.items():
                code = RUNNER.format(data=data, body=textwrap.dedent(body))
                results[name] = run_child(name, code)
            for name, r in results.items():
                print(
                    f"{name:>10}: {r['rows']:>9,} snapshot rows ({r['fitted_rows']:,} labelled) "
                    f"in {r['seconds']:7.1f}s; peak RSS {r['peak_rss_mb']:,.0f} MB "
                    f"(data loaded: {r['loaded_rss_mb']:,.0f} MB)"
                )
            base, ours = results["baseline"], results["pipecast"]
            print(
                f"pipecast / baseline time: {ours['seconds'] / base['seconds']:.1f}x; "
                f"extra peak memory: {ours['peak_rss_mb'] - base['peak_rss_mb']:+,.0f} MB"
            )


if __name__ == "__main__":
    main()
