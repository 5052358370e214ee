"""Background jobs (model retraining) in their own process, with their status in files.

``POST /v1/models/retrain`` writes ``JOBS_DIR/<id>/spec.json`` and starts
``python -m serving.api.jobs JOBS_DIR/<id>``; that process trains (``training.train.train``),
logs and registers in MLflow (the promotion gate decides the aliases) and keeps
``status.json`` up to date from the training's progress callbacks. Any worker of the server
answers ``GET /v1/jobs/{id}`` from the file. A separate process keeps the CPU-heavy fit off the
request threads, and a crash in it cannot take the server down; a failed run registers nothing
(aliases move only at the very end of :func:`training.tracking.log_and_register`), so the served
models stay as they were.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from features.errors import NotFoundError, PipecastError

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
STATES = ("queued", "running", "succeeded", "failed")
# Phases of a retrain in the order they run (the fit runs twice: the backtest, then the model to
# serve), so progress can be told as a fraction of the whole job.
PHASES = ("snapshots", "fitting", "fitting", "mlflow")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _write(path: Path, body: dict[str, Any]) -> None:
    """Replace ``path`` in one rename, so a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".status-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(body, fh, default=str)
    os.replace(tmp, path)


def job_dir(jobs_dir: Path, job_id: str) -> Path:
    if not JOB_ID.match(job_id):  # also keeps a crafted id out of the file system
        raise NotFoundError(f"unknown job {job_id!r}")
    folder = jobs_dir / job_id
    if not (folder / "status.json").exists():
        raise NotFoundError(f"unknown job {job_id!r}")
    return folder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A finished child that nobody reaped yet is a zombie: not alive for our purposes.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def read_status(jobs_dir: Path, job_id: str) -> dict[str, Any]:
    """A job's status; a running job whose process is gone is reported as failed."""
    folder = job_dir(jobs_dir, job_id)
    status: dict[str, Any] = json.loads((folder / "status.json").read_text())
    pid = status.get("pid")
    if status["state"] in ("queued", "running") and pid and not _alive(int(pid)):
        time.sleep(0.2)  # the process may have written its last status just now
        status = json.loads((folder / "status.json").read_text())
        if status["state"] in ("queued", "running"):
            status["state"] = "failed"
            status["error"] = "the job's process exited without reporting a result"
    return status


def running(jobs_dir: Path) -> str | None:
    """The id of a retrain still running, if any (one at a time: the machine is shared)."""
    if not jobs_dir.exists():
        return None
    for folder in jobs_dir.iterdir():
        if JOB_ID.match(folder.name) and (folder / "status.json").exists():
            try:
                if read_status(jobs_dir, folder.name)["state"] in ("queued", "running"):
                    return folder.name
            except (OSError, ValueError, NotFoundError):
                continue
    return None


class RetrainRunning(PipecastError):
    """A retrain is already queued or running (one at a time)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"retrain {job_id} is still running; poll /v1/jobs/{job_id}")
        self.job_id = job_id


@contextmanager
def _exclusive(jobs_dir: Path) -> Iterator[None]:
    """Hold ``jobs_dir/.lock`` (an advisory file lock, so it spans threads, workers and
    processes): checking for a running job and starting one must not interleave."""
    jobs_dir.mkdir(parents=True, exist_ok=True)
    with open(jobs_dir / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def start_retrain_if_idle(jobs_dir: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """:func:`start_retrain` unless a retrain is queued or running (then
    :class:`RetrainRunning`): two simultaneous requests start one job, not two."""
    with _exclusive(jobs_dir):
        busy = running(jobs_dir)
        if busy:
            raise RetrainRunning(busy)
        return start_retrain(jobs_dir, spec)


def start_retrain(jobs_dir: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """Write the job's spec and status, start its process; return the status."""
    job_id = uuid.uuid4().hex
    folder = jobs_dir / job_id
    folder.mkdir(parents=True)
    (folder / "spec.json").write_text(json.dumps(spec, default=str))
    status: dict[str, Any] = {
        "id": job_id,
        "kind": "retrain",
        "state": "queued",
        "created": _now(),
        "started": None,
        "finished": None,
        "progress": {"phase": None, "done": 0, "total": 0, "fraction": 0.0},
        "result": None,
        "error": None,
        "pid": None,
    }
    _write(folder / "status.json", status)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    with open(folder / "log.txt", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "serving.api.jobs", str(folder)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # a server's Ctrl-C does not kill a running retrain
        )
    status["pid"] = proc.pid
    # The child may already have written "running": only fill in the pid if it has not.
    current = json.loads((folder / "status.json").read_text())
    if current["state"] == "queued":
        current["pid"] = proc.pid
        _write(folder / "status.json", current)
        return current
    return {**current, "pid": current.get("pid") or proc.pid}


class Progress:
    """Turns ``train``'s (phase, done, total) callbacks into one fraction that never goes back."""

    def __init__(self) -> None:
        self.segment = -1
        self.phase: str | None = None
        self.done = 0
        self.fraction = 0.0

    def update(self, phase: str, done: int, total: int) -> float:
        if phase != self.phase or done < self.done:  # a new phase, or the same one again
            self.segment += 1
            self.phase = phase
        self.done = done
        within = min(done / total, 1.0) if total else 0.0
        now = min((min(self.segment, len(PHASES) - 1) + within) / len(PHASES), 1.0)
        self.fraction = max(self.fraction, round(now, 4))
        return self.fraction


def run(folder: Path) -> int:
    """The job process: train, register, write the result (or the error)."""
    import pandas as pd

    from features.data.stages import load_stage_config
    from features.data.store import Store
    from training.config import make_config
    from training.tracking import TrackingTarget, log_and_register
    from training.train import train

    status_file = folder / "status.json"
    status: dict[str, Any] = json.loads(status_file.read_text())
    spec = json.loads((folder / "spec.json").read_text())
    status.update(state="running", started=_now(), pid=os.getpid())
    _write(status_file, status)
    last = [0.0]
    tracker = Progress()

    def progress(phase: str, done: int, total: int) -> None:
        fraction = tracker.update(phase, done, total)
        now = time.monotonic()
        if now - last[0] < 0.25 and done < total:  # a file write per tick would dominate
            return
        last[0] = now
        status["progress"] = {
            "phase": phase,
            "done": int(done),
            "total": int(total),
            "fraction": fraction,
        }
        _write(status_file, status)

    try:
        with Store(spec["db"], read_only=True) as store:
            tables = store.tables()
        stages = load_stage_config(spec.get("stages"))
        config = make_config(**(spec.get("config") or {}))
        as_of = spec.get("as_of")
        result = train(
            tables,
            stages,
            as_of=None if as_of is None else pd.Timestamp(as_of),
            config=config,
            progress=progress,
        )
        progress("mlflow", 0, 1)
        target = TrackingTarget(spec["tracking_uri"], spec.get("artifacts"))
        registered = log_and_register(result, target)
        status["result"] = {
            name: {"version": r.version, "alias": r.alias, "reason": r.reason}
            for name, r in registered.items()
        }
        status["progress"] = {"phase": "mlflow", "done": 1, "total": 1, "fraction": 1.0}
        status["state"] = "succeeded"
    except Exception as err:  # the job reports every failure in its status file
        traceback.print_exc()
        status["state"] = "failed"
        status["error"] = f"{type(err).__name__}: {err}"
    status["finished"] = _now()
    _write(status_file, status)
    return 0 if status["state"] == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1])))
