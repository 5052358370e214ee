"""Load test of the HTTP API: a real ``pipecast serve`` on loopback, each endpoint vs a trivial one.

Builds a temporary store (generated deals), trains a champion with a fast recipe into a private
MLflow (SQLite), creates a RevOps key, starts the server on a free port, warms every endpoint, then
drives each with a bounded load (at most ``--requests`` requests and ``--seconds`` seconds per
endpoint, ``--concurrency`` threads). ``GET /healthz`` is measured before and after the others, in
the same run, and every figure is also given as a ratio to it. Times are printed, never asserted.
The single-deal what-if is measured twice: every client sending the same body, and each request
another deal (``varied``): concurrent what-ifs of other deals share a scoring call, identical
ones one answer (``serving.api.batching``).

    .venv/bin/python benchmarks/bench_api.py --deals 3000 --json bench-api.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from serving.api.launch import PIPECAST, ServerNotReady, launch

# The fast recipe: this measures serving, not model quality.
RECIPE = {
    "win": {"n_estimators": 40, "learning_rate": 0.1},
    "slip": {"n_estimators": 40, "learning_rate": 0.1},
}
# Issue 11's targets.
SCORE_RPS_TARGET = 0.40  # single-deal scoring throughput / trivial throughput, at least
FORECAST_P99_TARGET = 2.0  # cached forecast p99 / trivial p99, at most


@dataclass(frozen=True)
class Call:
    name: str
    method: str
    url: str
    body: dict[str, Any] | None = None
    # Bodies sent in turn instead of ``body`` (request i sends bodies[i % len(bodies)]).
    bodies: tuple[dict[str, Any], ...] = ()

    def body_of(self, i: int) -> dict[str, Any] | None:
        return self.bodies[i % len(self.bodies)] if self.bodies else self.body


@dataclass
class Row:
    name: str
    requests: int
    failed: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    rps_ratio: float = 0.0
    p50_ratio: float = 0.0
    p99_ratio: float = 0.0


def _run(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        [PIPECAST, *args], env={**os.environ, **env}, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"pipecast {args[0]} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def setup(root: Path, deals: int, seed: int) -> tuple[dict[str, str], str]:
    """A store, a champion and a RevOps key under ``root``; the server's env and the key."""
    db = root / "store.duckdb"
    env = {
        "PIPECAST_DB": str(db),
        "PIPECAST_KEYS_FILE": str(root / "keys.json"),
        "PIPECAST_JOBS_DIR": str(root / "jobs"),
        "PIPECAST_MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "PIPECAST_MLFLOW_ARTIFACTS": str(root / "mlruns"),
    }
    _run(
        ["generate", "--deals", str(deals), "--seed", str(seed), "--out", str(root / "export")], env
    )
    _run(["load", str(root / "export"), "--db", str(db)], env)
    (root / "recipe.json").write_text(json.dumps(RECIPE))
    _run(["train", "--db", str(db), "--config", str(root / "recipe.json")], env)
    out = _run(
        ["keys", "create", "--role", "revops", "--keys-file", env["PIPECAST_KEYS_FILE"]], env
    )
    return env, out.strip().splitlines()[0]


@contextmanager
def server(env: dict[str, str], log: Path, timeout: float = 120.0) -> Iterator[tuple[str, int]]:
    """``pipecast serve`` (one worker) on a free loopback port; yield its URL and pid once ready
    (the champion loaded and the store reachable)."""
    try:
        with launch(env, ready="/readyz", timeout=timeout, log=log) as (base, pid):
            yield base, pid
    except ServerNotReady as err:  # raised while starting only
        raise SystemExit(f"{err}; see {log}") from None


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident set (``VmHWM``), or None where /proc is not readable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        return None
    return None


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: p99 of 30 samples is the largest but zero)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil
    return ordered[int(rank) - 1]


def load(
    base: str, headers: dict[str, str], call: Call, *, requests: int, seconds: float, threads: int
) -> tuple[list[float], int, float]:
    """Drive ``call`` from ``threads`` clients until ``requests`` are sent or ``seconds`` pass."""
    latencies: list[float] = []
    failed = 0
    issued = 0
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def take() -> int | None:
        nonlocal issued
        with lock:
            if issued >= requests or time.monotonic() >= stop_at:
                return None
            issued += 1
            return issued - 1

    def worker() -> None:
        nonlocal failed
        with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
            while (i := take()) is not None:
                t0 = time.perf_counter()
                try:
                    r = client.request(call.method, call.url, json=call.body_of(i))
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                took = time.perf_counter() - t0
                with lock:
                    latencies.append(took)
                    failed += not ok

    started = time.perf_counter()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return latencies, failed, time.perf_counter() - started


def row(name: str, runs: list[tuple[list[float], int, float]]) -> Row:
    latencies = [x for lat, _, _ in runs for x in lat]
    seconds = sum(s for _, _, s in runs)
    return Row(
        name=name,
        requests=len(latencies),
        failed=sum(f for _, f, _ in runs),
        seconds=seconds,
        rps=len(latencies) / seconds if seconds else 0.0,
        p50_ms=1000 * percentile(latencies, 50),
        p99_ms=1000 * percentile(latencies, 99),
    )


