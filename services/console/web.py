"""The console's web frame, shared by its pages: the templates, the security headers, the direct path of the
instance list, the guard every route passes (login, CSRF, role, entity: services/console/access.py), `route`,
`page`, and the two routers the pages and the JSON API are declared on (services/console/app.py assembles them)."""

from __future__ import annotations

import functools
import inspect
import os
import re
import tempfile
import typing
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import asyncpg
import jinja2
import structlog
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from starlette.requests import cookie_parser

from contracts.deadlines import italian_time
from contracts.italian import italian_date, italian_number
from contracts.onboarding import document_label
from services.console import auth
from services.console.access import (
    LIST_INSTANCES,
    LIST_ONBOARDING,
    MANAGE_USERS,
    READ_ACCESS_LOG,
    READ_OPS,
    REQUEST_LOAD,
    Rule,
    may,
    routed,
)
from services.console.access_watch import AccessWatch
from services.console.assets import StaticAssets
from services.console.labels import (
    ACCESS_LABELS,
    ACTOR_LABELS,
    CHANNEL_LABELS,
    COUNT_LABELS,
    EVENT_LABELS,
    FILE_KIND_LABELS,
    FLOW_TYPE_LABELS,
    ONBOARDING_KIND_LABELS,
    ONBOARDING_STATUS_LABELS,
    ROLE_LABELS,
    STATE_LABELS,
    badge,
    event_detail,
    state_class,
    switch_proposal,
    switch_slot,
    upload_platform,
)
from services.console.live import LiveFeed
from services.console.oidc import OidcLogin
from services.runtime.eventstore import EventStore
from services.runtime.filestore import FileStore, is_full
from services.runtime.settings import Settings

HERE = Path(__file__).resolve().parent
log = structlog.get_logger("console")
STATIC = HERE / "static"
VENDOR = "vendor/bootstrap-italia-2.18.3"  # under STATIC
PAGE_SIZE = 50
FILE_PAGE = 100


@dataclass(frozen=True)
class PageAssets:
    """Every page's `assets` (services/console/assets.py): the URLs of what base.html links, fingerprinted and
    resolved once at start-up (a call per link and render was a third of the list page's template time), `vendor`
    (Bootstrap Italia's directory URL, fingerprinted: its bundle builds the URLs of its fonts below it, from
    console.js's data-vendor), and `url(path)` for any other file under /static. `head`: base.html's links to them
    (_head.html), rendered once here, not at every page (five lookups and escapes of the same URLs)."""

    url: Callable[[str], str]
    vendor: str
    bootstrap_css: str
    bootstrap_js: str
    console_css: str
    console_js: str
    head: Markup

    @classmethod
    def of(cls, assets: StaticAssets) -> PageAssets:
        urls = {"vendor": assets.directory_url(VENDOR),
                "bootstrap_css": assets.url(f"{VENDOR}/css/bootstrap-italia.min.css"),
                "bootstrap_js": assets.url(f"{VENDOR}/js/bootstrap-italia.bundle.min.js"),
                "console_css": assets.url("console.css"), "console_js": assets.url("console.js")}
        return cls(assets.url, **urls, head=Markup(templates.get_template("_head.html").render(assets=urls)))


class _PagesEnvironment(jinja2.Environment):
    """Jinja's environment, with each template's globals one plain dict (the environment's, taken when the template
    is loaded) instead of Jinja's ChainMap over them: every render copies the globals into its context twice (its
    variables and their names), and over a ChainMap each copy walks the ~25 globals in Python, ~15 us a page of the
    ~50 us of the list page's template (bench/console.py). Every global is set below, at import, before any
    template is loaded, as Jinja asks anyway ("avoid modifying any globals after a template is loaded")."""

    def make_globals(self, d: MutableMapping[str, Any] | None) -> MutableMapping[str, Any]:
        return {**self.globals, **(d or {})}


