"""The pages in a real browser: Playwright driving Debian's Chromium against a real
``pipecast serve`` with a trained champion. Logins by keyboard as a rep, a manager and RevOps;
charts drawn; the numbers on the page equal the API's; a rep cannot open another rep's deal by
URL; the retrain button shows progress and ends with a new version; laptop and tablet widths.

Screenshots at 1280 px go to a temp folder, or to ``docs/screenshots`` with
``PIPECAST_SCREENSHOTS=docs/screenshots`` (how the README's were taken).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.live import live_server
from tests.served import FAST, World, build_world

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="no system Chromium")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("browser"))


@pytest.fixture(scope="module")
def base(world: World) -> Iterator[str]:
    env = world.env(PIPECAST_MODEL_REFRESH_SECONDS="0.5")
    with live_server(env, log=world.root / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = os.environ.get("PIPECAST_SCREENSHOTS")
    folder = Path(target) if target else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _page(browser: Any, base: str, width: int = 1280, height: int = 900) -> Any:
    context = browser.new_context(base_url=base, viewport={"width": width, "height": height})
    return context.new_page()


def _login(page: Any, key: str, next_path: str) -> None:
    """Log in with the keyboard only: the key field has the focus, type, Enter."""
    page.goto(f"/login?next={next_path}")
    assert page.evaluate("document.activeElement.id") == "key"
    page.keyboard.type(key)
    page.keyboard.press("Enter")
    page.wait_for_url(lambda url: url.split("/", 3)[-1] == next_path.lstrip("/"))


def _api(base: str, world: World, who: str, url: str) -> Any:
    r = httpx.get(f"{base}{url}", headers=world.headers(who), timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def _rows(page: Any) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = page.eval_on_selector_all(
        "#deals tbody tr[data-deal]",
        "rows => rows.map(r => ({id: r.dataset.deal, p: r.dataset.pWin, "
        "ev: r.dataset.expectedValue, owner: r.children[2].textContent.trim()}))",
    )
    return rows


@pytest.mark.parametrize("who", ["rep", "manager"])
def test_deals_page_shows_the_api_ranking(
    browser: Any, base: str, world: World, who: str, shots: Path
) -> None:
    page = _page(browser, base)
    _login(page, world.keys[who], "/deals")
    rows = _rows(page)
    api = _api(base, world, who, "/v1/deals/scores")
    assert rows and len(rows) == min(len(api["deals"]), 200)
    assert [r["id"] for r in rows] == [d["deal_id"] for d in api["deals"][: len(rows)]]
    for r, d in zip(rows, api["deals"], strict=False):
        assert float(r["p"]) == pytest.approx(d["p_win"], rel=1e-12)
        assert float(r["ev"]) == pytest.approx(d["expected_value"], rel=1e-12)
    if who == "rep":
        assert {r["owner"] for r in rows} == {world.rep}
    assert page.locator("#deals .reasons li").count() > 0  # reasons in words
    page.screenshot(path=str(shots / f"deals-{who}.png"), full_page=False)
    page.context.close()


def test_deal_detail_by_keyboard_and_another_reps_deal_is_404(
    browser: Any, base: str, world: World, shots: Path
) -> None:
    page = _page(browser, base)
    _login(page, world.keys["rep"], "/deals")
    first = page.locator("#deals tbody tr[data-deal] a").first
    deal_id = first.inner_text()
    first.focus()
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/deals/{deal_id}")
    detail = _api(base, world, "rep", f"/v1/deals/{deal_id}")
    kpi = page.locator('[data-metric="p_win"]').get_attribute("data-value")
    assert float(kpi) == pytest.approx(detail["score"]["p_win"], rel=1e-12)
    chart = page.locator("#timeline-chart svg")
    assert chart.locator("rect.stage").count() == len(detail["history"]["stages"]) > 0
    assert chart.locator("line.activity").count() == len(detail["history"]["activities"])
    page.screenshot(path=str(shots / "deal.png"), full_page=True)
    theirs = _api(base, world, "other_rep", "/v1/deals/scores?limit=1")["deals"][0]["deal_id"]
    response = page.goto(f"/deals/{theirs}")
    assert response.status == 404 and "unknown deal" in page.content()
    assert theirs not in page.locator("main").inner_text().replace(f"unknown deal '{theirs}'", "")
    page.context.close()


def test_models_page_shows_the_registry_and_the_reliability_diagram(
    browser: Any, base: str, world: World, shots: Path
) -> None:
    page = _page(browser, base)
    _login(page, world.keys["revops"], "/models")
    api = _api(base, world, "revops", "/v1/models")
    champion = next(
        v for v in api["versions"] if v["name"] == "win_probability" and "champion" in v["aliases"]
    )
    row = page.locator(
        f'#versions tr[data-model="win_probability"][data-version="{champion["version"]}"]'
    )
    brier = row.locator('[data-metric="brier"]').inner_text()
    assert float(brier) == pytest.approx(champion["metrics"]["brier"], abs=5e-5)
    curves = page.locator("#reliability-chart svg polyline.curve")
    assert curves.count() == len(champion["reliability"]) >= 2
    assert page.locator("#baselines tr[data-method]").count() == 1 + len(champion["baselines"])
    page.screenshot(path=str(shots / "models.png"), full_page=True)
    page.context.close()


def test_a_manager_cannot_open_the_models_page(browser: Any, base: str, world: World) -> None:
    page = _page(browser, base)
    _login(page, world.keys["manager"], "/deals")
    assert page.locator('nav a[href="/models"]').count() == 0
    assert page.goto("/models").status == 403
    page.context.close()


@pytest.mark.slow  # the server's first forecast fits the forecast model (a minute or two here)
def test_the_forecast_page_shows_the_api_forecast(
    browser: Any, base: str, world: World, shots: Path
) -> None:
    # mid-quarter: the store's last export is the quarter's end, when nothing is left to forecast
    url = "/v1/forecast?as_of=2025-11-15"
    r = httpx.get(f"{base}{url}", headers=world.headers("manager"), timeout=600)
    assert r.status_code == 200, r.text
    api = r.json()
    page = _page(browser, base)
    page.set_default_timeout(120_000)
    _login(page, world.keys["manager"], "/forecast?as_of=2025-11-15")
    assert page.locator('nav a[href="/forecast"][aria-current="page"]').count() == 1
    chart = page.locator("#forecast-chart svg")
    assert chart.locator("rect.density").count() > 0
    box = chart.bounding_box()
    assert box is not None and box["width"] > 300 and box["height"] > 50
    assert page.locator("#forecast-chart svg line.quantile").count() == 3
    assert page.locator("#weeks-chart svg polyline.p50").count() == 1
    p50 = page.locator('[data-metric="p50"]').get_attribute("data-value")
    assert p50 is not None and float(p50) == api["pipecast"]["p50"]
    for name, value in api["methods"].items():
        row = page.locator(f'#methods tr[data-method="{name}"]')
        got = row.get_attribute("data-value")
        assert (float(got) if got else None) == value, name
    drivers = page.eval_on_selector_all(
        "#drivers tr[data-deal]", "rs => rs.map(r => r.dataset.deal)"
    )
    assert drivers == [d["deal_id"] for d in api["drivers"]]
    page.screenshot(path=str(shots / "forecast.png"), full_page=True)
    page.goto("/")
    assert page.url.endswith("/forecast")  # a manager's home page
    page.context.close()


def test_the_pipeline_page_shows_the_api_metrics(
    browser: Any, base: str, world: World, shots: Path
) -> None:
    page = _page(browser, base)
    _login(page, world.keys["manager"], "/pipeline?as_of=2025-11-15")
    api = _api(base, world, "manager", "/v1/pipeline/metrics?as_of=2025-11-15")
    shown: dict[str, str] = dict(
        page.eval_on_selector_all(
            ".kpi[data-metric]", "ks => ks.map(k => [k.dataset.metric, k.dataset.value])"
        )
    )
    assert len(shown) >= 6
    for key, value in shown.items():
        section, name = key.split(".")
        expected = api[section][name]
        if expected is None:
            assert value == "", key
        else:
            assert float(value) == pytest.approx(expected, rel=1e-9), key
    assert page.locator("#health-chart svg *").count() > 10  # the charts are drawn
    page.screenshot(path=str(shots / "pipeline.png"), full_page=False)
    page.context.close()


@pytest.mark.parametrize("width", [1280, 768])
def test_pages_fit_laptop_and_tablet_widths(
    browser: Any, base: str, world: World, width: int
) -> None:
    page = _page(browser, base, width=width, height=1000)
    _login(page, world.keys["revops"], "/deals")
    for path in ("/deals", "/pipeline", "/models"):
        page.goto(path)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, (path, width, overflow)  # wide tables scroll inside their box
    page.context.close()


@pytest.mark.slow
def test_retrain_button_shows_progress_and_ends_with_a_new_version(
    browser: Any, base: str, world: World, shots: Path
) -> None:
    page = _page(browser, base)
    _login(page, world.keys["revops"], "/models")
    before = {
        v["version"]
        for v in _api(base, world, "revops", "/v1/models")["versions"]
        if v["name"] == "win_probability"
    }
    button = page.locator("#retrain")
    button.evaluate("(b, body) => { b.dataset.body = body; }", json.dumps({"config": FAST}))
    button.focus()
    page.keyboard.press("Enter")
    box = page.locator("#retrain-progress")
    box.wait_for(state="visible")
    values: list[int] = []
    status = box.locator("[role=status]")
    for _ in range(600):
        values.append(int(box.locator("progress").evaluate("p => p.value")))
        if status.inner_text().startswith(("Done", "Failed")):
            break
        page.wait_for_timeout(250)
    text = status.inner_text()
    assert text.startswith("Done"), text
    assert any(0 < v < 100 for v in values) or values[-1] == 100
    page.wait_for_load_state("load")
    page.wait_for_timeout(2500)  # the page reloads itself after a finished job
    after = {
        row.get_attribute("data-version")
        for row in page.locator('#versions tr[data-model="win_probability"]').all()
    }
    new = after - before
    assert new, (before, after)
    assert re.search(rf"win_probability v{max(new, key=int)}", text)
    page.screenshot(path=str(shots / "models-retrained.png"), full_page=True)
    page.context.close()