def calls(base: str, headers: dict[str, str]) -> tuple[list[Call], list[str]]:
    """The measured calls (after the trivial one) and notes about what was left out."""
    with httpx.Client(base_url=base, headers=headers, timeout=120) as c:
        paths = c.get("/openapi.json").json()["paths"]
        scores = c.get("/v1/deals/scores")
        scores.raise_for_status()
    ids = [d["deal_id"] for d in scores.json()["deals"]]
    many = min(100, len(ids))
    notes = []
    if many < 100:
        notes.append(f"only {len(ids)} open deals: the many-deal what-if sends {many}")

    def what_if(n: int) -> dict[str, Any]:
        return {"deals": [{"deal_id": d, "add_stakeholders": ["champion"]} for d in ids[:n]]}

    # The same body from every client (identical concurrent questions are answered once, see
    # serving.api.batching), and one deal per request taken in turn from the open deals.
    varied = tuple({"deals": [{"deal_id": d, "add_stakeholders": ["champion"]}]} for d in ids[:200])
    out = [
        Call("POST /v1/score (1 deal)", "POST", "/v1/score", what_if(1)),
        Call("POST /v1/score (1 deal, varied)", "POST", "/v1/score", bodies=varied),
        Call(f"POST /v1/score ({many} deals)", "POST", "/v1/score", what_if(many)),
        Call("GET /v1/deals/scores", "GET", "/v1/deals/scores"),
    ]
    forecast = paths.get("/v1/forecast", {}).get("get")
    required = [p["name"] for p in (forecast or {}).get("parameters", []) if p.get("required")]
    if forecast is None:
        notes.append("GET /v1/forecast is not in this server's OpenAPI spec: not measured")
    elif required:
        notes.append(f"GET /v1/forecast requires {required}: not measured (no defaults known)")
    else:
        out.append(Call("GET /v1/forecast (cached)", "GET", "/v1/forecast"))
    return out, notes


def bench(
    base: str, key: str, *, requests: int, seconds: float, threads: int, warm: int = 3
) -> tuple[list[Row], list[str]]:
    headers = {"Authorization": f"Bearer {key}"}
    trivial = Call("GET /healthz", "GET", "/healthz")
    measured, notes = calls(base, headers)
    # Warm-up: the first call of each fills caches (snapshots, scores, a forecast) and is not timed.
    with httpx.Client(base_url=base, headers=headers, timeout=300) as c:
        for call in [trivial, *measured]:
            for i in range(warm):
                r = c.request(call.method, call.url, json=call.body_of(i))
                if r.status_code != 200:
                    raise SystemExit(f"{call.name} answered {r.status_code}: {r.text[:500]}")

    def run(call: Call) -> tuple[list[float], int, float]:
        return load(base, headers, call, requests=requests, seconds=seconds, threads=threads)

    # The trivial endpoint before and after the rest (half the budget each), pooled: drift in the
    # machine's load during the run shows in both.
    def half() -> tuple[list[float], int, float]:
        return load(
            base,
            headers,
            trivial,
            requests=max(1, requests // 2),
            seconds=seconds / 2,
            threads=threads,
        )

    before = half()
    others = [(call.name, run(call)) for call in measured]
    after = half()
    base_row = row(trivial.name, [before, after])
    rows = [base_row, *(row(name, [r]) for name, r in others)]
    for each in rows:
        each.rps_ratio = each.rps / base_row.rps
        each.p50_ratio = each.p50_ms / base_row.p50_ms
        each.p99_ratio = each.p99_ms / base_row.p99_ms
    return rows, notes


def targets(rows: list[Row]) -> dict[str, dict[str, Any]]:
    by = {r.name: r for r in rows}
    out: dict[str, dict[str, Any]] = {}
    one = by["POST /v1/score (1 deal)"]
    out["single-deal scoring rps >= 40% of trivial"] = {
        "value": one.rps_ratio,
        "met": one.rps_ratio >= SCORE_RPS_TARGET,
    }
    fc = by.get("GET /v1/forecast (cached)")
    out["cached forecast p99 <= 2x trivial p99"] = {
        "value": fc.p99_ratio if fc else None,
        "met": (fc.p99_ratio <= FORECAST_P99_TARGET) if fc else None,
    }
    return out


def report(
    rows: list[Row], goals: dict[str, dict[str, Any]], notes: list[str], rss: float | None
) -> None:
    head = (
        f"{'endpoint':<32} {'requests':>8} {'failed':>6} {'req/s':>8} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'rps/triv':>8} {'p50/triv':>8} {'p99/triv':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r.name:<32} {r.requests:>8} {r.failed:>6} {r.rps:>8.1f} {r.p50_ms:>8.1f} "
            f"{r.p99_ms:>8.1f} {r.rps_ratio:>8.3f} {r.p50_ratio:>8.1f} {r.p99_ratio:>8.1f}"
        )
    print()
    for name, goal in goals.items():
        if goal["met"] is None:
            verdict = "not measured"
        else:
            verdict = f"{goal['value']:.3f}: {'met' if goal['met'] else 'NOT met'}"
        print(f"target {name}: {verdict}")
    for note in notes:
        print(f"note: {note}")
    if rss is not None:
        print(f"server peak RSS: {rss:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--deals", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--requests", type=int, default=400, help="at most, per endpoint")
    parser.add_argument("--seconds", type=float, default=20.0, help="at most, per endpoint")
    parser.add_argument("--concurrency", type=int, default=4, help="client threads")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        env, key = setup(root, args.deals, args.seed)
        print(f"{args.deals} deals: store, champion and key in {time.perf_counter() - t0:.0f} s")
        with server(env, root / "server.log") as (base, pid):
            rows, notes = bench(
                base,
                key,
                requests=args.requests,
                seconds=args.seconds,
                threads=args.concurrency,
            )
            rss = peak_rss_mb(pid)
    goals = targets(rows)
    print(
        f"{args.concurrency} client threads, at most {args.requests} requests or "
        f"{args.seconds:g} s per endpoint; one server worker"
    )
    report(rows, goals, notes, rss)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "deals": args.deals,
                    "requests": args.requests,
                    "seconds": args.seconds,
                    "concurrency": args.concurrency,
                    "rows": [asdict(r) for r in rows],
                    "targets": goals,
                    "notes": notes,
                    "server_peak_rss_mb": rss,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
