"""Web pages through TestClient: login with a key, roles, the same numbers as the API.

The real-browser tests (Playwright + Chromium) are in ``tests/test_browser.py``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from features.data.loading import load_export
from features.data.stages import load_stage_config
from features.data.store import Store
from features.synthetic.generator import generate, write_dataset
from serving.api.app import create_app
from serving.api.settings import ApiSettings
from serving.auth import KeyStore, Role

AS_OF = "2025-11-15"


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[TestClient, dict[str, str], dict[str, str]]]:
    root = tmp_path_factory.mktemp("web")
    write_dataset(generate(700, seed=23), root / "export")
    db = root / "store.duckdb"
    load_export(root / "export", db, stages=load_stage_config())
    with Store(db) as store:
        deals = store.read("deals")
    team = str(deals["team"].iloc[0])
    rep = str(deals.loc[deals["team"] == team, "owner"].iloc[0])
    other = str(deals.loc[deals["owner"] != rep, "owner"].iloc[0])
    settings = ApiSettings(db=db, keys_file=root / "keys.json")
    keys = KeyStore(settings.keys_file)
    tokens = {
        "revops": keys.create(Role.REVOPS)[1],
        "manager": keys.create(Role.MANAGER, team=team)[1],
        "rep": keys.create(Role.REP, owner=rep, team=team)[1],
    }
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client, tokens, {"team": team, "rep": rep, "other": other}


def _login(client: TestClient, token: str) -> None:
    client.cookies.clear()
    response = client.post(
        "/login", data={"key": token, "next": "/pipeline"}, follow_redirects=False
    )
    assert response.status_code == 303 and response.headers["location"] == "/pipeline"


def test_pages_need_a_login(site) -> None:
    client, _, _ = site
    client.cookies.clear()
    response = client.get("/pipeline?as_of=2025-11-15", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login?next=/pipeline")
    page = client.get(response.headers["location"])
    assert page.status_code == 200 and 'name="key"' in page.text


def test_a_wrong_key_is_refused_and_next_stays_on_this_site(site) -> None:
    client, tokens, _ = site
    client.cookies.clear()
    bad = client.post("/login", data={"key": "pc_nope", "next": "/pipeline"})
    assert bad.status_code == 401 and "unknown or revoked" in bad.text
    ok = client.post(
        "/login",
        data={"key": tokens["rep"], "next": "https://evil.example/"},
        follow_redirects=False,
    )
    assert ok.headers["location"] == "/"


def _kpi(html: str, key: str) -> float:
    match = re.search(rf'data-metric="{re.escape(key)}" data-value="([^"]*)"', html)
    assert match, key
    return float(match.group(1))


@pytest.mark.parametrize("who", ["revops", "manager", "rep"])
def test_pipeline_page_shows_the_api_numbers(site, who: str) -> None:
    client, tokens, _ = site
    _login(client, tokens[who])
    page = client.get(f"/pipeline?as_of={AS_OF}")
    assert page.status_code == 200, page.text
    api = client.get(
        f"/v1/pipeline/metrics?as_of={AS_OF}",
        headers={"Authorization": f"Bearer {tokens[who]}"},
    ).json()
    assert _kpi(page.text, "open_pipeline.value") == pytest.approx(api["open_pipeline"]["value"])
    assert _kpi(page.text, "closing_this_quarter.value") == pytest.approx(
        api["closing_this_quarter"]["value"]
    )
    assert "<svg" in page.text and 'id="review"' in page.text


def test_a_rep_page_holds_only_their_deals(site) -> None:
    client, tokens, names = site
    _login(client, tokens["rep"])
    page = client.get(f"/pipeline?as_of={AS_OF}")
    owners = set(
        re.findall(r'<tr data-deal="[^"]+"><td>.*?</td>\s*<td>([^<]+)</td>', page.text, re.S)
    )
    assert owners <= {names["rep"]}
    forbidden = client.get(f"/pipeline?as_of={AS_OF}&owner={names['other']}")
    assert forbidden.status_code == 403 and "Not in your scope" in forbidden.text


def test_logout_ends_the_session(site) -> None:
    client, tokens, _ = site
    _login(client, tokens["revops"])
    assert client.get("/pipeline", follow_redirects=False).status_code == 200
    client.post("/logout")
    assert client.get("/pipeline", follow_redirects=False).status_code == 303


def test_static_files_are_served_locally(site) -> None:
    client, _, _ = site
    css = client.get("/static/pipecast.css")
    js = client.get("/static/pipecast.js")
    assert css.status_code == 200 and js.status_code == 200
    page = client.get("/login")
    assert (
        "http://" not in page.text.replace("http://testserver", "") and "https://" not in page.text
    )


def test_the_review_table_is_cut_to_the_biggest_deals(site) -> None:
    client, tokens, _ = site
    _login(client, tokens["revops"])
    full = client.get(f"/pipeline?as_of={AS_OF}&review_limit=10000").text
    cut = client.get(f"/pipeline?as_of={AS_OF}&review_limit=3").text

    def review_rows(html: str) -> list[str]:
        table = re.search(r'<table id="review">.*?</table>', html, re.S)
        assert table, "no review table"
        return re.findall(r'<tr data-deal="([^"]+)"', table.group(0))

    rows_full, rows_cut = review_rows(full), review_rows(cut)
    assert len(rows_full) > 3 and rows_cut == rows_full[:3]
    assert 'id="review-more"' in cut and 'id="review-more"' not in full
    assert f"biggest of {len(rows_full)} deals" in cut
