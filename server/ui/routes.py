"""The dashboard's pages under ``/ui``: server-rendered, same process, same tokens.

Each page calls the same services as the REST API with the signed-in token's
principal, so a viewer can read and never act (the services refuse, and the pages
show no controls). Every POST needs the session's CSRF token and a same-origin
``Origin`` when the browser sends one. Service errors become an HTML page with the
problem's code; an expired or revoked token sends the browser back to sign-in.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Final
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, PackageLoader, select_autoescape

from server.api.deps import PrincipalDep, ServicesDep
from server.api.problems import note_refusal
from server.services.auth import Principal
from server.ui import charts, views
from server.ui.sessions import SESSION_COOKIE, Session, SessionStore
from shared import routes
from shared.errors import AuthError, FedsegError, Forbidden, InvalidInput
from shared.routes import BUNDLE_CONTENT_TYPE
from shared.schemas import SignInLink

STATIC_DIR: Final = Path(__file__).parent / "static"
MAX_FORM_BYTES: Final = 8192
AUDIT_WINDOW: Final = 1000

_templates = Environment(
    loader=PackageLoader("server.ui", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


class SignInRequired(Exception):
    """No session, or its token no longer authenticates."""


class _PageRoute(APIRoute):
    """Renders service errors as an HTML page and a lost session as a redirect."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except SignInRequired:
                response = RedirectResponse("/ui/login", status_code=303)
                response.delete_cookie(SESSION_COOKIE, path="/ui")
                return response
            except FedsegError as exc:
                return render(
                    "error.html",
                    status=exc.http_status,
                    user=None,
                    code=exc.code,
                    message=exc.message,
                )

        return handle


pages = APIRouter(prefix="/ui", include_in_schema=False, route_class=_PageRoute)
links = APIRouter(tags=["dashboard"])


@dataclass(frozen=True, slots=True)
class User:
    """The signed-in person: who the token is, and the session it came with."""

    principal: Principal
    session: Session

    @property
    def is_admin(self) -> bool:
        """Whether to show (and allow) actions."""
        return self.principal.role == "admin"


def sessions_of(request: Request) -> SessionStore:
    """The app's session store, built by `install`."""
    store: SessionStore = request.app.state.ui_sessions
    return store


async def current_user(request: Request, services: ServicesDep) -> User:
    """The session's principal, authenticated again now (revocation applies at once)."""
    store = sessions_of(request)
    session_id = request.cookies.get(SESSION_COOKIE)
    session = store.get(session_id)
    if session is None:
        raise SignInRequired
    try:
        principal = await services.auth.authenticate(f"Bearer {session.token}")
    except AuthError:
        store.close(session_id)
        raise SignInRequired from None
    return User(principal=principal, session=session)


UserDep = Annotated[User, Depends(current_user)]


def render(name: str, *, status: int = 200, **context: Any) -> HTMLResponse:
    """A template rendered with autoescaping: every value from a site or admin is text."""
    html = _templates.get_template(name).render(**context)
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})


