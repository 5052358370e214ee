"""Benchmark: batch scoring throughput, with and without reasons, against raw Booster.predict.

A model is fitted once on a generated CRM; then the same batch of snapshot rows is scored three
ways, each timed as the best of ``--repeat`` runs in this process:

- ``raw``: ``Booster.predict`` of the win model on rows already encoded (no encoding, no
  calibration, no slip model): the floor;
- ``scores``: :meth:`FittedModels.predict_win` and ``predict_quarter`` on the snapshot rows
  (encoding, calibrated P(win), calibrated P(closes won this quarter));
- ``scores+reasons``: the same plus per-prediction contributions (``pred_contrib``) grouped into
  reasons and rendered in words.

    python benchmarks/bench_scoring.py --deals 20000 --rows 50000
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def best_of(repeat: int, fn) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--deals", type=int, default=20_000)
    parser.add_argument("--rows", type=int, default=50_000, help="batch size to score")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parents[1]))

    from features.data.stages import load_stage_config
    from features.signals.snapshots import data_end
    from features.synthetic.generator import generate
    from training.calibration import base_model
    from training.config import make_config
    from training.datasets import first_snapshot_date, snapshot_rows
    from training.fitting import fit_on_rows, resolve_custom
    from training.scoring import _reason_columns

    t0 = time.perf_counter()
    tables = generate(args.deals, args.seed).tables
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
    models = fit_on_rows(rows, tables, cfg, cutoff=end, config=recipe)
    batch = rows.sample(min(args.rows, len(rows)), random_state=args.seed).reset_index(drop=True)
    took = time.perf_counter() - t0
    print(f"fitted on {args.deals:,} deals in {took:.0f}s; batch {len(batch):,} rows")

    win = base_model(models.win)
    encoded = win.encoder_.transform(batch)
    booster = win.model_.booster_

    def scores() -> None:
        p = models.predict_win(batch)
        models.predict_quarter(batch, p)

    def with_reasons() -> None:
        scores()
        _reason_columns(models, batch, cfg)

    timings = {
        "raw Booster.predict": best_of(args.repeat, lambda: booster.predict(encoded)),
        "scores": best_of(args.repeat, scores),
        "scores+reasons": best_of(args.repeat, with_reasons),
    }
    raw = timings["raw Booster.predict"]
    for name, seconds in timings.items():
        print(
            f"{name:>20}: {len(batch) / seconds:>10,.0f} rows/s ({seconds:6.2f}s); "
            f"{seconds / raw:6.1f}x raw"
        )


if __name__ == "__main__":
    main()
