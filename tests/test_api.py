"""The HTTP API through FastAPI's TestClient: roles and scopes, errors, pipeline health, import."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from features.data.loading import load_export
from features.data.stages import load_stage_config
from features.data.store import Store
from features.synthetic.generator import generate, write_dataset
from serving.api.app import create_app
from serving.api.settings import ApiSettings
from serving.auth import KeyStore, Role
from serving.cli import app as cli_app

AS_OF = "2025-11-15"


@dataclass(frozen=True)
class Api:
    client: TestClient
    db: Path
    keys: dict[str, str]  # role label -> bearer token
    rep: str
    team: str
    other_rep: str
    other_team: str

    def get(self, url: str, who: str | None = "revops", **kw: object) -> object:
        headers = {"Authorization": f"Bearer {self.keys[who]}"} if who else {}
        return self.client.get(url, headers=headers, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    root = tmp_path_factory.mktemp("api")
    write_dataset(generate(900, seed=17), root / "export")
    db = root / "store.duckdb"
    load_export(root / "export", db, stages=load_stage_config())
    with Store(db) as store:
        deals = store.read("deals")
    by_team = deals.groupby("team")["owner"].unique()
    team, other_team = str(by_team.index[0]), str(by_team.index[1])
    rep, other_rep = str(by_team.iloc[0][0]), str(by_team.iloc[1][0])
    settings = ApiSettings(db=db, keys_file=root / "keys.json", jobs_dir=root / "jobs")
    keystore = KeyStore(settings.keys_file)
    keys = {
        "revops": keystore.create(Role.REVOPS)[1],
        "manager": keystore.create(Role.MANAGER, team=team)[1],
        "rep": keystore.create(Role.REP, owner=rep, team=team)[1],
    }
    keys["bad"] = "pc_not-a-key"
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield Api(client, db, keys, rep, team, other_rep, other_team)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- health -------------------------------------------------------------------------------------
def test_health_and_readiness(api: Api, tmp_path: Path) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}
    # Store reachable, but no champion model in this registry: not ready (test_api_models
    # checks the ready case with a trained champion).
    ready = api.client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["store"] is True
    assert ready.json()["models_loaded"] is False
    empty = ApiSettings(db=tmp_path / "none.duckdb", keys_file=tmp_path / "k.json")
    with TestClient(create_app(empty)) as client:
        assert client.get("/healthz").status_code == 200
        not_ready = client.get("/readyz")
        assert not_ready.status_code == 503 and not_ready.json()["store"] is False


# --- roles --------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/v1/pipeline/metrics", "/v1/pipeline/hygiene"])
@pytest.mark.parametrize(
    ("who", "query", "status"),
    [
        (None, "", 401),
        ("bad", "", 401),
        ("revops", "", 200),
        ("manager", "", 200),
        ("manager", "team={team}", 200),
        ("manager", "team={other_team}", 403),
        ("rep", "", 200),
        ("rep", "owner={rep}", 200),
        ("rep", "owner={other_rep}", 403),
    ],
)
def test_role_matrix(api: Api, path: str, who: str | None, query: str, status: int) -> None:
    q = query.format(team=api.team, other_team=api.other_team, rep=api.rep, other_rep=api.other_rep)
    response = api.get(f"{path}?as_of={AS_OF}&{q}", who)
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"  # type: ignore[attr-defined]


def test_a_rep_sees_only_their_own_deals(api: Api) -> None:
    flags = api.get(f"/v1/pipeline/hygiene?as_of={AS_OF}", "rep").json()["flags"]  # type: ignore[attr-defined]
    assert flags and {f["owner"] for f in flags} == {api.rep}
    pack = api.get(f"/v1/pipeline/review?as_of={AS_OF}&min_amount=0", "rep").json()  # type: ignore[attr-defined]
    assert pack["deals"] and {d["owner"] for d in pack["deals"]} == {api.rep}


def test_a_manager_sees_only_their_team(api: Api) -> None:
    pack = api.get(f"/v1/pipeline/review?as_of={AS_OF}&min_amount=0", "manager").json()  # type: ignore[attr-defined]
    assert pack["deals"] and {d["team"] for d in pack["deals"]} == {api.team}
    metrics = api.get(f"/v1/pipeline/metrics?as_of={AS_OF}", "manager").json()  # type: ignore[attr-defined]
    assert metrics["team"] == api.team


def test_revoked_key_is_refused_at_once(api: Api, tmp_path: Path) -> None:
    store = KeyStore(api.client.app.state.keys.path)  # type: ignore[attr-defined]
    key, token = store.create(Role.REVOPS, label="temp")
    headers = {"Authorization": f"Bearer {token}"}
    assert api.client.get("/v1/pipeline/metrics", headers=headers).status_code == 200
    store.revoke(key.key_id)
    assert api.client.get("/v1/pipeline/metrics", headers=headers).status_code == 401


# --- answers and errors -------------------------------------------------------------------------
def test_metrics_equal_the_library(api: Api) -> None:
    from features.pipeline.metrics import compute_metrics

    with Store(api.db) as store:
        tables = store.tables()
    expected = compute_metrics(
        tables, load_stage_config(), pd.Timestamp(f"{AS_OF} 23:59:59.999999")
    )
    got = api.get(f"/v1/pipeline/metrics?as_of={AS_OF}").json()  # type: ignore[attr-defined]
    assert got["open_pipeline"]["count"] == expected.open_pipeline.count
    assert got["open_pipeline"]["value"] == pytest.approx(expected.open_pipeline.value)
    assert got["coverage"]["ratio"] == pytest.approx(expected.coverage.ratio)


def test_default_as_of_is_the_export_time(api: Api) -> None:
    got = api.get("/v1/pipeline/metrics").json()  # type: ignore[attr-defined]
    with Store(api.db) as store:
        observed = store.read("deals")["observed_at"].max()
    # The store's times are naive UTC; the answer says so with an explicit offset.
    assert got["as_of"].endswith("Z")
    assert pd.Timestamp(got["as_of"]) == observed.tz_localize("UTC")


@pytest.mark.parametrize(
    ("query", "status", "needle"),
    [
        ("team=nope", 404, "unknown team"),
        ("owner=nobody", 404, "unknown owner"),
        ("as_of=notadate", 422, "as_of"),
        ("as_of=9999-12-31", 422, "outside the supported range"),
    ],
)
def test_bad_queries(api: Api, query: str, status: int, needle: str) -> None:
    response = api.get(f"/v1/pipeline/metrics?{query}")
    assert response.status_code == status  # type: ignore[attr-defined]
    assert needle in response.text  # type: ignore[attr-defined]
    assert "request_id" in response.text or status == 422  # type: ignore[attr-defined]
    if status == 422:  # FastAPI's documented shape, naming the parameter, whoever refused it
        detail = response.json()["detail"]  # type: ignore[attr-defined]
        assert all(e["loc"][:2] == ["query", "as_of"] and e["msg"] for e in detail)


def test_internal_error_is_500_with_request_id_and_no_traceback(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    from serving.api import views

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(views, "hygiene_flags", boom)
    response = api.get("/v1/pipeline/hygiene?as_of=2025-10-01")
    assert response.status_code == 500  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert body["request_id"] == response.headers["x-request-id"]  # type: ignore[attr-defined]
    assert "secret" not in response.text and "Traceback" not in response.text  # type: ignore[attr-defined]


def test_openapi_documents_every_endpoint(api: Api) -> None:
    spec = api.client.get("/openapi.json").json()
    for path in ("/v1/pipeline/metrics", "/v1/pipeline/hygiene", "/v1/pipeline/review"):
        assert "200" in spec["paths"][path]["get"]["responses"]
    assert "/v1/data/import" in spec["paths"]


# --- import -------------------------------------------------------------------------------------
DEALS_CSV = (
    "deal_id,owner,team,created_at,stage,amount\n"
    "NEW1,zoe,north,2025-11-01,qualification,1000\n"
    "NEW2,zoe,north,2025-11-02,proposal,2000\n"
)


def test_import_needs_revops(api: Api) -> None:
    files = [("files", ("deals.csv", io.BytesIO(DEALS_CSV.encode())))]
    response = api.client.post(
        "/v1/data/import", files=files, headers={"Authorization": f"Bearer {api.keys['rep']}"}
    )
    assert response.status_code == 403


def test_bad_import_is_422_with_problems_and_changes_nothing(api: Api) -> None:
    before = _digest(api.db)
    bad = DEALS_CSV + "NEW3,,north,2025-11-03,no_such_stage,-5\n"
    files = [("files", ("deals.csv", io.BytesIO(bad.encode())))]
    response = api.client.post(
        "/v1/data/import", files=files, headers={"Authorization": f"Bearer {api.keys['revops']}"}
    )
    assert response.status_code == 422
    problems = response.json()["problems"]
    assert {p["column"] for p in problems} >= {"owner", "stage", "amount"}
    assert all(p["file"] == "deals.csv" and p["row"] == 3 for p in problems)
    assert _digest(api.db) == before


def test_import_lands_and_new_reads_see_it(api: Api, tmp_path: Path) -> None:
    # A separate store: the module's store stays as the other tests expect it.
    db = tmp_path / "s.duckdb"
    settings = ApiSettings(db=db, keys_file=tmp_path / "k.json")
    token = KeyStore(settings.keys_file).create(Role.REVOPS)[1]
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(settings)) as client:
        files = [("files", ("deals.csv", io.BytesIO(DEALS_CSV.encode())))]
        response = client.post(
            "/v1/data/import",
            files=files,
            data={"exported_at": "2025-11-05T00:00:00"},
            headers=headers,
        )
        assert response.status_code == 200, response.text
        assert response.json()["inserted"]["deals"] == 2
        metrics = client.get("/v1/pipeline/metrics", headers=headers).json()
        assert metrics["open_pipeline"]["count"] == 2


def test_import_refuses_unknown_mapping_and_wrong_files(api: Api) -> None:
    headers = {"Authorization": f"Bearer {api.keys['revops']}"}
    files = [("files", ("deals.csv", io.BytesIO(DEALS_CSV.encode())))]
    response = api.client.post(
        "/v1/data/import", files=files, data={"mapping": "nope"}, headers=headers
    )
    assert response.status_code == 422 and "unknown mapping" in response.text
    files = [("files", ("deals.xlsx", io.BytesIO(b"x")))]
    response = api.client.post("/v1/data/import", files=files, headers=headers)
    assert response.status_code == 422 and "not a .csv or .parquet" in response.text


# --- keys ---------------------------------------------------------------------------------------
def test_keys_cli_shows_the_secret_once_and_stores_only_its_hash(tmp_path: Path) -> None:
    runner = CliRunner()
    keys_file = tmp_path / "keys.json"
    created = runner.invoke(
        cli_app,
        ["keys", "create", "--role", "rep", "--owner", "ann", "--keys-file", str(keys_file)],
    )
    assert created.exit_code == 0, created.output
    token = created.stdout.strip().splitlines()[0]
    assert token.startswith("pc_")
    assert token not in keys_file.read_text()
    assert hashlib.sha256(token.encode()).hexdigest() in keys_file.read_text()
    listed = runner.invoke(cli_app, ["keys", "list", "--keys-file", str(keys_file)])
    assert "ann" in listed.stdout and token not in listed.stdout
    key_id = token[3:11]
    assert (
        runner.invoke(cli_app, ["keys", "revoke", key_id, "--keys-file", str(keys_file)]).exit_code
        == 0
    )
    assert not KeyStore(keys_file).by_hash()
    refused = runner.invoke(
        cli_app, ["keys", "create", "--role", "rep", "--keys-file", str(keys_file)]
    )
    assert refused.exit_code == 2 and "--owner" in refused.stderr
