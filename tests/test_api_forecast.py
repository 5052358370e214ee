"""GET /v1/forecast and the forecast page through TestClient: roles and scopes (no driver from
outside the caller's scope), 404/422, the cache, and the page's numbers equal to the API's.

The store has 900 generated deals and no champion; the forecast model samples with the smallest
configuration ``ModelConfig`` allows (the sampler is checked in ``test_forecast_model``), past
quarters scored with stage win rates. The one cold fit (mostly nutpie's compile) is shared by
the module.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from serving.api.app import create_app
from tests.served import World, build_world

AS_OF = "2025-11-15"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("forecast"), champion=False)


@pytest.fixture(scope="module")
def client(world: World) -> Iterator[TestClient]:
    with TestClient(create_app(world.settings()), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def company(client: TestClient, world: World) -> dict[str, Any]:
    r = client.get(f"/v1/forecast?as_of={AS_OF}", headers=world.headers("revops"))
    assert r.status_code == 200, r.text
    return r.json()


def _get(client: TestClient, world: World, who: str | None, query: str = "") -> Any:
    return client.get(f"/v1/forecast?as_of={AS_OF}&{query}", headers=world.headers(who))


def _team_of(world: World, owner: str) -> str:
    from features.data.store import Store

    with Store(world.db, read_only=True) as store:
        deals = store.read("deals")
    return str(deals.loc[deals["owner"] == owner, "team"].iloc[0])


def test_the_company_forecast_has_every_part(company: dict[str, Any]) -> None:
    d = company["pipecast"]
    assert company["quarter"] == "2025Q4" and company["scope"] == "company"
    assert d["p10"] <= d["p50"] <= d["p90"] and d["p10"] >= company["won_so_far"]
    grid = company["quantiles"]
    assert [p["q"] for p in grid] == pytest.approx([i / 20 for i in range(1, 20)])
    values = [p["value"] for p in grid]
    assert values == sorted(values)
    assert set(company["methods"]) == {
        "stage_weighted", "commit", "best_case", "historical_conversion"
    }  # fmt: skip
    assert company["methods"]["commit"] <= company["methods"]["best_case"]
    ind = company["independent_stage_sim"]
    assert ind["p10"] <= ind["p50"] <= ind["p90"]
    mv = company["model_versions"]
    assert re.fullmatch(r"[0-9a-f]{16}", mv["forecast_config_hash"])
    assert mv["deal_models"] == {"win_probability": None, "slip": None}
    assert mv["deal_models_fallback"]  # no champion: says so
    assert mv["history_in_warmup"] == []  # long after the data start
    assert {"divergences", "max_rhat", "min_ess_bulk", "promotable"} <= set(company["diagnostics"])
    assert company["drivers"], "a 900-deal company quarter has deals that move the P50"
    for x in company["drivers"]:
        assert x["swing"] == pytest.approx(x["p50_if_won"] - x["p50_if_not"])


@pytest.mark.parametrize(
    ("who", "query", "status"),
    [
        (None, "", 401),
        ("bad", "", 401),
        ("rep", "", 200),
        ("rep", "owner={other_rep}", 403),
        ("rep", "team={other_team}", 403),
        ("manager", "", 200),
        ("manager", "team={other_team}", 403),
        ("manager", "owner={other_rep}", 403),
        ("revops", "team={other_team}", 200),
        ("revops", "team=no-such-team", 404),
        ("revops", "owner=no-such-rep", 404),
        ("revops", "quarter=2031Q1", 404),
        ("revops", "quarter=2025Q5", 422),
        ("revops", "quarter=2025Q3", 422),  # as_of 2025-11-15 is outside it
        ("revops", "as_of=not-a-date", 422),
    ],
)
def test_roles_and_errors(
    client: TestClient, world: World, company: dict[str, Any], who: str | None, query: str,
    status: int,
) -> None:  # fmt: skip
    q = query.format(other_rep=world.other_rep, other_team=world.other_team)
    r = _get(client, world, who, q)
    assert r.status_code == status, r.text
    if status == 401:
        assert r.headers["www-authenticate"] == "Bearer"
    if status == 422:
        assert r.json()["detail"]


def test_a_bad_quarter_names_the_field(client: TestClient, world: World) -> None:
    r = client.get("/v1/forecast?quarter=Q4-2025", headers=world.headers("revops"))
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["query", "quarter"]


def test_a_quarter_without_as_of_forecasts_from_its_last_data(
    client: TestClient, world: World, company: dict[str, Any]
) -> None:
    r = client.get("/v1/forecast?quarter=2025Q4", headers=world.headers("revops"))
    assert r.status_code == 200, r.text
    assert r.json()["quarter"] == "2025Q4"


def test_a_rep_forecast_is_of_their_own_deals_only(
    client: TestClient, world: World, company: dict[str, Any]
) -> None:
    r = _get(client, world, "rep")
    body = r.json()
    assert body["scope"] == f"owner:{world.rep}"
    assert {x["owner"] for x in body["drivers"]} <= {world.rep}
    other = _get(client, world, "other_rep").json()
    assert other["scope"] == f"owner:{world.other_rep}"
    assert {x["owner"] for x in other["drivers"]} <= {world.other_rep}
    ids = {x["deal_id"] for x in body["drivers"]}
    assert not ids & {x["deal_id"] for x in other["drivers"]}
    # the company's drivers include other reps' deals: the filter is doing something
    assert {x["owner"] for x in company["drivers"]} - {world.rep}


def test_a_manager_forecast_is_of_their_team(
    client: TestClient, world: World, company: dict[str, Any]
) -> None:
    body = _get(client, world, "manager").json()
    assert body["scope"] == f"team:{world.team}"
    assert body["drivers"]
    assert {_team_of(world, x["owner"]) for x in body["drivers"]} == {world.team}
    assert body["pipecast"]["p50"] < company["pipecast"]["p50"]


def test_a_repeated_forecast_is_a_cache_hit(
    client: TestClient, world: World, company: dict[str, Any]
) -> None:
    first = _get(client, world, "revops", f"team={world.other_team}")
    t0 = time.perf_counter()
    again = _get(client, world, "revops", f"team={world.other_team}")
    elapsed = time.perf_counter() - t0
    assert first.status_code == again.status_code == 200
    assert again.headers["x-pipecast-cache"] == "hit"
    assert again.json() == first.json()
    assert elapsed < 0.5, elapsed


def test_the_forecast_page_shows_the_api_numbers(
    client: TestClient, world: World, company: dict[str, Any]
) -> None:
    api = _get(client, world, "manager").json()
    client.post("/login", data={"key": world.keys["manager"], "next": "/"})
    try:
        home = client.get("/", follow_redirects=False)
        assert home.headers["location"] == "/forecast"
        page = client.get(f"/forecast?as_of={AS_OF}")
        assert page.status_code == 200, page.text
        html = page.text
        assert 'href="/forecast" aria-current="page"' in html
        p50 = re.search(r'data-metric="p50" data-value="([^"]+)"', html)
        assert p50 and float(p50.group(1)) == api["pipecast"]["p50"]
        for name, value in api["methods"].items():
            if value is not None:
                assert f'data-method="{name}" data-value="{value}"' in html
        assert html.count("<svg") >= 2 and 'class="density"' in html
        rows = re.findall(r'<tr data-deal="([^"]+)">', html)
        assert rows == [x["deal_id"] for x in api["drivers"]]
        other = client.get(f"/forecast?as_of={AS_OF}&team={world.other_team}")
        assert other.status_code == 403
    finally:
        client.post("/logout")
