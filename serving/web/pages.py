"""Web pages for managers, reps and RevOps: server-rendered, behind the same keys as the API.

A login with an API key puts the key's hash in a signed session cookie; every page then asks the
same :class:`~serving.auth.Caller` questions as the API, so a rep sees only their own deals here
too. Numbers come from the same library calls (and the same caches) as the API's answers; charts
are SVG drawn on the server, so the pages need no script library and work offline.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from features.errors import PipecastError
from features.pipeline.plots import pipeline_svg
from serving.api import views
from serving.api.deps import get_state
from serving.api.errors import status_of
from serving.api.state import AppState, Snapshot
from serving.auth import AuthError, Caller, KeyStore, Role, hash_key
from serving.web import charts

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
router = APIRouter(include_in_schema=False)


# --- formatting filters -------------------------------------------------------------------------
def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def money(value: Any) -> str:
    if _missing(value):
        return "–"
    v = float(value)
    if abs(v) >= 1e6:
        return f"{v / 1e6:,.2f}M"
    if abs(v) >= 1e4:
        return f"{v / 1e3:,.0f}K"
    return f"{v:,.0f}"


def pct(value: Any) -> str:
    return "–" if _missing(value) else f"{float(value):.0%}"


def ratio(value: Any) -> str:
    return "–" if _missing(value) else f"{float(value):.2f}×"


def days(value: Any) -> str:
    return "–" if _missing(value) else f"{float(value):.0f} d"


templates.env.filters.update(money=money, pct=pct, ratio=ratio, days=days)


# --- who is looking -----------------------------------------------------------------------------
class LoginRequired(Exception):
    """No (valid) session: send the browser to the login page."""


def page_caller(request: Request) -> Caller:
    keys: KeyStore = request.app.state.keys
    key_hash = request.session.get("key_hash")
    if not key_hash:
        raise LoginRequired
    try:
        return keys.caller_by_hash(str(key_hash))
    except AuthError:
        request.session.clear()
        raise LoginRequired from None


PageCaller = Annotated[Caller, Depends(page_caller)]
PageState = Annotated[AppState, Depends(get_state)]


def _safe_next(target: str | None) -> str:
    """Only a path on this site (no scheme, no ``//host``) may be a redirect target."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


def install(app: Any) -> None:
    """Redirect page requests without a session to the login page."""

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, exc: LoginRequired) -> Response:
        target = quote(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
        return RedirectResponse(f"/login?next={target}", status_code=303)


def render(request: Request, name: str, caller: Caller | None, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, {"caller": caller, **context})


def guarded(request: Request, caller: Caller, build: Callable[[], HTMLResponse]) -> HTMLResponse:
    """Render a page; a user-facing error becomes an error page with its status, not JSON."""
    try:
        return build()
    except PipecastError as err:
        return templates.TemplateResponse(
            request,
            "error.html",
            {"caller": caller, "message": str(err), "status": status_of(err)},
            status_code=status_of(err),
        )


# --- scope --------------------------------------------------------------------------------------
def page_scope(
    caller: Caller, snap: Snapshot, team: str | None, owner: str | None, as_of: str | None
) -> views.Scope:
    """The team / owner / as-of a page shows, as the caller may see it; the scope form sends an
    empty field (``?team=``) for "all", which means no filter here."""
    return views.request_scope(
        caller, snap, team=team or None, owner=owner or None, as_of=as_of or None
    )


def choices(caller: Caller, snap: Snapshot, scope: views.Scope) -> dict[str, list[str]]:
    """Teams and reps the caller may pick (a manager: the reps of their team)."""
    deals = snap.tables.deals
    visible = deals if caller.role is Role.REVOPS else deals[deals["team"] == caller.team]
    if scope.team is not None:
        visible = visible[visible["team"] == scope.team]
    teams = sorted(str(t) for t in deals["team"].dropna().unique())
    owners = sorted(str(o) for o in visible["owner"].dropna().unique())
    return {"teams": teams, "owners": owners}


# --- login --------------------------------------------------------------------------------------
@router.get("/login")
def login_form(request: Request, next: str | None = None) -> HTMLResponse:
    return render(request, "login.html", None, next=_safe_next(next), error=None)


@router.post("/login", response_model=None)
def login(
    request: Request,
    key: Annotated[str, Form()],
    next: Annotated[str, Form()] = "/",
) -> Response:
    keys: KeyStore = request.app.state.keys
    try:
        keys.authenticate(key)
    except AuthError as err:
        response = render(request, "login.html", None, next=_safe_next(next), error=str(err))
        response.status_code = 401
        return response
    request.session.clear()
    request.session["key_hash"] = hash_key(key.strip())
    return RedirectResponse(_safe_next(next), status_code=303)


@router.post("/logout")
def logout(request: Request) -> RedirectResponse:
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


@router.get("/")
def home(caller: PageCaller) -> RedirectResponse:
    # Managers and RevOps start from the forecast; a rep from their deals.
    target = "/deals" if caller.role is Role.REP else "/forecast"
    return RedirectResponse(target, status_code=303)


# --- forecast -----------------------------------------------------------------------------------
@router.get("/forecast")
def forecast_page(
    request: Request,
    caller: PageCaller,
    state: PageState,
    team: str | None = None,
    owner: str | None = None,
    as_of: str | None = None,
) -> HTMLResponse:
    def build() -> HTMLResponse:
        snap = state.store.current()
        served = state.models.current()
        settings = request.app.state.settings
        scope = page_scope(caller, snap, team, owner, as_of)
        fc, _ = views.forecast(
            state, snap, served, settings, caller, scope.as_of, team=scope.team, owner=scope.owner
        )
        weeks = views.forecast_weeks(
            state, snap, served, settings, scope.as_of, team=scope.team, owner=scope.owner
        )
        return render(
            request,
            "forecast.html",
            caller,
            page="forecast",
            fc=fc,
            weeks=weeks,
            chart=charts.forecast_svg(fc),
            weeks_chart=charts.weeks_svg(weeks, fc["target"]),
            scope=scope,
            choices=choices(caller, snap, scope),
        )

    return guarded(request, caller, build)


# --- pipeline health ----------------------------------------------------------------------------
@router.get("/pipeline")
def pipeline_page(
    request: Request,
    caller: PageCaller,
    state: PageState,
    team: str | None = None,
    owner: str | None = None,
    as_of: str | None = None,
    review_limit: int = 100,
) -> HTMLResponse:
    def build() -> HTMLResponse:
        snap = state.store.current()
        scope = page_scope(caller, snap, team, owner, as_of)
        m = views.metrics(state, snap, scope.as_of, team=scope.team, owner=scope.owner)
        review = views.review(state, snap, scope.as_of, team=scope.team, owner=scope.owner)
        chart = state.results.get_or_compute(
            ("pipeline-svg", snap.version, scope.as_of, scope.team, scope.owner),
            lambda: pipeline_svg(m, state.stages),
        )
        rows = list(zip(m.stage_conversion, m.time_in_stage, m.funnel.stages, strict=True))
        return render(
            request,
            "pipeline.html",
            caller,
            page="pipeline",
            m=m,
            review=review,
            # The biggest deals first (the pack is sorted by amount): a company-wide review of a
            # large store would be thousands of rows, megabytes no one reads in a meeting.
            review_rows=review.deals[: max(1, min(review_limit, 10_000))],
            chart=chart,
            stage_rows=rows,
            scope=scope,
            choices=choices(caller, snap, scope),
        )

    return guarded(request, caller, build)


# --- deals --------------------------------------------------------------------------------------
def _versions_text(versions: dict[str, Any]) -> str:
    named = [f"{k} v{v}" for k, v in versions.items() if v]
    return ", ".join(named) if named else "historical stage win rates (no champion model)"


@router.get("/deals")
def deals_page(
    request: Request,
    caller: PageCaller,
    state: PageState,
    team: str | None = None,
    owner: str | None = None,
    as_of: str | None = None,
    limit: int = 200,
) -> HTMLResponse:
    def build() -> HTMLResponse:
        snap = state.store.current()
        served = state.models.current()
        scope = page_scope(caller, snap, team, owner, as_of)
        frame = views.scores(state, snap, served, scope.as_of, team=scope.team, owner=scope.owner)
        shown = max(1, min(limit, 10_000))
        rows = views.records(frame.head(shown))
        for r in rows:
            r["stage_label"] = _stage_label(state, r["stage"])
        fallback = frame.attrs.get("fallback_reason")
        return render(
            request,
            "deals.html",
            caller,
            page="deals",
            deals=rows,
            total=len(frame),
            truncated=len(frame) > shown,
            scope=scope,
            choices=choices(caller, snap, scope),
            fallback=f"No champion model: scored with historical stage win rates ({fallback})."
            if fallback
            else None,
            versions_text=_versions_text(frame.attrs.get("model_versions", {})),
        )

    return guarded(request, caller, build)


def _stage_label(state: AppState, key: Any) -> str:
    if isinstance(key, str) and key in state.stages.by_key:
        return state.stages.stage(key).label
    return "–" if key is None else str(key)


@router.get("/deals/{deal_id}")
def deal_page(
    request: Request,
    caller: PageCaller,
    state: PageState,
    deal_id: str,
    as_of: str | None = None,
) -> HTMLResponse:
    def build() -> HTMLResponse:
        snap = state.store.current()
        served = state.models.current()
        when = views.resolve_as_of(as_of or None, snap)
        d = views.deal_detail(state, snap, served, caller, deal_id, when)
        labels = {k: s.label for k, s in state.stages.by_key.items()}
        score = d["score"]
        stage_key = score["stage"] if score else (d["history"]["stages"] or [{}])[-1].get("stage")
        d["stage_label"] = _stage_label(state, stage_key)
        d["amount"] = score["amount"] if score else None
        history = {
            **d["history"],
            "stages": [
                {**s, "label": labels.get(str(s["stage"]), str(s["stage"])), "at": s["at"][:10]}
                for s in d["history"]["stages"]
            ],
            "changes": [{**c, "at": c["at"][:10]} for c in d["history"]["changes"]],
            "activities": [{**a, "at": a["at"][:10]} for a in d["history"]["activities"]],
        }
        facts = [
            ("Team", d["team"] or "–"),
            ("Segment", d["segment"] or "–"),
            ("Product", d["product"] or "–"),
            ("Created", (d["created_at"] or "–")[:10]),
        ]
        if score:
            facts += [
                ("Expected close", str(score["expected_close_date"] or "–")[:10]),
                ("Forecast category", score["forecast_category"] or "–"),
                ("P(closes this quarter | win)", pct(score["p_close_this_quarter_given_win"])),
            ]
        if d["closed_at"]:
            facts.append(("Closed", d["closed_at"][:10]))
        sig = d["signals"]
        for key, label in (
            ("days_in_stage", "Days in stage"),
            ("days_since_last_activity", "Days since last activity"),
            ("activities_30d", "Activities (30 days)"),
        ):
            if key in sig and sig[key] is not None:
                facts.append((label, f"{sig[key]:.0f}"))
        fallback = d["fallback_reason"]
        return render(
            request,
            "deal.html",
            caller,
            page="deals",
            deal=d,
            score=score,
            flags=d["flags"],
            facts=facts,
            history=history,
            as_of_day=when.date().isoformat(),
            timeline=charts.timeline_svg(d["history"], d["created_at"], when, labels),
            fallback=f"No champion model: scored with historical stage win rates ({fallback})."
            if fallback
            else None,
        )

    return guarded(request, caller, build)


# --- models -------------------------------------------------------------------------------------
@router.get("/models")
def models_page(request: Request, caller: PageCaller, state: PageState) -> HTMLResponse:
    def build() -> HTMLResponse:
        caller.require(Role.REVOPS)
        versions = views.model_versions(state)
        served = state.models.current()
        champion = next(
            (v for v in versions if v["name"] == "win_probability" and "champion" in v["aliases"]),
            None,
        )
        latest = next((v for v in versions if v["name"] == "win_probability"), None)
        shown = champion or latest
        curves = shown["reliability"] if shown else {}
        return render(
            request,
            "models.html",
            caller,
            page="models",
            versions=versions,
            serving=served.versions,
            serving_error=state.models.last_error,
            shown=shown,
            reliability=charts.reliability_svg(curves) if curves else None,
            metric_names=("auc", "brier", "log_loss", "ece"),
        )

    return guarded(request, caller, build)
