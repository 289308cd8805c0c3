"""The operator console: FastAPI pages (Italian) and a JSON API over the read models and streams.

It owns no rule of a service: it reads instance_list / instance_files / the event store, sends the
same commands as the CLI (services/cli/instances.py), and asks the state machine (contracts.states)
which actions an instance allows. Authorization is services/console/access.py, checked on the
server for every route through `guard`.

This module assembles the app (create_app) and serves the public routes (probes, login, OIDC, logout, home). The
rest: web.py (the frame every route passes: templates, security headers, `guard`, `route`, `page`, the routers),
labels.py (the Italian words), instance_pages.py, onboarding_pages.py, admin_pages.py (access log, Esercizio,
Utenti), json_api.py (/api).
"""

from __future__ import annotations

import contextlib
import secrets
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import structlog
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.console import admin_pages, auth, instance_pages, json_api, oidc, onboarding_pages
from services.console.access import (
    ANY_USER,
    LIST_INSTANCES,
    LIST_ONBOARDING,
    MANAGE_USERS,
    check_every_route_has_a_rule,
)
from services.console.access_watch import AccessWatch
from services.console.assets import FingerprintedStaticFiles, StaticAssets
from services.console.live import LiveFeed
from services.console.oidc import OidcLogin
from services.console.web import (
    ERROR_DETAILS,
    STATIC,
    Console,
    ConsoleApp,
    Ctx,
    NotLoggedIn,
    PageAssets,
    SecurityHeaders,
    _nav,
    api,
    console_of,
    keep_session,
    page,
    pages,
    request_principal,
    route,
    status_phrase,
    way_back,
)
from services.runtime import health
from services.runtime.broker import is_transient
from services.runtime.db import create_pool
from services.runtime.eventstore import EventStore
from services.runtime.filestore import FileStore
from services.runtime.settings import Settings

log = structlog.get_logger("console")
# Imported, these declare their routes on web.pages and web.api, which create_app includes.
ROUTE_MODULES = (instance_pages, onboarding_pages, admin_pages, json_api)


def console_checks(pool: asyncpg.Pool, feed: LiveFeed) -> dict[str, health.Check]:
    """What the health port's /readyz checks: what the console's own /readyz does (PostgreSQL, the Kafka feed)."""
    async def feed_ready() -> tuple[bool, str]:
        return (True, "sees the instance topics") if feed.ready.is_set() else (False, "not ready")

    return {"postgresql": health.postgres_check(pool), "kafka_feed": feed_ready}


