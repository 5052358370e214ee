"""End to end: a real ``pipecast serve`` (uvicorn) on a free loopback port, a real store and a real
MLflow (SQLite) with a trained champion. While requests flow steadily, RevOps retrains through the
API (the job runs to completion with progress), a failed retrain changes nothing, and promotions
move the champion back and forth: no request fails and every answer names the models that made it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.live import live_server
from tests.served import FAST, World, build_world

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("live"))


@pytest.fixture(scope="module")
def base(world: World) -> Iterator[str]:
    env = world.env(PIPECAST_MODEL_REFRESH_SECONDS="0.5")
    with live_server(env, log=world.root / "server.log") as url:
        yield url


class Traffic:
    """Steady requests from a rep in a background thread; every answer is kept."""

    def __init__(self, base: str, world: World, deal_id: str) -> None:
        self.base, self.headers, self.deal_id = base, world.headers("rep"), deal_id
        self.answers: list[tuple[int, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base, headers=self.headers, timeout=60) as c:
            while not self._stop.is_set():
                for url in ("/v1/deals/scores?limit=5", f"/v1/deals/{self.deal_id}"):
                    try:
                        r = c.get(url)
                        body = r.json()
                        self.answers.append((r.status_code, body.get("model_versions")))
                    except (httpx.HTTPError, ValueError) as err:  # a dropped request is a failure
                        self.answers.append((0, repr(err)))
                time.sleep(0.05)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)


def _wait_job(c: httpx.Client, job_id: str, timeout: float = 600) -> tuple[dict, list[float]]:
    seen: list[float] = []
    deadline = time.monotonic() + timeout
    while True:
        r = c.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        job = r.json()
        seen.append(job["progress"]["fraction"])
        if job["state"] in ("succeeded", "failed"):
            return job, seen
        assert time.monotonic() < deadline, f"job {job_id} still {job['state']}"
        time.sleep(0.3)


def _wait_serving(c: httpx.Client, want: dict[str, str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while c.get("/v1/models").json()["serving"] != want:
        assert time.monotonic() < deadline, f"server never served {want}"
        time.sleep(0.2)


def test_retrain_and_promote_while_serving(base: str, world: World) -> None:
    revops = httpx.Client(base_url=base, headers=world.headers("revops"), timeout=60)
    assert revops.get("/readyz").json()["models_loaded"] is True
    v1 = world.registered
    mine = httpx.get(f"{base}/v1/deals/scores?limit=1", headers=world.headers("rep")).json()
    deal_id = mine["deals"][0]["deal_id"]
    with Traffic(base, world, deal_id) as traffic:
        # A retrain that cannot succeed (too little history before its as-of) changes nothing.
        r = revops.post("/v1/models/retrain", json={"as_of": "2022-02-01", "config": FAST})
        assert r.status_code == 202, r.text
        failed, _ = _wait_job(revops, r.json()["id"])
        assert failed["state"] == "failed" and failed["error"]
        assert revops.get("/v1/models").json()["serving"] == v1

        r = revops.post("/v1/models/retrain", json={"config": FAST})
        assert r.status_code == 202 and r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
        again = revops.post("/v1/models/retrain", json={"config": FAST})
        assert again.status_code == 409  # one retrain at a time
        job, fractions = _wait_job(revops, r.json()["id"])
        assert job["state"] == "succeeded", job
        # The job files live in the configured jobs dir (where every worker reads them).
        folders = [p for p in (world.root / "jobs").iterdir() if p.is_dir()]
        assert {p.name for p in folders} >= {job["id"], failed["id"]}
        assert all((p / "status.json").exists() for p in folders)
        assert fractions == sorted(fractions) and fractions[-1] == 1.0
        assert any(0 < f < 1 for f in fractions), fractions  # progress was reported on the way
        v2 = {name: res["version"] for name, res in job["result"].items()}
        assert all(int(v2[n]) > int(v1[n]) for n in v1)
        # Same recipe on the same data: the gate lets it take champion; the server swaps.
        assert {res["alias"] for res in job["result"].values()} == {"champion"}
        _wait_serving(revops, v2)

        # And back: promote the first versions through the API (gated: same rows, no worse).
        for name in ("win_probability", "slip"):
            p = revops.post("/v1/models/promote", json={"name": name, "version": v1[name]})
            assert p.status_code == 200, p.text
        _wait_serving(revops, v1)
        time.sleep(1.0)  # some traffic after the last swap
    statuses = [s for s, _ in traffic.answers]
    assert len(statuses) > 20 and set(statuses) == {200}, traffic.answers[:5]
    named = {tuple(sorted(v.items())) for _, v in traffic.answers}
    # Every answer names the versions that made it: only v1 and v2 sets (or their mix while
    # the two aliases move one after the other), never none.
    allowed = {v1["win_probability"], v2["win_probability"]}
    for versions in map(dict, named):
        assert versions["win_probability"] in allowed and None not in versions.values()
    assert len(named) >= 2  # the traffic saw the swap


def test_a_rep_cannot_reach_another_reps_deal_over_http(base: str, world: World) -> None:
    theirs = httpx.get(f"{base}/v1/deals/scores?limit=1", headers=world.headers("other_rep"))
    deal_id = theirs.json()["deals"][0]["deal_id"]
    r = httpx.get(f"{base}/v1/deals/{deal_id}", headers=world.headers("rep"))
    assert r.status_code == 404 and r.json()["detail"] == f"unknown deal {deal_id!r}"
    assert "x-request-id" in r.headers
