"""Deal scores, what-if scoring and the model endpoints through TestClient, with a real champion
in a real MLflow (SQLite): a role matrix over every endpoint, scopes, errors, fallback and 503."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from serving.api.app import create_app
from tests.served import World, build_world

AS_OF = "2025-11-15"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="module")
def client(world: World) -> Iterator[TestClient]:
    with TestClient(create_app(world.settings()), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def bare(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The same store and keys, but an empty model registry: no champion."""
    empty = tmp_path_factory.mktemp("no-models")
    settings = world.settings(
        mlflow_tracking_uri=f"sqlite:///{empty / 'mlflow.db'}", mlflow_artifacts=str(empty)
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def deals(client: TestClient, world: World) -> dict[str, Any]:
    r = client.get(f"/v1/deals/scores?as_of={AS_OF}", headers=world.headers("revops"))
    assert r.status_code == 200, r.text
    return r.json()


def _own_and_other(deals: dict[str, Any], world: World) -> tuple[str, str]:
    own = next(d["deal_id"] for d in deals["deals"] if d["owner"] == world.rep)
    other = next(d["deal_id"] for d in deals["deals"] if d["owner"] == world.other_rep)
    return own, other


# --- role matrix --------------------------------------------------------------------------------
ROLES = [None, "bad", "rep", "manager", "revops"]
# endpoint -> expected status per role (None, bad key, rep, manager, revops)
MATRIX: dict[str, tuple[int, ...]] = {
    "GET /v1/deals/scores": (401, 401, 200, 200, 200),
    "GET /v1/deals/scores?team={other_team}": (401, 401, 403, 403, 200),
    "GET /v1/deals/scores?owner={other_rep}": (401, 401, 403, 403, 200),
    "GET /v1/deals/scores?team=no-such-team": (401, 401, 404, 404, 404),
    "GET /v1/deals/{own}": (401, 401, 200, 200, 200),
    "GET /v1/deals/{other}": (401, 401, 404, 404, 200),
    "GET /v1/deals/no-such-deal": (401, 401, 404, 404, 404),
    "POST /v1/score {own}": (401, 401, 200, 200, 200),
    "POST /v1/score {other}": (401, 401, 404, 404, 200),
    "GET /v1/models": (401, 401, 200, 200, 200),
    "GET /v1/forecast": (401, 401, 200, 200, 200),
    "GET /v1/forecast?team={other_team}": (401, 401, 403, 403, 200),
    "GET /v1/forecast?owner={other_rep}": (401, 401, 403, 403, 200),
    "GET /v1/forecast?team=no-such-team": (401, 401, 404, 404, 404),
    "GET /v1/forecast?quarter=2031Q1": (401, 401, 404, 404, 404),
    "GET /v1/forecast?quarter=2025Q9": (401, 401, 422, 422, 422),
    "POST /v1/models/retrain (bad recipe)": (401, 401, 403, 403, 422),
    "GET /v1/jobs/{unknown_job}": (401, 401, 403, 403, 404),
    "POST /v1/models/promote (unknown version)": (401, 401, 403, 403, 404),
}


def _call(client: TestClient, world: World, endpoint: str, who: str | None, ids: dict[str, str]):
    headers = world.headers(who)
    method, _, rest = endpoint.partition(" ")
    if endpoint.startswith("POST /v1/score"):
        deal = ids["own"] if "{own}" in rest else ids["other"]
        what_if = {"as_of": AS_OF, "deals": [{"deal_id": deal, "add_stakeholders": ["champion"]}]}
        return client.post("/v1/score", json=what_if, headers=headers)
    if endpoint.startswith("POST /v1/models/retrain"):
        recipe = {"config": {"win": {"n_estimators": 0}}}
        return client.post("/v1/models/retrain", json=recipe, headers=headers)
    if endpoint.startswith("POST /v1/models/promote"):
        promote = {"name": "win_probability", "version": "999"}
        return client.post("/v1/models/promote", json=promote, headers=headers)
    url = rest.format(**ids)
    sep = "&" if "?" in url else "?"
    return client.request(method, f"{url}{sep}as_of={AS_OF}", headers=headers)


@pytest.mark.parametrize("endpoint", list(MATRIX))
def test_role_matrix(
    client: TestClient, world: World, deals: dict[str, Any], endpoint: str
) -> None:
    own, other = _own_and_other(deals, world)
    ids = {
        "own": own,
        "other": other,
        "other_team": world.other_team,
        "other_rep": world.other_rep,
        "unknown_job": "f" * 32,
    }
    got = {who: _call(client, world, endpoint, who, ids) for who in ROLES}
    statuses = tuple(r.status_code for r in got.values())
    assert statuses == MATRIX[endpoint], {w: (r.status_code, r.text[:200]) for w, r in got.items()}
    for who, r in got.items():
        if r.status_code == 401:
            assert r.headers["www-authenticate"] == "Bearer", who
        if r.status_code >= 400:
            assert "request_id" in r.json() or "detail" in r.json()


def test_another_reps_deal_looks_exactly_like_an_unknown_one(
    client: TestClient, world: World, deals: dict[str, Any]
) -> None:
    _, other = _own_and_other(deals, world)
    hidden = client.get(f"/v1/deals/{other}", headers=world.headers("rep")).json()
    unknown = client.get("/v1/deals/zz-unknown", headers=world.headers("rep")).json()
    assert hidden["detail"] == f"unknown deal {other!r}"
    assert unknown["detail"] == "unknown deal 'zz-unknown'"


# --- scores -------------------------------------------------------------------------------------
def test_scores_are_ranked_by_expected_value_and_name_the_models(
    deals: dict[str, Any], world: World
) -> None:
    assert deals["method"] == "model" and deals["fallback_reason"] is None
    assert deals["model_versions"] == world.registered
    values = [d["expected_value"] for d in deals["deals"]]
    assert values == sorted(values, reverse=True)
    assert [d["rank"] for d in deals["deals"]] == list(range(1, len(values) + 1))
    assert deals["total"] == len(deals["deals"]) > 50
    top = deals["deals"][0]
    assert top["reasons_for"] or top["reasons_against"]
    assert all(0 <= d["p_won_this_quarter"] <= d["p_win"] + 1e-9 for d in deals["deals"])


def test_each_role_sees_its_scope_with_the_same_numbers(
    client: TestClient, world: World, deals: dict[str, Any]
) -> None:
    by_id = {d["deal_id"]: d for d in deals["deals"]}
    rep = client.get(f"/v1/deals/scores?as_of={AS_OF}", headers=world.headers("rep")).json()
    assert rep["deals"] and {d["owner"] for d in rep["deals"]} == {world.rep}
    mgr = client.get(f"/v1/deals/scores?as_of={AS_OF}", headers=world.headers("manager")).json()
    assert mgr["deals"] and {d["team"] for d in mgr["deals"]} == {world.team}
    assert rep["total"] == sum(d["owner"] == world.rep for d in deals["deals"])
    for d in rep["deals"]:
        assert d["p_win"] == by_id[d["deal_id"]]["p_win"]
        assert d["expected_value"] == by_id[d["deal_id"]]["expected_value"]
    assert [d["rank"] for d in rep["deals"]] == list(range(1, rep["total"] + 1))
    top = client.get(f"/v1/deals/scores?as_of={AS_OF}&limit=3", headers=world.headers("rep"))
    assert [d["deal_id"] for d in top.json()["deals"]] == [d["deal_id"] for d in rep["deals"][:3]]
    assert top.json()["total"] == rep["total"]


def test_a_deal_in_full(client: TestClient, world: World, deals: dict[str, Any]) -> None:
    own, _ = _own_and_other(deals, world)
    r = client.get(f"/v1/deals/{own}?as_of={AS_OF}", headers=world.headers("rep"))
    assert r.status_code == 200, r.text
    d = r.json()
    listed = next(x for x in deals["deals"] if x["deal_id"] == own)
    assert d["score"]["p_win"] == listed["p_win"] and d["status"] == "open"
    assert d["model_versions"] == world.registered
    h = d["history"]
    assert h["stages"] and h["activities"]
    assert [s["at"] for s in h["stages"]] == sorted(s["at"] for s in h["stages"])
    assert all(a["at"] <= f"{AS_OF}T23:59:59.999999" for a in h["activities"])
    assert "days_in_stage" in d["signals"] and d["signals"]["owner"] == world.rep


@pytest.mark.parametrize(
    ("query", "status"),
    [("limit=0", 422), ("limit=abc", 422), ("as_of=2025-13-01", 422), ("as_of=1800-01-01", 422)],
)
def test_bad_query_parameters(client: TestClient, world: World, query: str, status: int) -> None:
    r = client.get(f"/v1/deals/scores?{query}", headers=world.headers("revops"))
    assert r.status_code == status, r.text


# --- what-if ------------------------------------------------------------------------------------
def test_what_if_rescores_with_the_change(
    client: TestClient, world: World, deals: dict[str, Any]
) -> None:
    own, _ = _own_and_other(deals, world)
    body = {
        "as_of": AS_OF,
        "deals": [{"deal_id": own, "amount": 1_000_000, "add_activities": ["meeting", "demo"]}],
    }
    r = client.post("/v1/score", json=body, headers=world.headers("rep"))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model_versions"] == world.registered and out["method"] == "model"
    deal = out["deals"][0]
    listed = next(x for x in deals["deals"] if x["deal_id"] == own)
    assert deal["before"]["p_win"] == pytest.approx(listed["p_win"])
    assert sorted(deal["changed"]) == ["add_activities", "amount"]
    assert deal["after"]["expected_value"] == pytest.approx(
        1_000_000 * deal["after"]["p_won_this_quarter"]
    )


def test_what_if_without_a_change_scores_as_before(
    client: TestClient, world: World, deals: dict[str, Any]
) -> None:
    """The what-if rescores only the changed deals from their own events: with nothing changed,
    every probability and reason equals the full scoring's (a signal that read other deals'
    events would differ here)."""
    mine = [d["deal_id"] for d in deals["deals"] if d["owner"] == world.rep][:5]
    body = {"as_of": AS_OF, "deals": [{"deal_id": d} for d in mine]}
    r = client.post("/v1/score", json=body, headers=world.headers("rep"))
    assert r.status_code == 200, r.text
    for deal in r.json()["deals"]:
        assert deal["changed"] == []
        before, after = deal["before"], deal["after"]
        for name in ("p_win", "p_won_this_quarter", "expected_value"):
            assert after[name] == pytest.approx(before[name], abs=1e-9), (deal["deal_id"], name)
        assert (after["reasons_for"], after["reasons_against"]) == (
            before["reasons_for"],
            before["reasons_against"],
        )


WHAT_IFS: dict[str, dict[str, Any]] = {
    "amount": {"amount": 1_000_000},
    "stage": {"stage": "negotiation"},
    "close date": {"expected_close_date": "2026-06-30"},
    "forecast category": {"forecast_category": "commit"},
    "next step": {"next_step": "steering committee", "next_step_date": "2025-12-20"},
    "stakeholders": {"add_stakeholders": ["champion", "decision_maker"]},
    "activities": {"add_activities": ["meeting", "demo"]},
    "everything": {
        "amount": 5_000,
        "stage": "proposal",
        "expected_close_date": "2025-11-20",
        "forecast_category": "best_case",
        "next_step": "send terms",
        "add_stakeholders": ["finance"],
        "add_activities": ["proposal", "call"],
    },
}


@pytest.mark.parametrize("as_of", [AS_OF, None])
@pytest.mark.parametrize("kind", list(WHAT_IFS))
def test_what_if_scores_equal_the_full_rescoring(
    client: TestClient, world: World, kind: str, as_of: str | None
) -> None:
    """The endpoint rescores from the changed deals' own rows with the store-wide facts given
    (serving.api.whatif.rescore); the reference copies the whole store with the changes added
    and scores it as the list does (rescore_full): equal probabilities and reasons."""
    from serving.api import views, whatif
    from serving.api.routers.deals import DealChange

    query = "" if as_of is None else f"?as_of={as_of}"
    listed = client.get(f"/v1/deals/scores{query}", headers=world.headers("revops")).json()
    ids = [d["deal_id"] for d in listed["deals"]]
    picked = ids[:: max(1, len(ids) // 4)][:4]
    body: dict[str, Any] = {"deals": [{"deal_id": d, **WHAT_IFS[kind]} for d in picked]}
    if as_of is not None:
        body["as_of"] = as_of
    r = client.post("/v1/score", json=body, headers=world.headers("revops"))
    assert r.status_code == 200, r.text
    got = {d["deal_id"]: d["after"] for d in r.json()["deals"]}

    state = client.app.state.pipecast  # type: ignore[attr-defined]
    snap, models = state.store.current(), state.models.current().models
    when = views.resolve_as_of(as_of, snap)
    changes = [DealChange.model_validate(d).model_dump(mode="json") for d in body["deals"]]
    full = whatif.rescore_full(models, snap.tables, state.stages, when, changes)
    assert sorted(full["deal_id"]) == sorted(picked)
    for ref in full.to_dict(orient="records"):
        after = got[ref["deal_id"]]
        for name in ("p_win", "p_won_this_quarter", "expected_value"):
            assert after[name] == pytest.approx(ref[name], rel=0, abs=1e-9), (ref["deal_id"], name)
        assert (after["reasons_for"], after["reasons_against"]) == (
            ref["reasons_for"],
            ref["reasons_against"],
        )


def test_concurrent_what_ifs_answer_as_one_at_a_time(
    client: TestClient, world: World, deals: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests arriving together are scored in shared calls (serving.api.batching): each gets
    what it gets alone, the same deal in two requests included."""
    ids = [d["deal_id"] for d in deals["deals"]]
    kinds = list(WHAT_IFS.values())
    bodies = [
        {"as_of": AS_OF, "deals": [{"deal_id": ids[i % 5], **kinds[i % len(kinds)]}]}
        for i in range(12)
    ]
    bodies += bodies[:3]  # the same question twice at once: answered once for both
    headers = world.headers("revops")
    alone = [client.post("/v1/score", json=b, headers=headers).json() for b in bodies]
    from serving.api import batching

    sizes: list[int] = []
    run_plan = batching.run_plan

    def recorded(asks: Any, compute: Any) -> None:
        sizes.append(len(asks))
        run_plan(asks, compute)

    monkeypatch.setattr(batching, "run_plan", recorded)
    with ThreadPoolExecutor(max_workers=6) as pool:
        together = list(
            pool.map(lambda b: client.post("/v1/score", json=b, headers=headers), bodies)
        )
    for body, one, r in zip(bodies, alone, together, strict=True):
        assert r.status_code == 200, r.text
        assert r.json() == one, body
    assert sum(sizes) == len(bodies) and max(sizes) > 1  # some requests did share a call


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"amount": -5}, ["body", "deals", 0, "amount"]),
        ({"stage": "no_such_stage"}, ["body", "deals", 0, "stage"]),
        ({"forecast_category": "maybe"}, ["body", "deals", 0, "forecast_category"]),
        ({"add_stakeholders": ["mascot"]}, ["body", "deals", 0, "add_stakeholders", 0]),
        ({"colour": "red"}, ["body", "deals", 0, "colour"]),
        ({"expected_close_date": "soon"}, ["body", "deals", 0, "expected_close_date"]),
    ],
)
def test_what_if_validation_names_the_field(
    client: TestClient, world: World, deals: dict[str, Any], change: dict[str, Any], loc: list
) -> None:
    own, _ = _own_and_other(deals, world)
    body = {"deals": [{"deal_id": own, **change}]}
    r = client.post("/v1/score", json=body, headers=world.headers("revops"))
    assert r.status_code == 422, r.text
    assert [e["loc"] for e in r.json()["detail"]] == [loc]


def test_what_if_refuses_empty_and_duplicate_lists(
    client: TestClient, world: World, deals: dict[str, Any]
) -> None:
    own, _ = _own_and_other(deals, world)
    empty = client.post("/v1/score", json={"deals": []}, headers=world.headers("revops"))
    assert empty.status_code == 422
    twice = {"deals": [{"deal_id": own}, {"deal_id": own}]}
    dup = client.post("/v1/score", json=twice, headers=world.headers("revops"))
    assert dup.status_code == 422 and dup.json()["detail"][0]["loc"] == [
        "body",
        "deals",
        1,
        "deal_id",
    ]


# --- models -------------------------------------------------------------------------------------
def test_models_lists_versions_aliases_metrics_and_curves(client: TestClient, world: World) -> None:
    r = client.get("/v1/models", headers=world.headers("manager"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["serving"] == world.registered and body["serving_error"] is None
    win = next(v for v in body["versions"] if v["name"] == "win_probability")
    assert win["aliases"] == ["champion"] and win["version"] == world.registered["win_probability"]
    assert {"auc", "brier", "log_loss", "ece"} <= set(win["metrics"])
    assert {"stage_default", "stage_historical", "naive_bayes"} <= set(win["baselines"])
    assert win["reliability"]["pipecast"] and len(win["reliability"]["pipecast"][0]) == 3


def test_promoting_the_champion_again_is_a_no_op(client: TestClient, world: World) -> None:
    v = world.registered["win_probability"]
    body = {"name": "win_probability", "version": v}
    r = client.post("/v1/models/promote", json=body, headers=world.headers("revops"))
    assert r.status_code == 200 and "already the champion" in r.json()["reason"]
    bad = client.post(
        "/v1/models/promote", json={"name": "nope", "version": "1"}, headers=world.headers("revops")
    )
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "name"]


def test_readiness_reports_models_and_store(client: TestClient, bare: TestClient) -> None:
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["models_loaded"] is True
    not_ready = bare.get("/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json()["store"] is True and not_ready.json()["models_loaded"] is False
    assert "no champion" in " ".join(not_ready.json()["detail"])


# --- no champion: fallback or 503, as documented -------------------------------------------
def test_without_a_champion_lists_fall_back_and_say_so(bare: TestClient, world: World) -> None:
    r = bare.get(f"/v1/deals/scores?as_of={AS_OF}", headers=world.headers("rep"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["method"] == "historical_stage_rates" and "no champion" in body["fallback_reason"]
    assert body["model_versions"] == {"win_probability": None, "slip": None}
    assert body["deals"] and {d["method"] for d in body["deals"]} == {"historical_stage_rates"}


def test_without_a_champion_what_if_is_503(bare: TestClient, world: World) -> None:
    deal = bare.get(f"/v1/deals/scores?as_of={AS_OF}", headers=world.headers("rep")).json()
    body = {"deals": [{"deal_id": deal["deals"][0]["deal_id"]}]}
    r = bare.post("/v1/score", json=body, headers=world.headers("rep"))
    assert r.status_code == 503 and "champion" in r.json()["detail"]


def test_a_retrain_refused_for_a_missing_store(world: World, tmp_path: Path) -> None:
    settings = world.settings(db=tmp_path / "none.duckdb", jobs_dir=tmp_path / "jobs")
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        r = c.post("/v1/models/retrain", json={}, headers=world.headers("revops"))
    assert r.status_code == 503 and not (tmp_path / "jobs").exists()


def test_openapi_documents_every_endpoint_with_models(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path, method in [
        ("/v1/deals/scores", "get"),
        ("/v1/deals/{deal_id}", "get"),
        ("/v1/score", "post"),
        ("/v1/models", "get"),
        ("/v1/models/retrain", "post"),
        ("/v1/jobs/{job_id}", "get"),
        ("/v1/models/promote", "post"),
        ("/readyz", "get"),
    ]:
        op = spec["paths"][path][method]
        ok = next(c for c in op["responses"] if c.startswith("2"))
        assert "$ref" in str(op["responses"][ok]), (path, method)
    assert {"DealScores", "DealDetail", "WhatIfRequest", "JobStatus"} <= set(
        spec["components"]["schemas"]
    )