templates = Jinja2Templates(env=_PagesEnvironment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                                                autoescape=jinja2.select_autoescape()))  # as Starlette makes it
# The templates ship with the code: never re-stat them on every render (FLOWS_CONSOLE_TEMPLATES_RELOAD=1
# for template work).
templates.env.auto_reload = os.environ.get("FLOWS_CONSOLE_TEMPLATES_RELOAD") == "1"
templates.env.filters["ora"] = lambda when, fmt="%d/%m/%Y %H:%M:%S": italian_time(when, fmt)
templates.env.filters["numero"] = lambda n: "" if n is None else italian_number(n)  # 597.507 (contracts.italian)
templates.env.filters["giorno"] = lambda day: "" if day is None else italian_date(day)  # 05/08/2020


def quanti(n: int, one: str, many: str) -> str:
    """A count and its noun, the number as Italians write it: "1 avviso", "1.500 errori"."""
    return f"{italian_number(n)} {one if n == 1 else many}"


templates.env.globals.update(state_label=lambda s: STATE_LABELS.get(s, s), state_class=state_class,
                             role_labels=ROLE_LABELS, badge=badge, access_label=lambda w: ACCESS_LABELS.get(w, w),
                             channel_label=lambda c: CHANNEL_LABELS.get(c or "console", c),
                             flow_type_label=lambda t: FLOW_TYPE_LABELS.get(t, t),
                             event_label=lambda t: EVENT_LABELS.get(t, t),
                             actor_label=lambda a: ACTOR_LABELS.get(a, a), upload_platform=upload_platform,
                             count_label=lambda k: COUNT_LABELS.get(k, k),
                             file_kind_label=lambda k: FILE_KIND_LABELS.get(k, k), event_detail=event_detail,
                             document_label=document_label,
                             onboarding_kind_label=lambda k: ONBOARDING_KIND_LABELS.get(k, k),
                             onboarding_status_label=lambda k: ONBOARDING_STATUS_LABELS.get(k, k),
                             onboarding_statuses=ONBOARDING_STATUS_LABELS, switch_proposal=switch_proposal,
                             switch_slot=switch_slot,
                             quanti=quanti)


# font-src data:: Bootstrap Italia's CSS embeds one font (VideoJS's icons) as a data: URL, which default-src 'self'
# refused on every page (a violation only the browser's console showed); fonts from anywhere else stay refused.
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"), (b"referrer-policy", b"same-origin"),
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; font-src 'self' data:; "
                                 b"style-src 'self' 'unsafe-inline'; script-src 'self'; object-src 'none'; "
                                 b"frame-ancestors 'none'; base-uri 'self'; form-action 'self'"),
]


def _with_security_headers(scope: Any, send: Any) -> Any:
    """`send`, adding the security headers to the answer's start (those it does not set itself), and no-store on
    every answer that sets no Cache-Control of its own (the static assets set theirs: services/console/assets.py)."""
    cache = [(b"cache-control", b"no-store")]

    async def send_with_headers(message: Any) -> None:
        if message["type"] == "http.response.start":
            names = {k.lower() for k, _ in message.get("headers", [])}
            message["headers"] = [*message.get("headers", []),
                                  *[(k, v) for k, v in SECURITY_HEADERS + cache if k not in names]]
        await send(message)

    return send_with_headers


_ADDED_HEADERS = [*SECURITY_HEADERS, (b"cache-control", b"no-store")]  # what _with_security_headers adds to a page
_ADDED_NAMES = frozenset(k for k, _ in _ADDED_HEADERS)


async def _send_direct(response: Response, scope: Any, receive: Any, send: Any) -> None:
    """A direct page's answer: a plain HTMLResponse (no background task, none of the added headers its own) sent as
    its two ASGI messages with the headers _with_security_headers gives it, in the same order, from a list built
    once (the wrapper's closures, header-name set and list copies were ~10 us a page); anything else through
    the wrapper."""
    headers = response.raw_headers
    if type(response) is not HTMLResponse or response.background is not None or any(
            k in _ADDED_NAMES for k, _ in headers):
        await response(scope, receive, _with_security_headers(scope, send))
        return
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers + _ADDED_HEADERS})
    await send({"type": "http.response.body", "body": response.body})