def create_app(settings: Settings, static_dir: Path = STATIC) -> ConsoleApp:
    """The console over `settings`, serving the assets of `static_dir` (fingerprinted once, here)."""
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await create_pool(settings.database_url, min_size=1, max_size=10, reset=keep_session)
        feed, access = LiveFeed(settings.bootstrap_list()), AccessWatch(settings.database_url)
        app.state.console = Console(settings, pool, EventStore(pool, source="/flows/console"),
                                    FileStore(settings.files_dir), feed, access,
                                    OidcLogin(settings) if oidc.enabled(settings) else None)
        await feed.start()
        await access.start()
        try:
            # /healthz, /readyz and /metrics on FLOWS_HEALTH_PORT, as every service serves them (Prometheus scrapes
            # the console there); not when that is the console's own port, whose /healthz and /readyz answer anyway.
            port = settings.health_port if settings.health_port != settings.console_port else None
            async with health.serving("console", console_checks(pool, feed), settings.health_host, port):
                yield
        finally:
            await access.stop()
            await feed.stop()
            if isinstance(app, ConsoleApp):
                await app.give_back_kept()  # the list page's connection (web.py ConsoleApp): pool.close waits for it
            await pool.close()

    app = ConsoleApp(title="Console dei flussi sanitari", version="1", lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url="/openapi.json")
    assets = StaticAssets(static_dir, "/static")
    app.state.assets = PageAssets.of(assets)
    app.mount("/static", FingerprintedStaticFiles(assets), name="static")
    app.include_router(pages)
    app.include_router(api)

    app.add_middleware(SecurityHeaders)

    @app.exception_handler(NotLoggedIn)
    async def not_logged_in(request: Request, exc: NotLoggedIn) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": "autenticazione richiesta"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        if request.method == "GET" and request.headers.get("accept", "").startswith("text/event-stream"):
            return Response(status_code=401)
        target = "/login?" + urllib.parse.urlencode({"next": request.url.path})
        return RedirectResponse(target, status_code=303)

    # Starlette's class, not FastAPI's subclass: the router's own 404 (a path no route has) and 405 (a method the
    # path does not take), and the static files' 404, get the same Italian page (or API answer) as a route's.
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = exc.status_code
        title, message, api_detail = ERROR_DETAILS.get(code, ("Errore", "La richiesta non è andata a buon fine.",
                                                              "errore"))
        if code != 404 and exc.detail != status_phrase(code):  # a route's own message, in Italian: it says more
            message = api_detail = exc.detail
        headers = getattr(exc, "headers", None)
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": api_detail}, status_code=exc.status_code, headers=headers)
        # A signed-in user keeps the header with their name and menu on the error page (a way on, not a dead end).
        principal, console = None, console_of(request)
        if request.cookies.get(console.cookie_name):
            with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                principal = await request_principal(console, request)
        ctx = Ctx(principal, request) if principal is not None else None
        back, back_label = way_back(request.url.path, code) if ctx else ("/", "Vai alla pagina iniziale")
        response = page(ctx, "message.html", title, status=exc.status_code,
                        **({} if ctx else {"request": request}), message=message, level="danger", back=back,
                        back_label=back_label)
        if headers:
            response.headers.update(headers)
        return response

    # A page's parameter the console cannot read (`?da=abc` on a file or feedback page, a field a form lacks): the
    # page's Italian error naming the parameter and what it takes, with the header and a way back, not FastAPI's
    # English JSON. /api keeps FastAPI's answer, the one /openapi.json describes.
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        if request.url.path.startswith("/api/"):
            return await request_validation_exception_handler(request, exc)
        return await http_error(request, StarletteHTTPException(422, invalid_parameters(exc.errors())))

    # Anything else a request meets (PostgreSQL or Kafka down or cut, a bug): an Italian page that says what to do,
    # never Starlette's English "Internal Server Error". The error goes to the log with a reference the page shows,
    # so the help desk finds it; the page itself names no internal detail. Starlette still re-raises it afterwards
    # (the server logs the traceback).
    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        reference = secrets.token_hex(4).upper()
        transient = is_transient(exc)
        log.error("console.request_failed", reference=reference, method=request.method, path=request.url.path,
                  transient=transient, error=f"{type(exc).__name__}: {exc}"[:300])
        if transient:
            status, title, message = 503, "Servizio temporaneamente non disponibile", (
                "La console non raggiunge in questo momento il database o il broker della piattaforma. Riprovi tra "
                "qualche minuto: nulla di quanto già registrato è andato perso. Se stava eseguendo un'operazione, "
                f"controlli lo stato dell'istanza prima di ripeterla. Riferimento per l'assistenza: {reference}.")
        else:
            status, title, message = 500, "Errore interno", (
                "Si è verificato un errore inatteso e la richiesta non è stata completata. Se si ripete, comunichi "
                f"all'assistenza il riferimento {reference}.")
        headers = {"Retry-After": "30"} if transient else {}
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": message, "riferimento": reference}, status_code=status, headers=headers)
        path = request.url.path
        again = path if transient and request.method == "GET" and not path.startswith("//") else None
        response = page(None, "message.html", title, status=status, request=request, message=message,
                        level="danger", back="/", back_label="Vai alla pagina iniziale", again=again)
        response.headers.update(headers)
        return response

    check_every_route_has_a_rule(app.routes)
    return app


# What a parameter takes, by pydantic's error type, in the words of the pages' other errors ("atteso AAAA-MM-GG").
EXPECTED = {"int_parsing": "un numero intero", "int_type": "un numero intero", "int_from_float": "un numero intero",
            "date_parsing": "una data AAAA-MM-GG", "date_from_datetime_parsing": "una data AAAA-MM-GG",
            "bool_parsing": "true o false (oppure 1 o 0)"}


