"""Several real ``pipecast`` processes on one store file (issue 7: 3.9, 3.10, 3.14, must show).

Readers answer beside a load (from the store as it was, or as it became); a second writer waits or
is told the store is busy; a killed, interrupted or disk-starved load leaves the store byte for
byte as it was; nothing is lost and no process prints a traceback.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from features.synthetic.generator import generate, write_dataset

PIPECAST = str(Path(sys.executable).with_name("pipecast"))
AS_OF = "2025-06-30"


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One generated CRM split by deal into two exports (A: even ids, B: odd), and the whole."""
    root = tmp_path_factory.mktemp("exports")
    data = generate(1200, seed=5)
    write_dataset(data, root / "all", "parquet")
    out = {"all": root / "all"}

    def even(ids: pd.Series) -> pd.Series:
        return ids.str[-1].astype(int) % 2 == 0

    for name, keep in (("a", even), ("b", lambda ids: ~even(ids))):
        folder = root / name
        folder.mkdir()
        for table, frame in data.tables.items():
            part = frame if "deal_id" not in frame else frame[keep(frame["deal_id"])]
            part.to_parquet(folder / f"{table}.parquet", index=False)
        out[name] = folder
    return out


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPECAST_")}
    return {**env, **extra}


def pipecast(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PIPECAST, *args], capture_output=True, text=True, env=_env(**env), timeout=600
    )


def _default_sigint() -> None:
    # A shell starting the suite in the background can hand children SIGINT ignored, and Python
    # then never installs its Ctrl-C handler: the child gets Ctrl-C as a user's terminal gives it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(*args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PIPECAST, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(**env),
        preexec_fn=_default_sigint,
    )


def no_traceback(*outputs: str) -> None:
    for text in outputs:
        assert "Traceback" not in text and "internal error" not in text, text


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def deal_count(db: Path) -> int:
    with duckdb.connect(str(db), read_only=True) as con:
        row = con.execute("SELECT count(*) FROM deals").fetchone()
    assert row is not None
    return int(row[0])


def working_copies(db: Path) -> list[Path]:
    return sorted(db.parent.glob(f".{db.name}.load-*"))


