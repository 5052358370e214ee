"""Benchmark: generate N deals, then load them into DuckDB (deals/s, peak memory).

Each phase runs in its own child process so its peak RSS is its own (os.wait4). Speed is also
reported as a ratio against a baseline measured in the same run: DuckDB copying the same Parquet
files straight into tables with no mapping, validation or history logic (the I/O floor).

    python benchmarks/bench_generate_load.py --deals 100000
"""

from __future__ import annotations

import argparse
import tempfile
import textwrap
from pathlib import Path

from harness import run_child

PHASES = {
    "generate": """
        from features.synthetic.generator import generate, write_dataset
        data = generate({n}, seed=1)
        write_dataset(data, Path({data!r}), "parquet")
        rows = {{name: len(f) for name, f in data.tables.items()}}
    """,
    "baseline_copy": """
        import duckdb
        con = duckdb.connect({db!r})
        rows = {{}}
        for f in sorted(Path({data!r}).glob("*.parquet")):
            con.execute(f"create table {{f.stem}} as select * from read_parquet('{{f}}')")
            rows[f.stem] = con.execute(f"select count(*) from {{f.stem}}").fetchone()[0]
        con.close()
    """,
    "load": """
        from features.data.importer import read_export
        from features.data.store import Store
        with Store({db!r}, read_only=False) as store:
            result = read_export({data!r}, known_deal_ids=store.deal_ids())
            store.load(result.tables)
            rows = store.counts()
    """,
}

RUNNER = """
import json, time
from pathlib import Path
t0 = time.perf_counter()
{body}
print(json.dumps({{"seconds": time.perf_counter() - t0, "rows": rows}}))
"""


def run_phase(name: str, **fmt: object) -> dict:
    code = RUNNER.format(body=textwrap.indent(textwrap.dedent(PHASES[name].format(**fmt)), ""))
    return run_child(name, code)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deals", type=int, default=100_000)
    args = parser.parse_args()
    n = args.deals
    with tempfile.TemporaryDirectory() as tmp:
        data = str(Path(tmp) / "data")
        gen = run_phase("generate", n=n, data=data)
        base = run_phase("baseline_copy", db=str(Path(tmp) / "base.duckdb"), data=data)
        load = run_phase("load", db=str(Path(tmp) / "x.duckdb"), data=data)
        reload = run_phase("load", db=str(Path(tmp) / "x.duckdb"), data=data)
    total_rows = sum(gen["rows"].values())
    print(f"deals: {n:,}  rows in all tables: {total_rows:,}  ({gen['rows']})")
    print(
        f"generate : {gen['seconds']:7.1f} s  {n / gen['seconds']:9,.0f} deals/s  "
        f"peak RSS {gen['peak_rss_mb']:7.0f} MB"
    )
    print(
        f"baseline : {base['seconds']:7.1f} s  {n / base['seconds']:9,.0f} deals/s  "
        f"peak RSS {base['peak_rss_mb']:7.0f} MB  (raw DuckDB copy of the Parquet files)"
    )
    load_ratio = load["seconds"] / base["seconds"]
    reload_ratio = reload["seconds"] / base["seconds"]
    print(
        f"load     : {load['seconds']:7.1f} s  {n / load['seconds']:9,.0f} deals/s  "
        f"peak RSS {load['peak_rss_mb']:7.0f} MB  ratio to baseline {load_ratio:.1f}x"
    )
    print(
        f"re-load  : {reload['seconds']:7.1f} s  (idempotent; rows unchanged: "
        f"{reload['rows'] == load['rows']})  ratio to baseline {reload_ratio:.1f}x"
    )


if __name__ == "__main__":
    main()