def invalid_parameters(errors: Any) -> str:
    """FastAPI's validation errors as one Italian sentence each: which parameter, the value given, what it takes."""
    said = []
    for e in errors:
        loc = [str(part) for part in e.get("loc", ()) if part not in ("query", "path", "body", "header", "cookie")]
        name = ".".join(loc) or "richiesta"
        if e.get("type") == "missing":
            said.append(f"Manca il parametro «{name}».")
        else:
            value = str(e.get("input", ""))[:50]
            said.append(f"Il parametro «{name}» vale {value!r}, che non è valido: atteso "
                        f"{EXPECTED.get(e.get('type', ''), 'un valore valido')}.")
    return " ".join(said) or "La richiesta non è valida."


# ---------------------------------------------------------------- probes and login (public)
@pages.get("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@pages.get("/readyz", include_in_schema=False)
async def readyz(request: Request) -> Response:
    console = console_of(request)
    try:
        await console.pool.fetchval("SELECT 1 FROM console_user LIMIT 1")
    except (OSError, asyncpg.PostgresError) as exc:
        return JSONResponse({"status": "database unavailable", "error": type(exc).__name__}, status_code=503)
    if not console.feed.ready.is_set():
        return JSONResponse({"status": "kafka feed not ready"}, status_code=503)
    return JSONResponse({"status": "ready"})


LOGIN_CSRF = "flows_login_csrf"


@pages.get("/login", include_in_schema=False)
async def login_form(request: Request, next: str = "/") -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    response = page(None, "login.html", "Accesso", request=request, login_csrf=token, utente="", error=None,
                    **_login_options(request, next))
    _set_cookie(request, response, LOGIN_CSRF, token, max_age=1800)
    return response


def _safe_next(next_url: str | None) -> str:
    """Only a path of this console (never another site: no open redirect)."""
    if not next_url or not next_url.startswith("/") or next_url.startswith("//") or "\\" in next_url:
        return "/"
    return next_url


def _login_options(request: Request, next_url: str | None) -> dict[str, Any]:
    """The login page's ways in, each bringing the user back to `next_url` (the page that asked for a login)."""
    console = console_of(request)
    next_url = _safe_next(next_url)
    return {"local_login": console.settings.console_local_login, "next_url": next_url, "oidc_url": (
        "/login/oidc?" + urllib.parse.urlencode({"next": next_url})) if console.oidc else None}


@pages.post("/login", include_in_schema=False)
async def login(request: Request) -> Response:
    console = console_of(request)
    form = await request.form()
    name, password, given = (str(form.get(k) or "") for k in ("utente", "password", "csrf"))
    # the page that asked for the login: the form's own field (the login page's `next`, carried through a failed try)
    next_url = str(form.get("next") or "") or request.query_params.get("next")
    if not console.settings.console_local_login:
        raise HTTPException(404)
    if not auth.csrf_ok(request.cookies.get(LOGIN_CSRF, ""), given):
        raise HTTPException(403, "Modulo di accesso scaduto: ricarichi la pagina e riprovi.")
    address = request.client.host if request.client else "unknown"
    try:
        user = await auth.authenticate(console.pool, name, password, address,
                                       max_failures=console.settings.console_login_max_failures,
                                       window_s=console.settings.console_login_window_s)
    except auth.Throttled:
        return page(None, "login.html", "Accesso", status=429, request=request, login_csrf=given, utente=name,
                    error="Troppi tentativi non riusciti: riprovi tra qualche minuto.",
                    **_login_options(request, next_url))
    if user is None:
        return page(None, "login.html", "Accesso", status=401, request=request, login_csrf=given, utente=name,
                    error="Utente o password non corretti.",
                    **_login_options(request, next_url))
    # Always a new session id (no fixation): a cookie set before login is dropped, never promoted.
    token = await auth.open_session(console.pool, user, console.settings.console_session_ttl_s,
                                    replaces=request.cookies.get(console.cookie_name))
    response = RedirectResponse(_safe_next(next_url), status_code=303)
    _set_cookie(request, response, console.cookie_name, token, max_age=console.settings.console_session_ttl_s)
    response.delete_cookie(LOGIN_CSRF, path="/")
    return response


def _set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    secure = console_of(request).settings.console_secure_cookies
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=True, secure=secure, samesite="strict")


