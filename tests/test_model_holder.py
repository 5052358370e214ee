"""The server's model holder and job files, without MLflow: swaps, failures, dead job processes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from features.errors import NotFoundError
from serving.api import jobs
from serving.api.models import ModelHolder, Versions
from serving.api.state import ResultCache


class FakeModels:
    """Stands in for FittedModels: carries the versions it was 'loaded' at."""

    def __init__(self, versions: Versions) -> None:
        self.versions = dict(versions)


def _holder(registry: dict[str, Any], loads: list[Versions]) -> ModelHolder:
    def resolve() -> Versions:
        if registry.get("down"):
            raise ConnectionError("registry down")
        return dict(registry["versions"])

    def load(versions: Versions) -> Any:
        if registry.get("broken"):
            raise OSError("artifact missing")
        time.sleep(registry.get("delay", 0))
        loads.append(dict(versions))
        return FakeModels(versions)

    return ModelHolder(resolve=resolve, load=load, refresh_seconds=0)


def test_no_champion_is_a_stated_fallback_then_the_first_champion_loads() -> None:
    registry: dict[str, Any] = {"versions": {"win_probability": None, "slip": None}}
    loads: list[Versions] = []
    holder = _holder(registry, loads)
    holder.start()
    served = holder.current()
    assert served.models is None and "no champion" in (served.fallback_reason or "")
    assert type(served.scorer).__name__ == "FallbackScorer"
    registry["versions"] = {"win_probability": "1", "slip": "1"}
    assert holder.refresh() is True
    assert holder.current().versions == {"win_probability": "1", "slip": "1"}
    assert holder.refresh() is False and len(loads) == 1  # unchanged alias: nothing reloaded


def test_a_request_keeps_its_models_through_a_swap() -> None:
    registry: dict[str, Any] = {"versions": {"win_probability": "1", "slip": "1"}}
    holder = _holder(registry, [])
    holder.start()
    taken = holder.current()  # a request starts
    registry.update(versions={"win_probability": "2", "slip": "2"}, delay=0.2)
    swapper = threading.Thread(target=holder.refresh)
    swapper.start()
    # While the new versions load, requests still get the old set, whole.
    during = holder.current()
    assert during.versions == {"win_probability": "1", "slip": "1"}
    swapper.join()
    assert taken.models.versions == {"win_probability": "1", "slip": "1"}  # type: ignore[union-attr]
    after = holder.current()
    assert after.versions == {"win_probability": "2", "slip": "2"}
    assert after.models.versions == after.versions  # type: ignore[union-attr]
    assert after.key != taken.key  # cached answers of the old models are not reused


def test_a_failed_load_or_registry_keeps_the_old_models() -> None:
    registry: dict[str, Any] = {"versions": {"win_probability": "1", "slip": "1"}}
    holder = _holder(registry, [])
    holder.start()
    registry.update(versions={"win_probability": "2", "slip": "2"}, broken=True)
    assert holder.refresh() is False
    assert holder.current().versions["win_probability"] == "1"
    assert "artifact missing" in (holder.last_error or "")
    registry.update(down=True)
    assert holder.refresh() is False and holder.current().models is not None
    assert "registry down" in (holder.last_error or "")
    registry.update(down=False, broken=False)
    assert holder.refresh() is True and holder.last_error is None


def test_the_background_thread_picks_up_a_moved_alias() -> None:
    registry: dict[str, Any] = {"versions": {"win_probability": "1", "slip": "1"}}
    holder = _holder(registry, [])
    holder.refresh_seconds = 0.05
    holder.start()
    try:
        registry["versions"] = {"win_probability": "3", "slip": "2"}
        deadline = time.monotonic() + 5
        while holder.current().versions["win_probability"] != "3":
            assert time.monotonic() < deadline, "alias move not picked up"
            time.sleep(0.02)
    finally:
        holder.stop()


def test_job_ids_are_checked_before_touching_files(tmp_path: Path) -> None:
    for bad in ("../../etc", "x" * 32, "0" * 31):
        with pytest.raises(NotFoundError):
            jobs.read_status(tmp_path, bad)
    with pytest.raises(NotFoundError):
        jobs.read_status(tmp_path, "0" * 32)


def test_a_job_whose_process_died_is_reported_failed(tmp_path: Path) -> None:
    job_id = "a" * 32
    folder = tmp_path / job_id
    folder.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    status = {"id": job_id, "state": "running", "pid": dead.pid, "error": None}
    (folder / "status.json").write_text(json.dumps(status))
    got = jobs.read_status(tmp_path, job_id)
    assert got["state"] == "failed" and "exited without" in got["error"]
    assert jobs.running(tmp_path) is None


def test_job_progress_never_goes_back_across_the_two_fits() -> None:
    tracker = jobs.Progress()
    ticks = [("snapshots", 5, 10), ("snapshots", 10, 10), ("fitting", 1, 4), ("fitting", 4, 4)]
    ticks += [("fitting", 1, 4), ("fitting", 4, 4), ("mlflow", 0, 1), ("mlflow", 1, 1)]
    seen = [tracker.update(*t) for t in ticks]
    assert seen == sorted(seen) and seen[-1] == 1.0
    assert seen[4] > seen[3]  # the second fit (the model to serve) counts on from the first


def test_simultaneous_retrain_requests_start_one_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checking for a running retrain and starting one happen under one lock: of several
    requests arriving together, one starts a job and the others are told it is running."""
    check = jobs.running

    def slow_check(folder: Path) -> str | None:
        found = check(folder)
        time.sleep(0.2)  # widen the window between the check and the start
        return found

    monkeypatch.setattr(jobs, "running", slow_check)
    spec = {"db": str(tmp_path / "missing.duckdb"), "tracking_uri": "sqlite:///unused.db"}
    gate = threading.Barrier(6)
    started: list[str] = []
    refused: list[str] = []

    def request() -> None:
        gate.wait()
        try:
            started.append(jobs.start_retrain_if_idle(tmp_path / "jobs", spec)["id"])
        except jobs.RetrainRunning as busy:
            refused.append(busy.job_id)

    threads = [threading.Thread(target=request) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(started) == 1 and refused == [started[0]] * 5
    deadline = time.monotonic() + 120
    while jobs.running(tmp_path / "jobs"):  # the job fails (no store) and frees the slot
        assert time.monotonic() < deadline, "the job never finished"
        time.sleep(0.1)
    assert jobs.read_status(tmp_path / "jobs", started[0])["state"] == "failed"


def test_requests_arriving_together_compute_an_answer_once() -> None:
    cache = ResultCache()
    gate = threading.Barrier(4)
    calls: list[int] = []
    answers: list[int] = []

    def compute() -> int:
        calls.append(1)
        time.sleep(0.3)  # a slow first computation (a page after a load)
        return 42

    def request() -> None:
        gate.wait()
        answers.append(cache.get_or_compute(("pipeline", 1), compute))

    threads = [threading.Thread(target=request) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [42] * 4 and len(calls) == 1

    def broken() -> int:
        raise RuntimeError("store went away")

    with pytest.raises(RuntimeError):
        cache.get_or_compute("failing", broken)
    assert "failing" not in cache and cache.get_or_compute("failing", lambda: 7) == 7