@contextlib.contextmanager
def writer_lock(db: Path) -> Iterator[None]:
    """Hold the writer lock as a load in another process would."""
    with open(f"{db}.lock", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def lock_is_held(db: Path) -> bool:
    lock = Path(f"{db}.lock")
    if not lock.exists():
        return False
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return False


def wait_for(condition, process: subprocess.Popen[str], what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 300
    while not condition():
        assert process.poll() is None, f"finished before {what}: {process.communicate()}"
        assert time.monotonic() < deadline, f"no {what}"
        time.sleep(0.005)


@pytest.fixture
def store_a(exports: dict[str, Path], tmp_path: Path) -> Path:
    db = tmp_path / "s.duckdb"
    loaded = pipecast("load", str(exports["a"]), "--db", str(db))
    assert loaded.returncode == 0, loaded.stderr
    return db


def metrics_json(db: Path) -> dict:
    result = pipecast("metrics", "--as-of", AS_OF, "--db", str(db), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_two_readers_and_a_load_at_once(exports: dict[str, Path], store_a: Path) -> None:
    before = metrics_json(store_a)
    load = start("load", str(exports["b"]), "--db", str(store_a))
    wait_for(lambda: lock_is_held(store_a), load, "writer lock")
    readers = [start("metrics", "--as-of", AS_OF, "--db", str(store_a), "--json") for _ in "ab"]
    answers = [(*r.communicate(timeout=600), r.returncode) for r in readers]
    out, err = load.communicate(timeout=600)
    assert load.returncode == 0, err
    no_traceback(out, err, *(a[1] for a in answers))
    after = metrics_json(store_a)
    assert before != after
    for stdout, stderr, code in answers:
        assert code == 0, stderr
        assert json.loads(stdout) in (before, after)
    # nothing lost: the store holds both exports, as loading them one by one gives
    assert deal_count(store_a) == 1200
    with duckdb.connect(str(store_a), read_only=True) as con:
        got = con.execute("SELECT * FROM activities ORDER BY activity_id").df()
    whole = pd.read_parquet(exports["all"] / "activities.parquet")
    assert len(got) == len(whole) and set(got["activity_id"]) == set(whole["activity_id"])


def test_readers_never_wait_for_a_writer(store_a: Path) -> None:
    with writer_lock(store_a):
        result = pipecast("summary", "--db", str(store_a))
    assert result.returncode == 0, result.stderr
    assert "open pipeline" in result.stdout


def test_a_reader_beside_another_readers_open_connection(store_a: Path) -> None:
    # Read commands opened the store read-write: a second process could not open it at all.
    with duckdb.connect(str(store_a), read_only=True) as other:
        other.execute("SELECT count(*) FROM deals").fetchall()
        result = pipecast("summary", "--db", str(store_a))
    assert result.returncode == 0, result.stderr


def test_a_second_writer_is_told_the_store_is_busy(exports: dict[str, Path], store_a: Path) -> None:
    before = digest(store_a)
    with writer_lock(store_a):
        result = pipecast(
            "load", str(exports["b"]), "--db", str(store_a), PIPECAST_LOCK_TIMEOUT="0.3"
        )
    assert result.returncode == 3
    no_traceback(result.stdout, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1
    assert "is busy: another load" in result.stderr and "waited 0.3 s" in result.stderr
    assert digest(store_a) == before


def test_two_loads_at_once_both_land(exports: dict[str, Path], tmp_path: Path) -> None:
    db = tmp_path / "both.duckdb"
    loads = [
        start("load", str(exports[name]), "--db", str(db), PIPECAST_LOCK_TIMEOUT="600")
        for name in ("a", "b")
    ]
    for load in loads:
        out, err = load.communicate(timeout=600)
        assert load.returncode == 0, err
        no_traceback(out, err)
    assert deal_count(db) == 1200


def test_a_killed_load_leaves_the_store_as_it_was(exports: dict[str, Path], store_a: Path) -> None:
    before, size = digest(store_a), store_a.stat().st_size
    load = start("load", str(exports["b"]), "--db", str(store_a))
    wait_for(lambda: bool(working_copies(store_a)), load, "working copy")
    load.kill()
    load.wait()
    assert digest(store_a) == before and store_a.stat().st_size == size
    assert deal_count(store_a) == 600
    assert working_copies(store_a)  # what it left, until the next writer
    again = pipecast("load", str(exports["b"]), "--db", str(store_a))
    assert again.returncode == 0, again.stderr
    assert not working_copies(store_a)
    assert deal_count(store_a) == 1200


def test_ctrl_c_during_a_load_is_one_line(exports: dict[str, Path], store_a: Path) -> None:
    before = digest(store_a)
    load = start("load", str(exports["b"]), "--db", str(store_a))
    wait_for(lambda: bool(working_copies(store_a)), load, "working copy")
    load.send_signal(signal.SIGINT)
    out, err = load.communicate(timeout=600)
    assert load.returncode == 130, err
    no_traceback(out, err)
    assert err.strip().startswith("interrupted") and len(err.strip().splitlines()) == 1
    assert digest(store_a) == before
    assert not working_copies(store_a)


def _file_size_limit(limit: int):  # type: ignore[no-untyped-def]
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_is_named_and_changes_nothing(exports: dict[str, Path], store_a: Path) -> None:
    before = digest(store_a)
    limit = store_a.stat().st_size + 64 * 1024  # the copy fits; the load does not
    result = subprocess.run(
        [PIPECAST, "load", str(exports["b"]), "--db", str(store_a)],
        capture_output=True,
        text=True,
        env=_env(),
        preexec_fn=_file_size_limit(limit),
        timeout=600,
    )
    assert result.returncode == 1
    no_traceback(result.stdout, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1
    assert "the disk is full" in result.stderr and "File too large" in result.stderr
    assert "store is unchanged" in result.stderr
    assert digest(store_a) == before
    assert not working_copies(store_a)


def _read_only_mount(folder: Path) -> contextlib.AbstractContextManager[Path]:
    """``folder`` seen read-only: by permissions for a user, by a read-only bind mount for root
    (root ignores permissions); skipped where neither is possible."""

    @contextlib.contextmanager
    def mounted() -> Iterator[Path]:
        if os.geteuid() != 0:
            for p in [folder, *folder.iterdir()]:
                p.chmod(0o555 if p.is_dir() else 0o444)
            try:
                yield folder
            finally:
                for p in [folder, *folder.iterdir()]:
                    p.chmod(0o755 if p.is_dir() else 0o644)
            return
        view = folder.with_name(folder.name + "-ro")
        view.mkdir()
        bind = subprocess.run(
            ["mount", "--bind", "-o", "ro", str(folder), str(view)], capture_output=True
        )
        if bind.returncode != 0:
            view.rmdir()
            pytest.skip("running as root without mount: cannot make a read-only store")
        try:
            yield view
        finally:
            subprocess.run(["umount", str(view)], check=True)
            view.rmdir()

    return mounted()


def test_a_read_only_store_can_be_read(store_a: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    shutil.copy(store_a, folder / "s.duckdb")
    with _read_only_mount(folder) as view:
        db = view / "s.duckdb"
        result = pipecast("summary", "--db", str(db))
        assert result.returncode == 0, result.stderr
        assert "open pipeline" in result.stdout
        refused = pipecast("load", str(store_a.parent), "--db", str(db))
        assert refused.returncode == 1, refused.stderr
        no_traceback(refused.stdout, refused.stderr)