# ---------------------------------------------------------------- OpenID Connect login (public)
OIDC_STATE = "flows_oidc_state"


def _redirect_uri(request: Request) -> str:
    configured = console_of(request).settings.console_oidc_redirect_url
    return configured or str(request.base_url).rstrip("/") + "/login/oidc/callback"


@pages.get("/login/oidc", include_in_schema=False)
async def oidc_start(request: Request, next: str = "/") -> Response:
    """Sends the browser to the identity provider (code flow, PKCE, state and nonce: services/console/oidc.py)."""
    console = console_of(request)
    if console.oidc is None:
        raise HTTPException(404)
    try:
        url, state = await console.oidc.start(console.pool, _redirect_uri(request), _safe_next(next))
    except oidc.OidcRefused as exc:
        log.warning("console.oidc_refused", reason=str(exc))
        raise HTTPException(503, exc.italian) from None
    response = RedirectResponse(url, status_code=303)
    # Lax, not Strict: the provider's redirect back is a cross-site navigation, which must carry it.
    response.set_cookie(OIDC_STATE, state, max_age=oidc.LOGIN_TTL_S, path="/login/oidc", httponly=True,
                        secure=console.settings.console_secure_cookies, samesite="lax")
    return response


@pages.get("/login/oidc/callback", include_in_schema=False)
async def oidc_callback(request: Request, code: str = "", state: str = "", error: str = "") -> Response:
    """The provider's answer: the ID token checked, the user made or refreshed from its claims, a new session."""
    console = console_of(request)
    if console.oidc is None:
        raise HTTPException(404)
    options = _login_options(request, "/")
    try:
        if error or not code:
            raise oidc.OidcRefused("Il fornitore di identità non ha concesso l'accesso.", f"OIDC error {error!r}")
        who, next_url = await console.oidc.finish(console.pool, _redirect_uri(request), state,
                                                  request.cookies.get(OIDC_STATE), code)
        await oidc.upsert_user(console.pool, who)
    except oidc.OidcRefused as exc:
        log.warning("console.oidc_refused", reason=str(exc))
        login_csrf = secrets.token_urlsafe(24)  # the page's password form (when local login is on) must work
        response = page(None, "login.html", "Accesso", status=401, request=request, login_csrf=login_csrf,
                        utente="", error=exc.italian, **options)
        _set_cookie(request, response, LOGIN_CSRF, login_csrf, max_age=1800)
        response.delete_cookie(OIDC_STATE, path="/login/oidc")
        return response
    token = await auth.open_session(console.pool, who.name, console.settings.console_session_ttl_s,
                                    replaces=request.cookies.get(console.cookie_name))
    # A page, not a redirect: the session cookie is SameSite=Strict, and a redirect chain that began on the
    # provider's site would not carry it; this page's own navigation is same-site.
    response = page(None, "oidc_done.html", "Accesso eseguito", request=request, next_url=_safe_next(next_url))
    _set_cookie(request, response, console.cookie_name, token, max_age=console.settings.console_session_ttl_s)
    response.delete_cookie(OIDC_STATE, path="/login/oidc")
    return response


@route(pages, "POST", "/logout", ANY_USER, "action", include_in_schema=False)
async def logout(ctx: Ctx) -> Response:
    request = ctx.request
    console = console_of(request)
    token = request.cookies.get(console.cookie_name)
    if token:
        await auth.close_session(console.pool, token)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(console.cookie_name, path="/")
    del ctx
    return response


@route(pages, "GET", "/", ANY_USER, "page", include_in_schema=False)
async def home(ctx: Ctx) -> Response:
    """Each role lands on its first page: the instances, the onboarding (desk, a structure), the users (admin)."""
    for rule, path in ((LIST_INSTANCES, "/istanze"), (LIST_ONBOARDING, "/onboarding"), (MANAGE_USERS, "/utenti")):
        if ctx.principal.role in rule.roles:
            return RedirectResponse(path, status_code=303)
    return page(ctx, "home.html", "Console dei flussi", nav=_nav(ctx.principal))