class SecurityHeaders:
    """Pure ASGI middleware (no per-request task, unlike @app.middleware): the headers of every answer,
    and no-store on every answer without a Cache-Control of its own."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, _with_security_headers(scope, send))


# The with_session pages (GET, no path parameter), by path: ConsoleApp calls them straight (see `route`).
DIRECT_PAGES: dict[str, Callable[[Request], Awaitable[Response]]] = {}
# In the scope of a request ConsoleApp answers directly: where its page takes its pool connection from (see `route`).
PAGE_LEASE = "flows.page_lease"


class ConsoleApp(FastAPI):
    """FastAPI, with one shortcut: a GET of a with_session page (the instance list) goes straight to its endpoint,
    the same guard and the same rule, without the middleware stack and the router's walk over every route
    (bench/console.py: ~0.25 ms a page in-process, a quarter of what the page adds to its SQL). Its answer gets the
    same security headers. Anything but an answer (no login, a role refused, a bad request, an error) is left to
    the ordinary path, which runs the request again through the app's handlers: the same 303, 404 or 500 as any
    route. The ordinary path still serves these pages too (HEAD, and the app mounted under another app).

    These pages run their one statement on a pool connection the app keeps between them (`kept`), not on one taken
    from the pool and given back at each page: asyncpg's acquire and release are a few coroutines, a task and two
    more turns of the event loop (~30 us and ~60 us of the console's CPU a page on the bench's machine). A page
    takes another from the pool when the kept one is busy (pages at the same time), and gives that back after the
    page is handed to the server (uvicorn's loop writes the page at the end of the turn in which it was sent, before
    the release's task runs). A connection a page failed on (its query, the database) goes back to the pool, which
    closes it if broken; the next page keeps another. Nothing of a request stays on the kept connection: the page
    runs one SELECT outside any transaction; the session is read in it at every page."""

    kept: asyncpg.Connection | None = None  # the kept connection, when there is one
    kept_busy = False  # a page runs on it

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        endpoint = DIRECT_PAGES.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "GET" else None
        if endpoint is not None:
            scope["app"] = self
            lease = scope[PAGE_LEASE] = PageLease(self)
            failed = True
            try:
                try:
                    response = await endpoint(Request(scope, receive))
                    failed = False
                except (NotLoggedIn, HTTPException):  # refused after a good query: the connection is sound
                    response, failed = None, False
                except Exception:  # answered below, by the ordinary path and its handlers
                    response = None
                if response is not None:
                    await _send_direct(response, scope, receive, send)
                    return
            finally:
                del scope[PAGE_LEASE]  # the ordinary path's run of the page gives its own connection back itself
                await lease.end(failed)
        await super().__call__(scope, receive, send)

    async def give_back_kept(self) -> None:
        """The kept connection back to the pool (before the pool closes: it waits for every connection out)."""
        kept, self.kept = self.kept, None
        if kept is not None:
            await self.state.console.pool.release(kept)


class PageLease:
    """A direct page's connection: the app's kept one when no other page holds it (the first page keeps one), else
    one of the pool's for this page only."""

    def __init__(self, app: ConsoleApp) -> None:
        self.app = app
        self.conn: asyncpg.Connection | None = None
        self.kept = False

    async def connection(self) -> asyncpg.Connection:
        app = self.app
        if not app.kept_busy:
            app.kept_busy = True  # before any await: a page arriving meanwhile takes one of the pool's
            if app.kept is None:
                try:
                    app.kept = await app.state.console.pool.acquire()
                except BaseException:
                    app.kept_busy = False
                    raise
            self.kept, self.conn = True, app.kept
        else:
            self.conn = await app.state.console.pool.acquire()
        return self.conn

    async def end(self, failed: bool) -> None:
        conn, app = self.conn, self.app
        if conn is None:
            return
        if not self.kept:
            await app.state.console.pool.release(conn)
            return
        app.kept_busy = False
        if failed or conn.is_closed():
            if app.kept is conn:
                app.kept = None
            await app.state.console.pool.release(conn)


class NotLoggedIn(Exception):
    pass


@dataclass
class Ctx:
    """What a guarded route gets: who asks, the instance row when the path names one, the request."""

    principal: auth.Principal
    request: Request
    row: asyncpg.Record | None = None
    found: Any = None  # what the route's `with_session` query returned with the principal (see `route`)

    @property
    def address(self) -> str:
        return self.request.client.host if self.request.client else "unknown"


@dataclass
class Console:
    settings: Settings
    pool: asyncpg.Pool
    store: EventStore
    files: FileStore
    feed: LiveFeed
    access: AccessWatch  # ends the open streams of a session or user at once (access_watch.py)
    oidc: OidcLogin | None = None  # set when OIDC login is configured (services/console/oidc.py)

    @property
    def cookie_name(self) -> str:
        # __Host- cookies must be Secure; plain-http test set-ups use the bare name.
        return "__Host-flows_session" if self.settings.console_secure_cookies else "flows_session"


def console_of(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


# A route's own query run in the same statement as the session lookup: given the request's pool connection, the
# SHA-256 of the session cookie and the request, the principal's row and the route's rows, or None when the session
# is not live.
SessionQuery = Callable[[asyncpg.Connection, bytes, Request], Awaitable[tuple[asyncpg.Record, Any] | None]]


def guard(rule: Rule) -> Callable[[Request], Awaitable[Ctx]]:
    """The dependency of every guarded route but the with_session pages: login, CSRF on forms, role, then the
    entity."""
    async def check(request: Request) -> Ctx:
        console = console_of(request)
        return await _admitted(console, request, rule, await request_principal(console, request))
    return check


def session_guard(rule: Rule, with_session: SessionQuery) -> Callable[[Request, asyncpg.Connection], Awaitable[Ctx]]:
    """The guard of a with_session page (see `route`), on the page's pool connection `conn`: the same checks as
    `guard`'s, the principal read in the statement of the page's rows."""
    async def check(request: Request, conn: asyncpg.Connection) -> Ctx:
        console = console_of(request)
        token = request_cookie(request, console.cookie_name)
        # One round trip for the session and the page's rows. The rows are the principal's own (the query filters
        # them by the session's user, as read in the same statement), and they are dropped unseen when the rule
        # refuses the role.
        answer = await with_session(conn, auth.token_sha256(token), request) if token else None
        if answer is None:
            raise NotLoggedIn()
        return await _admitted(console, request, rule, auth.principal_of(answer[0]), answer[1])
    return check


def request_cookie(request: Request, name: str) -> str | None:
    """The cookie `name` of the request, as `request.cookies` reads it (every Cookie header, each by Starlette's
    cookie_parser, the last of a name kept), without its Headers object and the dict of every cookie."""
    found = None
    for key, value in request.scope["headers"]:
        if key == b"cookie":
            found = cookie_parser(value.decode("latin-1")).get(name, found)
    return found


async def _admitted(console: Console, request: Request, rule: Rule, principal: auth.Principal | None,
                    found: Any = None) -> Ctx:
    """`principal`'s Ctx when `rule` lets it in: logged in, its role, the entity the path names, a form's CSRF."""
    if principal is None:
        raise NotLoggedIn()
    row, owner = None, None
    if rule.scope in ("instance", "act"):
        try:
            instance = int(request.path_params["instance"])
        except (KeyError, ValueError):
            raise HTTPException(404) from None
        row = await console.pool.fetchrow("SELECT * FROM instance_list WHERE instance = $1", instance)
        owner = row["ente"] if row is not None else None
    elif rule.scope == "request":
        row = await console.pool.fetchrow("SELECT * FROM onboarding_dashboard WHERE request_id = $1",
                                          str(request.path_params.get("request", "")))
        owner = row["structure_sts11"] if row is not None else None
    if not may(principal, rule, owner):
        raise HTTPException(404)
    # A browser session's POST carries the session's CSRF token in its form (an API key's does not:
    # no browser sends it on its own).
    if request.method == "POST" and not principal.name.startswith("api:"):
        form = await read_form(request)
        given = form.get("csrf")
        if not auth.csrf_ok(principal.csrf_token, given if isinstance(given, str) else None):
            raise HTTPException(403, "Modulo scaduto o non valido: ricarichi la pagina e riprovi.")
    return Ctx(principal, request, row, found)


UPLOAD_SPACE_REFUSED = ("Documento non ricevuto: spazio su disco esaurito sul server durante il caricamento. Non è "
                        "stato salvato né registrato nulla: riprovi più tardi (se il problema continua, avvisi "
                        "l'esercizio).")


async def read_form(request: Request) -> Any:
    """The request's form (Starlette caches it: the guard's read and the route's are one). A file part larger than
    1 MB is spooled to this server's temporary folder while it arrives: that disk full is answered 507 at once,
    nothing kept (Starlette closes the spooled files), and logged `store.full` for the operators."""
    try:
        return await request.form()
    except OSError as exc:
        if not is_full(exc):
            raise
        log.warning("store.full", path=tempfile.gettempdir(), route=request.url.path, step="form upload spooled",
                    error=f"{type(exc).__name__}: {exc}")
        raise HTTPException(507, UPLOAD_SPACE_REFUSED) from exc


def route(router: APIRouter, method: str, path: str, rule: Rule, kind: str, with_session: SessionQuery | None = None,
          **kw: Any) -> Callable[[Callable[..., Awaitable[Response]]], Any]:
    """Declares a guarded route: its rule goes to the route table (access.routed) and the handler,
    written as `async def handler(ctx: Ctx, ...)`, only runs after `guard(rule)` let the request in.
    `with_session` (a browser page of scope "none" only) fetches the page's rows in the session's own
    statement (`session_guard`), on the connection ConsoleApp lends it (or one of the pool's on the ordinary path):
    they reach the handler as `ctx.found`."""
    if with_session is not None and (rule.scope != "none" or router.prefix or method != "GET"):
        raise ValueError(f"{method} {path}: with_session is for the GET pages of scope 'none'")

    def register(fn: Callable[..., Awaitable[Response]]) -> Any:
        hints = typing.get_type_hints(fn)
        if with_session is not None:
            # The page takes nothing but its ctx: a plain Starlette route, without FastAPI's per-request parameter
            # and dependency resolution (bench/console.py: every step of Python per request shows in the ratio);
            # the same checks, the same rule in the route table.
            if set(inspect.signature(fn).parameters) != {"ctx"}:
                raise ValueError(f"{method} {path}: a with_session page takes only its ctx")
            check_session = session_guard(rule, with_session)

            async def endpoint(request: Request) -> Response:
                lease = request.scope.get(PAGE_LEASE)
                if lease is not None:  # ConsoleApp's direct path: its kept connection, or one it gives back itself
                    return await fn(await check_session(request, await lease.connection()))
                pool = console_of(request).pool
                conn = await pool.acquire()
                try:
                    return await fn(await check_session(request, conn))
                finally:
                    await pool.release(conn)

            endpoint.__name__ = fn.__name__
            DIRECT_PAGES[path] = endpoint
            return routed(router, method, path, rule, kind, plain=True, **kw)(endpoint)

        @functools.wraps(fn)
        async def handler(*, guarded: Ctx, **params: Any) -> Response:
            return await fn(guarded, **params)

        # The guard is a dependency: FastAPI runs it before it reads any parameter or body, so a request
        # without login or rule is refused (401/303/404) before any validation answers.
        params = [p.replace(annotation=hints.get(n, p.annotation))
                  for n, p in inspect.signature(fn).parameters.items() if n != "ctx"]
        params.append(inspect.Parameter("guarded", inspect.Parameter.KEYWORD_ONLY, annotation=Ctx,
                                        default=Depends(guard(rule))))
        handler.__signature__ = inspect.Signature(params, return_annotation=Response)  # type: ignore[attr-defined]
        del handler.__wrapped__  # FastAPI must read the signature above, not the handler's own
        return routed(router, method, path, rule, kind, **kw)(handler)
    return register


async def request_principal(console: Console, request: Request) -> auth.Principal | None:
    header = request.headers.get("authorization", "")
    if request.url.path.startswith("/api/") and header.lower().startswith("bearer "):
        return await auth.api_key_principal(console.pool, header[7:].strip())
    token = request.cookies.get(console.cookie_name)
    return await auth.session_principal(console.pool, token) if token else None


def _nav(principal: auth.Principal) -> list[tuple[str, str]]:
    return _nav_of(principal.role)


def _nav_of(role: str) -> list[tuple[str, str]]:
    """The pages a role's menu leads to: (path, label)."""
    nav = []
    if role in LIST_INSTANCES.roles:
        nav.append(("/istanze", "Istanze di flusso"))
    if role in REQUEST_LOAD.roles:
        nav.append(("/istanze/nuova", "Nuovo caricamento"))
    if role in LIST_INSTANCES.roles:
        nav.append(("/scadenze", "Scadenze"))
        nav.append(("/tipi-di-flusso", "Tipi di flusso"))
    if role in LIST_ONBOARDING.roles:
        nav.append(("/onboarding", "Onboarding"))
    if role in READ_ACCESS_LOG.roles:
        nav.append(("/accessi", "Registro degli accessi"))
    if role in READ_OPS.roles:
        nav.append(("/esercizio", "Esercizio"))
    if role in MANAGE_USERS.roles:
        nav.append(("/utenti", "Utenti"))
    return nav


@functools.cache
def _menu(role: str, active: str | None) -> Markup:
    """The header's menu of a role, `active` its current entry (the paths the pages pass, a handful): rendered once
    for each (_menu.html), not at every page. (_menu.html and _head.html are read once: FLOWS_CONSOLE_TEMPLATES_RELOAD
    does not reload them.)"""
    return Markup(templates.get_template("_menu.html").render(nav=_nav_of(role), active=active))


_TEMPLATES: dict[str, jinja2.Template] = {}  # by name, once loaded (FLOWS_CONSOLE_TEMPLATES_RELOAD: not kept)


def _template(name: str) -> jinja2.Template:
    """The template `name`: kept here once loaded, not looked up again at every page through Starlette's and Jinja's
    loaders and Jinja's LRU cache (its lock, its reordering): ~3 us of the list page."""
    template = _TEMPLATES.get(name)
    if template is None:
        template = templates.get_template(name)
        if not templates.env.auto_reload:
            _TEMPLATES[name] = template
    return template


def page(ctx: Ctx | None, name: str, title: str, status: int = 200, **values: Any) -> HTMLResponse:
    """A page of the console: the template `name` (extending base.html) rendered for the signed-in `ctx` (None: the
    signed-out header; then `request` is among the values). Rendered here rather than through Starlette's
    TemplateResponse: no template needs the request, and its context processors and debug hook are per-page
    Python the list page pays for (bench/console.py)."""
    principal = ctx.principal if ctx else None
    request = ctx.request if ctx else values.pop("request")
    active = values.pop("active", None)
    body = _template(name).render(
        title=title, principal=principal, menu=_menu(principal.role, active) if principal else "",
        enti_text=", ".join(sorted(principal.enti)) if principal else "",  # Jinja's sort filter: ~3 us a page
        assets=request.app.state.assets, **values)
    return HTMLResponse(body, status_code=status)


async def keep_session(conn: asyncpg.Connection) -> None:
    """The console's pool skips asyncpg's reset query on release (one more round trip after every query, a
    page makes two): asyncpg still rolls back an open transaction and drops listeners first, and the console
    leaves no other session state (no LISTEN: access_watch.py listens on a connection of its own; no SET outside a
    transaction, every lock released in a finally)."""


pages = APIRouter(include_in_schema=False)
api = APIRouter(prefix="/api")

# The answers of an HTTP error raised without an Italian message of its own (the router's 404 and 405, a bare
# HTTPException(404)): the page's title, its message, the API's detail. A 404 never says whether the thing exists
# and belongs to someone else (the guard answers 404 for another ente's instance, too).
ERROR_DETAILS: dict[int, tuple[str, str, str]] = {
    404: ("Pagina non trovata", "La pagina richiesta non esiste o non è accessibile.", "non trovato"),
    405: ("Richiesta non valida", "Questa pagina non accetta questo tipo di richiesta.", "metodo non consentito"),
    403: ("Richiesta rifiutata", "La richiesta è stata rifiutata.", "richiesta rifiutata"),
    409: ("Azione non consentita", "L'azione non è consentita nello stato attuale: ricarichi la pagina per vedere "
                                      "le azioni possibili ora.", "azione non consentita"),
    413: ("File troppo grande", "Il file inviato supera la dimensione ammessa.", "file troppo grande"),
    422: ("Dati non validi", "I dati inviati non sono validi.", "dati non validi"),
    503: ("Servizio temporaneamente non disponibile", "Il servizio non è disponibile in questo momento: riprovi tra "
                                                      "qualche minuto.", "servizio non disponibile"),
    507: ("Spazio su disco esaurito", "La piattaforma ha esaurito lo spazio su disco: nulla è stato registrato. "
                                      "Avvisi l'esercizio.", "spazio esaurito"),
}

# The way back from an error page: to the page the failed request came from (an instance's form posts to a path
# under the instance: back to the instance, where the page's message says to look), not always to the home page.
# (pattern of the path, the link, its text); a 404 of an instance or a request goes back to its list instead.
_WAYS_BACK: tuple[tuple[re.Pattern[str], str, str], ...] = (
    (re.compile(r"^/istanze/(\d+)(?:/|$)"), "/istanze/{0}", "Torna all'istanza {0}"),
    (re.compile(r"^/istanze(?:/|$)"), "/istanze", "Torna all'elenco delle istanze"),
    (re.compile(r"^/onboarding/([A-Za-z0-9._-]+)(?:/|$)"), "/onboarding/{0}", "Torna alla richiesta {0}"),
    (re.compile(r"^/onboarding(?:/|$)"), "/onboarding", "Torna all'elenco delle richieste"),
    (re.compile(r"^/esercizio/scarti(?:/|$)"), "/esercizio/scarti", "Torna ai messaggi non elaborabili"),
    (re.compile(r"^/esercizio(?:/|$)"), "/esercizio", "Torna all'esercizio"),
    (re.compile(r"^/utenti(?:/|$)"), "/utenti", "Torna alla gestione degli utenti"),
    (re.compile(r"^/tipi-di-flusso(?:/|$)"), "/tipi-di-flusso", "Torna ai tipi di flusso"),
)
_LISTS = {"/istanze/{0}": ("/istanze", "Torna all'elenco delle istanze"),
          "/onboarding/{0}": ("/onboarding", "Torna all'elenco delle richieste")}


def way_back(path: str, status: int) -> tuple[str, str]:
    """(link, its text) of an error page of `path`: the instance, request or section it belongs to; its list when
    the error is that very thing's 404; the home page otherwise."""
    for pattern, link, text in _WAYS_BACK:
        found = pattern.match(path)
        if found is None:
            continue
        if status == 404 and link in _LISTS:
            return _LISTS[link]
        return link.format(*found.groups()), text.format(*found.groups())
    return "/", "Vai alla pagina iniziale"


def status_phrase(code: int) -> str | None:
    """Starlette's detail when none is given (HTTPStatus' English phrase)."""
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return None