async def read_form(request: Request) -> dict[str, str]:
    """A small urlencoded form (first value of each field); refuses large bodies."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise InvalidInput("form too large")
    fields = parse_qs(body.decode("utf-8", errors="replace"), max_num_fields=20)
    return {key: values[0] for key, values in fields.items() if values}


def check_origin(request: Request) -> None:
    """Browsers send Origin on POST: it must be this server."""
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
        raise Forbidden("cross-origin form refused", code="csrf")


async def checked_form(request: Request, user: User) -> dict[str, str]:
    """The form of an action, after the CSRF and origin checks."""
    check_origin(request)
    form = await read_form(request)
    if not user.session.csrf_matches(form.get("csrf")):
        raise Forbidden("the form's CSRF token is missing or wrong", code="csrf")
    return form


def bearer_token(request: Request) -> str:
    """The raw bearer token of an API call (already authenticated by `PrincipalDep`)."""
    return request.headers.get("authorization", "").partition(" ")[2].strip()


# --- sign-in ---------------------------------------------------------------------------


@pages.get("/login")
async def login_page() -> HTMLResponse:
    """Paste an admin or viewer token once."""
    return render("login.html", user=None, error=None)


@pages.post("/login")
async def login(request: Request, services: ServicesDep) -> Response:
    """Check the token, open a session, set the HttpOnly cookie."""
    check_origin(request)
    failures = request.app.state.auth_failures
    address = request.client.host if request.client else "unknown"
    wait = failures.retry_after(address)
    if wait is not None:
        page = render(
            "login.html", status=429, user=None, error=f"Too many failed sign-ins: wait {wait} s."
        )
        page.headers["Retry-After"] = str(wait)
        return page
    token = (await read_form(request)).get("token", "").strip()
    try:
        principal = await services.auth.authenticate(f"Bearer {token}")
    except AuthError as exc:
        failures.add(address)  # the same throttle as the API's failed logins
        note_refusal(request, exc.http_status, exc.code)
        return render("login.html", status=401, user=None, error="That token was not accepted.")
    if principal.role not in ("admin", "viewer"):
        return render(
            "login.html", status=403, user=None, error="Use an admin or viewer token here."
        )
    return _signed_in(request, token)


@pages.get("/signin")
async def sign_in_link(request: Request, code: Annotated[str, Query(max_length=128)]) -> Response:
    """A one-time link from ``fedseg simulate``: spent on first use."""
    token = sessions_of(request).redeem_link(code)
    if token is None:
        return render("login.html", status=401, user=None, error="That sign-in link is spent.")
    return _signed_in(request, token)


@pages.post("/logout")
async def logout(request: Request, user: UserDep) -> Response:
    """End the session."""
    await checked_form(request, user)
    sessions_of(request).close(request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/ui")
    return response


@links.post(routes.UI_SIGN_IN_LINKS, status_code=201, summary="One-time dashboard link")
async def create_sign_in_link(
    request: Request, principal: PrincipalDep, token: Annotated[str, Depends(bearer_token)]
) -> SignInLink:
    """An admin mints a link that signs a browser in as itself, once, within 10 minutes."""
    principal.require_admin()
    code = sessions_of(request).mint_link(token)
    return SignInLink(path=f"/ui/signin?code={code}")


def _signed_in(request: Request, token: str) -> Response:
    session_id, _ = sessions_of(request).open(token)
    response = RedirectResponse("/ui/", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        session_id,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/ui",
    )
    return response


# --- pages -----------------------------------------------------------------------------


@pages.get("/")
async def runs_page(user: UserDep, services: ServicesDep) -> HTMLResponse:
    """Every run: status, progress, times, model, sites, privacy."""
    runs = await services.runs.list_runs(user.principal)
    return render(
        "runs.html",
        user=user,
        runs=list(reversed(runs)),
        progress=views.progress_label,
        privacy=views.privacy_label,
    )


@pages.get("/runs/{run_id}")
async def run_page(
    run_id: str,
    user: UserDep,
    services: ServicesDep,
    region: Annotated[str, Query(pattern="^(mean|tc|wt|et)$")] = "mean",
) -> HTMLResponse:
    """One run: live round, Dice per site, ε per site, declines, timeline, models."""
    run = await services.runs.get(run_id, user.principal)
    rounds = await services.runs.rounds(run_id, user.principal)
    models = await services.runs.models(run_id, user.principal)
    dice = charts.line_chart(
        views.dice_series(rounds, region), x_title="model version", y_title="Dice", y_max=1.0
    )
    epsilon = charts.line_chart(
        views.epsilon_series(rounds), x_title="round", y_title="cumulative ε"
    )
    return render(
        "run.html",
        user=user,
        run=run,
        region=region,
        regions=views.REGIONS,
        dice=dice,
        epsilon=epsilon,
        declines=views.declines(rounds),
        timeline=views.timeline(rounds),
        live=views.live_round(rounds, datetime.now(UTC)),
        models=models,
        privacy=views.privacy_label(run.config),
        progress=views.progress_label(run),
    )


@pages.get("/runs/{run_id}/live")
async def live_panel(run_id: str, user: UserDep, services: ServicesDep) -> HTMLResponse:
    """The live round as an HTML fragment; the page's script swaps it in every 2 s."""
    run = await services.runs.get(run_id, user.principal)
    rounds = await services.runs.rounds(run_id, user.principal)
    return render(
        "live.html", run=run, live=views.live_round(rounds, datetime.now(UTC)), fragment=True
    )


@pages.post("/runs/{run_id}/start")
async def start_run(
    run_id: str, request: Request, user: UserDep, services: ServicesDep
) -> Response:
    """Start a created run (admin)."""
    await checked_form(request, user)
    await services.runs.start(run_id, user.principal)
    return RedirectResponse(f"/ui/runs/{run_id}", status_code=303)


@pages.post("/runs/{run_id}/stop")
async def stop_run(run_id: str, request: Request, user: UserDep, services: ServicesDep) -> Response:
    """Stop a run (admin)."""
    await checked_form(request, user)
    await services.runs.stop(run_id, user.principal)
    return RedirectResponse(f"/ui/runs/{run_id}", status_code=303)


@pages.get("/runs/{run_id}/models/{version}/bundle")
async def download_model(
    run_id: str,
    version: Annotated[int, PathParam(ge=0, le=100_000)],
    user: UserDep,
    services: ServicesDep,
) -> Response:
    """The signed bundle of a model version, as a file (admin)."""
    user.principal.require_admin()
    bundle = await services.runs.bundle(run_id, version, user.principal)
    return Response(
        bundle.data,
        media_type=BUNDLE_CONTENT_TYPE,
        headers={"Content-Disposition": f'attachment; filename="{run_id}-v{version}.tar"'},
    )


@pages.get("/sites")
async def sites_page(user: UserDep, services: ServicesDep) -> HTMLResponse:
    """Every site: enrollment state, key fingerprint, last seen."""
    sites = await services.sites.list_sites(user.principal)
    return render("sites.html", user=user, sites=sites)


@pages.post("/sites/{name}/revoke")
async def revoke_site(
    name: str, request: Request, user: UserDep, services: ServicesDep
) -> Response:
    """Revoke a site's credential (admin)."""
    await checked_form(request, user)
    await services.sites.revoke(name, user.principal)
    return RedirectResponse("/ui/sites", status_code=303)


@pages.get("/audit")
async def audit_page(
    user: UserDep,
    services: ServicesDep,
    actor: Annotated[str, Query(max_length=200)] = "",
    action: Annotated[str, Query(max_length=200)] = "",
) -> HTMLResponse:
    """The newest audit events, filtered by actor and action (substring match)."""
    events = await services.operations.audit(
        user.principal, limit=AUDIT_WINDOW, after=0, newest=True
    )
    shown = [
        event
        for event in events
        if actor.lower() in event.actor.lower() and action.lower() in event.action.lower()
    ]
    chain = await services.audit.verify(user.principal)
    return render(
        "audit.html",
        user=user,
        events=shown,
        actor=actor,
        action=action,
        window=AUDIT_WINDOW,
        chain=chain,
    )
