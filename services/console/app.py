"""The operator console: FastAPI pages (Italian) and a JSON API over the read models and streams.

It owns no rule of a service: it reads instance_list / instance_files / the event store, sends the
same commands as the CLI (services/cli/instances.py), and asks the state machine (contracts.states)
which actions an instance allows. Authorization is services/console/access.py, checked on the
server for every route through `guard`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import html
import inspect
import json
import mimetypes
import os
import secrets
import tempfile
import time
import typing
import urllib.parse
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any

import asyncpg
import pydantic
import structlog
from aiokafka.errors import KafkaError
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup, escape
from starlette.background import BackgroundTask
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from contracts import flows
from contracts.deadlines import (
    ITALY,
    DeadlineDataInvalid,
    DeadlineDataMissing,
    deadlines_for_month,
    default_month,
    italian_today,
)
from contracts.deadlines import status as deadline_status
from contracts.flows import FlowType
from contracts.onboarding import SwitchRefused, SwitchScheduled, document_label
from contracts.states import SENDABLE_FLOW_TYPES, IllegalTransition, InstanceState, target_of
from services.cli.common import UserError
from services.cli.fileview import file_rows
from services.cli.instances import append_deletion, load_request, send_format_request, send_load_request
from services.cli.ts import send_sealed_730
from services.console import auth, oidc
from services.console.access import (
    ACT_ON_INSTANCE,
    ANY_USER,
    DECIDE_DEAD_LETTER,
    DESK_VERDICT,
    DOWNLOAD_ONBOARDING,
    LIST_INSTANCES,
    LIST_ONBOARDING,
    MANAGE_USERS,
    READ_ACCESS_LOG,
    READ_INSTANCE,
    READ_ONBOARDING,
    READ_OPS,
    REQUEST_LOAD,
    SWITCH_REQUEST,
    UPLOAD_ONBOARDING,
    Rule,
    check_every_route_has_a_rule,
    may,
    read_access_log,
    record_access,
    routed,
)
from services.console.access_watch import AccessWatch
from services.console.assets import FingerprintedStaticFiles, StaticAssets
from services.console.live import LiveFeed, next_change
from services.console.oidc import OidcLogin
from services.onboarding import facade as onboarding  # the onboarding service's one door
from services.onboarding.facade import DashboardProjection, SwitchCalendar, SwitchSlot, SwitchWindow, load_patron_days
from services.onboarding.facade import dashboard as onboarding_rows
from services.runtime import deadletters as dl
from services.runtime import ops
from services.runtime.broker import is_transient
from services.runtime.coverage import coverage
from services.runtime.db import create_pool
from services.runtime.eventstore import EventStore
from services.runtime.filestore import FileStore, is_full
from services.runtime.read_models import instance_stream
from services.runtime.settings import Settings
from services.ts_gateway.sealing import PUBLIC_KEY_FILE

HERE = Path(__file__).resolve().parent
log = structlog.get_logger("console")
STATIC = HERE / "static"
VENDOR = "vendor/bootstrap-italia-2.18.3"  # under STATIC
ROME = ITALY
PAGE_SIZE = 50
FILE_PAGE = 100

STATE_LABELS = {
    "Scheduled": "Pianificata", "Running": "In esecuzione", "Checked": "Verificata",
    "Failed loading": "Caricamento fallito", "Formatting in progress": "Formattazione in corso",
    "Formatted": "Formattata", "Format failed": "Formattazione fallita", "Waiting feedback": "In attesa di esito",
    "Confirmed": "Confermata", "Confirmed with errors": "Confermata con errori", "Rejected": "Respinta",
    "Deleted": "Cancellata",
}
ROLE_LABELS = {"operator": "operatore", "structure": "struttura", "desk": "sportello", "ops": "esercizio",
               "auditor": "revisore", "admin": "amministratore"}
# What the operators read instead of the platform's identifiers (the values stay in forms, URLs and the API).
# The flow types as the Flow Manager's "Lista tipi di flusso" names them (seed, Figura 2).
FLOW_TYPE_LABELS = {"FLUSSO_C": "FLUSSO C", "FLUSSO_C_PACC": "FLUSSO C PACC", "FLUSSO_MEF": "FLUSSO MEF SOGEI",
                    "FLUSSO_ALPI_TA": "FLUSSO ALPI TA", "FLUSSO_730": "FLUSSO 730"}
# An instance's history: every lifecycle event (contracts.flows.EVENT_TYPES; a test keeps them in step).
_T = flows.TYPE_OF
EVENT_LABELS = {
    _T[flows.LoadRequested]: "Caricamento richiesto", _T[flows.LoadScheduled]: "Caricamento pianificato",
    _T[flows.LoadRunning]: "Caricamento avviato", _T[flows.LoadChecked]: "Caricamento verificato",
    _T[flows.LoadFailed]: "Caricamento fallito", _T[flows.FormatRequested]: "Formattazione richiesta",
    _T[flows.FormattingStarted]: "Formattazione avviata", _T[flows.Formatted]: "Formattazione completata",
    _T[flows.FormatFailed]: "Formattazione fallita", _T[flows.TsSubmissionRequested]: "Invio a Sistema TS richiesto",
    _T[flows.TsSubmitted]: "File inviato a Sistema TS", _T[flows.TsFeedbackReceived]: "Esito di Sistema TS ricevuto",
    _T[flows.InstanceDeleted]: "Istanza cancellata",
}
TS_OUTCOME_LABELS = {"confirmed": "confermato", "confirmed_with_errors": "confermato con errori",
                     "rejected": "respinto"}


def event_detail(event_type: str, data: Mapping[str, Any]) -> str:
    """What an operator needs of an event besides its name, in Italian (the history's Dettaglio column): the part and
    the protocollo of a TS submission, its outcome, a failure's summary, a deletion's reason. Plain text: the
    template escapes it."""
    def part() -> str:
        return f"parte {data.get('part')} di {data.get('parts')}"

    if event_type == _T[flows.LoadScheduled] and data.get("scheduled_at"):
        return f"avvio alle {datetime.fromisoformat(str(data['scheduled_at'])).astimezone(ROME):%d/%m/%Y %H:%M}"
    if event_type == _T[flows.LoadFailed]:
        return str(data.get("summary") or "")
    if event_type == _T[flows.FormatFailed]:
        return "; ".join(str(r) for r in data.get("reasons") or [])
    if event_type == _T[flows.TsSubmitted]:
        return f"{part()}, protocollo {data.get('protocollo')}"
    if event_type == _T[flows.TsFeedbackReceived]:
        outcome = TS_OUTCOME_LABELS.get(str(data.get("outcome")), str(data.get("outcome")))
        reason = f" ({data['reason']})" if data.get("reason") else ""
        return f"{part()}: {outcome}{reason}"
    if event_type == _T[flows.InstanceDeleted] and data.get("reason"):
        return f"motivo: {data['reason']}"
    return ""


def switch_slot(day: date | None, window: str | None) -> str:
    """A switch's day and window (the dashboard's `switch_date`, `switch_window`, or a scheduled switch's), in the
    desk's words: "lunedì 21/09/2026, 08:30-10:30"."""
    if day is None or not window:
        return ""
    start, _, end = window.partition("-")
    return _slot_text(day, start, end)


def switch_proposal(day: date | None, window: str | None) -> str:
    """A refused switch's earliest valid slot, from the dashboard's data (`proposed_date`, `proposed_window`), in the
    desk's words: "prima data valida lunedì 21/09/2026, 08:30-10:30"."""
    slot = switch_slot(day, window)
    return f"prima data valida {slot}" if slot else ""


# A load's counts (services.loader.pipeline: what each snapshot table counts).
COUNT_LABELS = {"services": "prestazioni", "prescriptions": "ricette", "patients": "assistiti",
                "bookings": "prenotazioni", "payment_documents": "documenti di spesa"}
# Onboarding: the five kinds of request as the So.Re.Sa. note names them (seed 003; contracts.onboarding.RequestKind)
# and the dashboard's states (services.onboarding.projection; a test keeps both in step).
ONBOARDING_KIND_LABELS = {
    "new-aggregation": "Nuova aggregazione (laboratorio)",
    "aggregator-registry-change": "Variazioni anagrafiche per aggregatori",
    "new-acquisition": "Nuova acquisizione ente", "software-house-change": "Cambio software house",
    "interoperability-change": "Cambio modello di interoperabilità",
}
ONBOARDING_STATUS_LABELS = {
    "documents-awaited": "documenti attesi", "incomplete": "incompleta", "non-compliant": "non conforme",
    "compliant": "conforme", "complete": "completa", "taken-in-charge": "presa in carico",
    "switch-scheduled": "switch pianificato", "switch-refused": "switch rifiutato",
}
# The kinds of an instance's files other than a layout's record kinds (C1, C2...), which keep their names.
FILE_KIND_LABELS = {"feedback": "esito dei controlli", "ts-errors": "errori di Sistema TS",
                    "ts-receipt": "ricevuta di Sistema TS", "730-zip": "730 (zip)"}


def _state_class(state: str) -> str:
    if state in ("Checked", "Formatted", "Confirmed"):
        return "bg-success"
    if state in ("Failed loading", "Format failed", "Rejected", "Confirmed with errors"):
        return "bg-danger"
    if state == "Deleted":
        return "bg-dark"
    return "bg-primary"


def _badge(state: str) -> Markup:
    """A state's badge: a function, not an included template (an include per row of a 50-row list made a
    new template context each, most of the page's rendering time)."""
    return Markup(f'<span class="badge {_state_class(state)}" data-state="{escape(state)}">'
                  f'{escape(STATE_LABELS.get(state, state))}</span>')


_BADGE_HTML = {state: str(_badge(state)) for state in STATE_LABELS}
FLOW_TYPE_VALUES = tuple(t.value for t in FlowType)
FLOW_TYPE_LABEL_VALUES = tuple(FLOW_TYPE_LABELS.get(t, t) for t in FLOW_TYPE_VALUES)
FLOW_TYPE_CHOICES = dict(zip(FLOW_TYPE_VALUES, FLOW_TYPE_LABEL_VALUES, strict=True))  # value -> label, in order
STATE_VALUES = tuple(STATE_LABELS)
STATE_LABEL_VALUES = tuple(STATE_LABELS.values())


@dataclass(frozen=True)
class PageAssets:
    """Every page's `assets` (services/console/assets.py): the URLs of what base.html links, fingerprinted and
    resolved once at start-up (a call per link and render was a third of the list page's template time), `vendor`
    (Bootstrap Italia's directory URL, fingerprinted: its bundle builds the URLs of its fonts below it, from
    console.js's data-vendor), and `url(path)` for any other file under /static."""

    url: Callable[[str], str]
    vendor: str
    bootstrap_css: str
    bootstrap_js: str
    console_css: str
    console_js: str

    @classmethod
    def of(cls, assets: StaticAssets) -> PageAssets:
        return cls(assets.url, assets.directory_url(VENDOR), assets.url(f"{VENDOR}/css/bootstrap-italia.min.css"),
                   assets.url(f"{VENDOR}/js/bootstrap-italia.bundle.min.js"), assets.url("console.css"),
                   assets.url("console.js"))


templates = Jinja2Templates(directory=str(HERE / "templates"))
# The templates ship with the code: never re-stat them on every render (FLOWS_CONSOLE_TEMPLATES_RELOAD=1
# for template work).
templates.env.auto_reload = os.environ.get("FLOWS_CONSOLE_TEMPLATES_RELOAD") == "1"
templates.env.filters["ora"] = lambda when, fmt="%d/%m/%Y %H:%M:%S": when.astimezone(ROME).strftime(fmt)
templates.env.filters["giorno"] = lambda day: "" if day is None else f"{day:%d/%m/%Y}"  # a date, as Italians write it
templates.env.globals.update(state_label=lambda s: STATE_LABELS.get(s, s), state_class=_state_class,
                             role_labels=ROLE_LABELS, badge=_badge,
                             flow_type_label=lambda t: FLOW_TYPE_LABELS.get(t, t),
                             event_label=lambda t: EVENT_LABELS.get(t, t),
                             count_label=lambda k: COUNT_LABELS.get(k, k),
                             file_kind_label=lambda k: FILE_KIND_LABELS.get(k, k), event_detail=event_detail,
                             document_label=document_label,
                             onboarding_kind_label=lambda k: ONBOARDING_KIND_LABELS.get(k, k),
                             onboarding_status_label=lambda k: ONBOARDING_STATUS_LABELS.get(k, k),
                             onboarding_statuses=ONBOARDING_STATUS_LABELS, switch_proposal=switch_proposal,
                             switch_slot=switch_slot,
                             quanti=lambda n, one, many: f"{n} {one if n == 1 else many}")


SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"), (b"referrer-policy", b"same-origin"),
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                                 b"script-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'self'; "
                                 b"form-action 'self'"),
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


class ConsoleApp(FastAPI):
    """FastAPI, with one shortcut: a GET of a with_session page (the instance list) goes straight to its endpoint,
    the same guard and the same rule, without the middleware stack and the router's walk over every route
    (bench/console.py: ~0.25 ms a page in-process, a quarter of what the page adds to its SQL). Its answer gets the
    same security headers. Anything but an answer (no login, a role refused, a bad request, an error) is left to
    the ordinary path, which runs the request again through the app's handlers: the same 303, 404 or 500 as any
    route. The ordinary path still serves these pages too (HEAD, and the app mounted under another app)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        endpoint = DIRECT_PAGES.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "GET" else None
        if endpoint is not None:
            scope["app"] = self
            try:
                response = await endpoint(Request(scope, receive))
            except Exception:  # answered below, by the ordinary path and its handlers
                response = None
            if response is not None:
                await response(scope, receive, _with_security_headers(scope, send))
                return
        await super().__call__(scope, receive, send)


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


def _console(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


# A route's own query run in the same statement as the session lookup: given the pool, the SHA-256 of the
# session cookie and the request, the principal's row and the route's rows, or None when the session is not live.
SessionQuery = Callable[[asyncpg.Pool, bytes, Request], Awaitable[tuple[asyncpg.Record, Any] | None]]


def guard(rule: Rule, with_session: SessionQuery | None = None) -> Callable[[Request], Awaitable[Ctx]]:
    """The dependency of every guarded route: login, CSRF on forms, role, then the entity."""
    async def check(request: Request) -> Ctx:
        console = _console(request)
        found = None
        token = request.cookies.get(console.cookie_name)
        if with_session is not None and token:
            # One round trip for the session and the page's rows. The rows are the principal's own (the query
            # filters them by the session's user, as read in the same statement), and they are dropped unseen
            # when the rule below refuses the role.
            answer = await with_session(console.pool, auth.token_sha256(token), request)
            principal = None if answer is None else auth.principal_of(answer[0])
            found = None if answer is None else answer[1]
        else:
            principal = await _principal(console, request)
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
    return check


UPLOAD_SPACE_REFUSED = ("Documento non ricevuto: spazio su disco esaurito sul server durante il caricamento. Non è "
                        "stato salvato né registrato nulla: riprovare più tardi (se il problema continua, avvisare "
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
    statement: they reach the handler as `ctx.found`."""
    if with_session is not None and (rule.scope != "none" or router.prefix or method != "GET"):
        raise ValueError(f"{method} {path}: with_session is for the GET pages of scope 'none'")

    def register(fn: Callable[..., Awaitable[Response]]) -> Any:
        hints = typing.get_type_hints(fn)
        check = guard(rule, with_session)
        if with_session is not None:
            # The page takes nothing but its ctx: a plain Starlette route, without FastAPI's per-request parameter
            # and dependency resolution (bench/console.py: every step of Python per request shows in the ratio);
            # the same guard, the same rule in the route table.
            if set(inspect.signature(fn).parameters) != {"ctx"}:
                raise ValueError(f"{method} {path}: a with_session page takes only its ctx")

            async def endpoint(request: Request) -> Response:
                return await fn(await check(request))

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
                                        default=Depends(check)))
        handler.__signature__ = inspect.Signature(params, return_annotation=Response)  # type: ignore[attr-defined]
        del handler.__wrapped__  # FastAPI must read the signature above, not the handler's own
        return routed(router, method, path, rule, kind, **kw)(handler)
    return register


async def _principal(console: Console, request: Request) -> auth.Principal | None:
    header = request.headers.get("authorization", "")
    if request.url.path.startswith("/api/") and header.lower().startswith("bearer "):
        return await auth.api_key_principal(console.pool, header[7:].strip())
    token = request.cookies.get(console.cookie_name)
    return await auth.session_principal(console.pool, token) if token else None


def _nav(principal: auth.Principal) -> list[tuple[str, str]]:
    nav = []
    if principal.role in LIST_INSTANCES.roles:
        nav.append(("/istanze", "Istanze di flusso"))
    if principal.role in REQUEST_LOAD.roles:
        nav.append(("/istanze/nuova", "Nuovo caricamento"))
    if principal.role in LIST_INSTANCES.roles:
        nav.append(("/scadenze", "Scadenze"))
    if principal.role in LIST_ONBOARDING.roles:
        nav.append(("/onboarding", "Onboarding"))
    if principal.role in READ_ACCESS_LOG.roles:
        nav.append(("/accessi", "Registro accessi"))
    if principal.role in READ_OPS.roles:
        nav.append(("/esercizio", "Esercizio"))
    if principal.role in MANAGE_USERS.roles:
        nav.append(("/utenti", "Utenti"))
    return nav


def page(ctx: Ctx | None, name: str, title: str, status: int = 200, **values: Any) -> HTMLResponse:
    """A page of the console: the template `name` (extending base.html) rendered for the signed-in `ctx` (None: the
    signed-out header; then `request` is among the values). Rendered here rather than through Starlette's
    TemplateResponse: no template needs the request, and its context processors and debug hook are per-page
    Python the list page pays for (bench/console.py)."""
    principal = ctx.principal if ctx else None
    request = ctx.request if ctx else values.pop("request")
    body = templates.get_template(name).render(
        title=title, principal=principal, nav=_nav(principal) if principal else [], active=values.pop("active", None),
        assets=request.app.state.assets, **values)
    return HTMLResponse(body, status_code=status)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The console's pool skips asyncpg's reset query on release (one more round trip after every query, a
    page makes two): asyncpg still rolls back an open transaction and drops listeners first, and the console
    leaves no other session state (no LISTEN: access_watch.py listens on a connection of its own; no SET outside a
    transaction, every lock released in a finally)."""


def create_app(settings: Settings, static_dir: Path = STATIC) -> ConsoleApp:
    """The console over `settings`, serving the assets of `static_dir` (fingerprinted once, here)."""
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await create_pool(settings.database_url, min_size=1, max_size=10, reset=_keep_session)
        feed, access = LiveFeed(settings.bootstrap_list()), AccessWatch(settings.database_url)
        app.state.console = Console(settings, pool, EventStore(pool, source="/flows/console"),
                                    FileStore(settings.files_dir), feed, access,
                                    OidcLogin(settings) if oidc.enabled(settings) else None)
        await feed.start()
        await access.start()
        try:
            yield
        finally:
            await access.stop()
            await feed.stop()
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
        if code != 404 and exc.detail != _phrase(code):  # a route's own message, in Italian: it says more
            message = api_detail = exc.detail
        headers = getattr(exc, "headers", None)
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": api_detail}, status_code=exc.status_code, headers=headers)
        # A signed-in user keeps the header with their name and menu on the error page (a way on, not a dead end).
        principal, console = None, _console(request)
        if request.cookies.get(console.cookie_name):
            with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                principal = await _principal(console, request)
        ctx = Ctx(principal, request) if principal is not None else None
        response = page(ctx, "message.html", title, status=exc.status_code,
                        **({} if ctx else {"request": request}), message=message, level="danger", back="/")
        if headers:
            response.headers.update(headers)
        return response

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
                        level="danger", back="/", again=again)
        response.headers.update(headers)
        return response

    check_every_route_has_a_rule(app.routes)
    return app


pages = APIRouter(include_in_schema=False)
api = APIRouter(prefix="/api")

# The answers of an HTTP error raised without an Italian message of its own (the router's 404 and 405, a bare
# HTTPException(404)): the page's title, its message, the API's detail. A 404 never says whether the thing exists
# and belongs to someone else (the guard answers 404 for another ente's instance, too).
ERROR_DETAILS: dict[int, tuple[str, str, str]] = {
    404: ("Pagina non trovata", "La pagina richiesta non esiste o non è accessibile.", "non trovato"),
    405: ("Richiesta non valida", "Questa pagina non accetta questo tipo di richiesta.", "metodo non consentito"),
    403: ("Richiesta rifiutata", "La richiesta è stata rifiutata.", "richiesta rifiutata"),
    409: ("Azione non consentita", "L'azione non è consentita nello stato attuale.", "azione non consentita"),
}


def _phrase(code: int) -> str | None:
    """Starlette's detail when none is given (HTTPStatus' English phrase)."""
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return None


# ---------------------------------------------------------------- probes and login (public)
@pages.get("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@pages.get("/readyz", include_in_schema=False)
async def readyz(request: Request) -> Response:
    console = _console(request)
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
    console = _console(request)
    next_url = _safe_next(next_url)
    return {"local_login": console.settings.console_local_login, "next_url": next_url, "oidc_url": (
        "/login/oidc?" + urllib.parse.urlencode({"next": next_url})) if console.oidc else None}


@pages.post("/login", include_in_schema=False)
async def login(request: Request) -> Response:
    console = _console(request)
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
    secure = _console(request).settings.console_secure_cookies
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=True, secure=secure, samesite="strict")


# ---------------------------------------------------------------- OpenID Connect login (public)
OIDC_STATE = "flows_oidc_state"


def _redirect_uri(request: Request) -> str:
    configured = _console(request).settings.console_oidc_redirect_url
    return configured or str(request.base_url).rstrip("/") + "/login/oidc/callback"


@pages.get("/login/oidc", include_in_schema=False)
async def oidc_start(request: Request, next: str = "/") -> Response:
    """Sends the browser to the identity provider (code flow, PKCE, state and nonce: services/console/oidc.py)."""
    console = _console(request)
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
    console = _console(request)
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
    console = _console(request)
    token = request.cookies.get(console.cookie_name)
    if token:
        await auth.close_session(console.pool, token)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(console.cookie_name, path="/")
    del ctx
    return response


@route(pages, "GET", "/", ANY_USER, "page", include_in_schema=False)
async def home(ctx: Ctx) -> Response:
    if ctx.principal.role in LIST_INSTANCES.roles:
        return RedirectResponse("/istanze", status_code=303)
    if ctx.principal.role in MANAGE_USERS.roles:
        return RedirectResponse("/utenti", status_code=303)
    return page(ctx, "home.html", "Console dei flussi")


# ---------------------------------------------------------------- instances
@dataclass
class Search:
    tipo: str | None = None
    ente: str | None = None
    dal: str | None = None
    al: str | None = None
    stato: str | None = None
    prima: int | None = None


def _parse_search(params: Any) -> tuple[Search, list[str]]:
    q, errors = Search(), []
    q.tipo = params.get("tipo") or None
    if q.tipo and q.tipo not in FlowType.__members__.values():
        errors.append(f"Tipo di flusso {q.tipo!r} sconosciuto.")
        q.tipo = None
    q.ente = (params.get("ente") or "").strip().upper() or None
    for name in ("dal", "al"):
        value = params.get(name) or None
        if value:
            try:
                date.fromisoformat(value)
            except ValueError:
                errors.append(f"Data {name} {value!r}: atteso AAAA-MM-GG.")
                value = None
        setattr(q, name, value)
    q.stato = params.get("stato") or None
    if q.stato and q.stato not in STATE_LABELS:
        errors.append(f"Stato {q.stato!r} sconosciuto.")
        q.stato = None
    prima = params.get("prima")
    q.prima = int(prima) if prima and prima.isdigit() else None
    return q, errors


# The search's filters, in this order, each in the statement only when it is set (`_filters`).
_FILTERS = (("tipo", "flow_type = ${}"), ("ente", "ente = ${}"), ("dal", "created_at >= ${}::date"),
            ("al", "created_at < ${}::date + 1"), ("stato", "state = ${}"), ("prima", "instance < ${}"))


def _filters(q: Search) -> tuple[tuple[str, ...], list[Any]]:
    """The names of the search's filters that are set, and their values ($1, $2, ... in `_FILTERS` order). Only
    what is asked goes into the statement, so each combination is its own prepared statement, for which PostgreSQL
    keeps one generic plan: no planning per execution (the statement with the session was planned anew each time,
    ~0.15 ms, about as long as it ran). With the former `($n IS NULL OR ...)` clauses a generic plan looked costlier
    than a custom one (and could not use the keyset `instance < $n` on the index), so every execution was planned."""
    names: list[str] = []
    values: list[Any] = []
    for name, _ in _FILTERS:
        value = getattr(q, name)
        if value is not None:
            names.append(name)
            values.append(date.fromisoformat(value) if name in ("dal", "al") else value)
    return tuple(names), values


def _list_sql(columns: str, names: tuple[str, ...], seen: str | None, limit: int) -> str:
    """A page of instances, newest first (keyset on instance): the filters `names` ($1, $2, ...), `seen` the clause
    that keeps the enti the principal sees (None: every ente); `limit` the page size (one more row than shown tells
    whether a next page exists)."""
    clauses = [clause.format(n + 1) for n, clause in enumerate(c for name, c in _FILTERS if name in names)]
    return (f"SELECT {columns} FROM instance_list WHERE {' AND '.join([*clauses, *([seen] if seen else [])]) or 'true'}"
            f" ORDER BY instance DESC LIMIT {int(limit)}")


def _enti_seen(principal: auth.Principal) -> list[str] | None:
    """The enti whose instances the principal sees; None for every ente (Principal.sees_ente in SQL)."""
    if principal.role in auth.EVERY_ENTE_ROLES:
        return None
    return sorted(principal.enti) if principal.role == "operator" else []


@functools.cache
def _list_for_principal_sql(columns: str, names: tuple[str, ...], every_ente: bool, limit: int) -> str:
    """The list for a principal already known: its enti the parameter after the filters' (none for every ente)."""
    return _list_sql(columns, names, None if every_ente else f"ente = ANY(${len(names) + 1}::text[])", limit)


# The list page shows these columns only (an instance's counts, summary, ... are the API's and the instance page's).
# Its three dates come as the page shows them, written by PostgreSQL: the creation time as Rome's wall-clock time
# (to_char of `AT TIME ZONE`), the period's days as dd/mm/yyyy. Three date objects a row decoded and formatted back
# to text in Python were most of the rows' Python time (bench/console.py).
_LIST_PAGE_TYPES = [("instance", "bigint"), ("flow_type", "text"), ("ente", "text"), ("source_instance", "bigint"),
                    ("created_text", "text"), ("start_text", "text"), ("end_text", "text"), ("state", "text")]
LIST_PAGE_COLUMNS = ("instance, flow_type, ente, source_instance, "
                     f"to_char(created_at AT TIME ZONE '{ROME.key}', 'DD/MM/YYYY HH24:MI') AS created_text, "
                     "to_char(period_start, 'DD/MM/YYYY') AS start_text, "
                     "to_char(period_end, 'DD/MM/YYYY') AS end_text, state")


@functools.cache
def _list_page_with_session_sql(names: tuple[str, ...]) -> str:
    """The page with the session lookup in one statement: the principal is read from the session (the parameter
    after the filters': the SHA-256 of its cookie) and the rows are filtered by what that principal sees
    (Principal.sees_ente). No row when the session is not live; else the principal's row (its page columns NULL),
    and one row per instance (its principal columns NULL: not decoded 51 times)."""
    every = ",".join(auth.EVERY_ENTE_ROLES)
    seen = f"(who.role = ANY('{{{every}}}'::text[]) OR (who.role = 'operator' AND ente = ANY(who.enti)))"
    return f"""WITH who AS MATERIALIZED ({auth.session_sql(f"${len(names) + 1}")})
    SELECT who.*, {", ".join(f"NULL::{t} AS {c}" for c, t in _LIST_PAGE_TYPES)} FROM who
    UNION ALL
    SELECT {", ".join(["NULL"] * len(auth.SESSION_COLUMNS))}, page.* FROM who CROSS JOIN LATERAL ({_list_sql(
        LIST_PAGE_COLUMNS, names, seen, PAGE_SIZE + 1)}) page"""


async def _list_for_principal(pool: asyncpg.Pool, principal: auth.Principal, q: Search, columns: str,
                              limit: int) -> list[asyncpg.Record]:
    names, values = _filters(q)
    enti = _enti_seen(principal)
    sql = _list_for_principal_sql(columns, names, enti is None, limit)
    return await pool.fetch(sql, *values) if enti is None else await pool.fetch(sql, *values, enti)


async def search_instances(pool: asyncpg.Pool, principal: auth.Principal, q: Search,
                           limit: int = PAGE_SIZE) -> list[asyncpg.Record]:
    """A page of instances (every column), newest first, only of the enti the principal sees."""
    return await _list_for_principal(pool, principal, q, "*", limit)


async def list_page_rows(pool: asyncpg.Pool, principal: auth.Principal, q: Search) -> list[asyncpg.Record]:
    """The list page's rows for a principal already known: the page's SQL without the session (bench/console.py
    times it as the baseline of the page)."""
    return await _list_for_principal(pool, principal, q, LIST_PAGE_COLUMNS, PAGE_SIZE + 1)


async def _list_page_with_session(pool: asyncpg.Pool, token_sha256: bytes,
                                  request: Request) -> tuple[asyncpg.Record, Any] | None:
    q, errors = _parse_search(request.query_params)
    names, values = _filters(q)
    rows = await pool.fetch(_list_page_with_session_sql(names), *values, token_sha256)
    who = next((r for r in rows if r["name"] is not None), None)
    if who is None:
        return None
    return who, (q, errors, [r for r in rows if r["instance"] is not None])


_TEXT_HTML: dict[str, str] = {}  # a list's few distinct enti, escaped once (bounded below)
_FLOW_TYPE_HTML = {value: html.escape(label) for value, label in FLOW_TYPE_LABELS.items()}


def _escaped(text: str) -> str:
    found = _TEXT_HTML.get(text)
    if found is None:
        found = html.escape(text)
        if len(_TEXT_HTML) < 4096:
            _TEXT_HTML[text] = found
    return found


def _list_rows(rows: list[asyncpg.Record]) -> Markup:
    """The list's table rows as one piece of HTML, every text cell escaped (html.escape: quotes too). Built
    here rather than in a Jinja loop: with 50 rows the loop's ~900 output pieces (and Jinja's attribute lookup
    on a Record, which fails over to an item lookup through an exception per cell) were most of the page's
    time (bench/console.py); markupsafe's escape and Markup formatting cost 3x html.escape and plain str.
    The few distinct flow types and enti are escaped once; the dates come as text from PostgreSQL
    (LIST_PAGE_COLUMNS), made of digits and '/', ':' and ' ' only. A row's page columns are its last eight
    (`_LIST_PAGE_TYPES`), unpacked at once: a third less than a lookup by name per cell."""
    out = []
    badges, texts, flow_types = _BADGE_HTML, _TEXT_HTML, _FLOW_TYPE_HTML
    for *_, n, flow_type, ente, source, created, start, end, state in rows:
        out.append(f'<tr><td>{flow_types.get(flow_type) or _escaped(flow_type)}</td>'
                   f'<td>{texts.get(ente) or _escaped(ente)}'
                   f'</td><td><a href="/istanze/{n}">{n}</a></td><td>{"" if source is None else source}</td>'
                   f"<td>{created}</td><td>{start}</td><td>{end}</td>"
                   f"<td>{badges.get(state) or _badge(state)}</td></tr>\n")
    return Markup("".join(out))


@functools.cache
def _options(values: tuple[str, ...], labels: tuple[str, ...], selected: str | None) -> Markup:
    """A select's options, `selected` marked: once per select and choice (the search's values are checked against
    these lists first, so the cache stays as small as they are); a Jinja loop over them was half the template."""
    return Markup("".join(f'<option value="{html.escape(v)}"{" selected" if v == selected else ""}>{html.escape(label)}'
                          "</option>" for v, label in zip(values, labels, strict=True)))


@route(pages, "GET", "/istanze", LIST_INSTANCES, "page", with_session=_list_page_with_session)
async def instances_page(ctx: Ctx) -> Response:
    q, errors, rows = ctx.found
    more, rows = len(rows) > PAGE_SIZE, rows[:PAGE_SIZE]
    params = {k: v for k, v in vars(q).items() if v is not None and k != "prima"}
    first_url = "/istanze?" + urllib.parse.urlencode(params)
    next_url = f"{first_url}{'&' if params else ''}prima={int(rows[-1]['instance'])}" if more else None
    return page(ctx, "instances.html", "Istanze di flusso", active="/istanze", rows=_list_rows(rows),
                count=len(rows), q=q, errors=errors, next_url=next_url, first_url=first_url,
                tipo_options=_options(FLOW_TYPE_VALUES, FLOW_TYPE_LABEL_VALUES, q.tipo),
                stato_options=_options(STATE_VALUES, STATE_LABEL_VALUES, q.stato))


def _default_period() -> tuple[str, str]:
    today = italian_today()
    last = today.replace(day=1).toordinal() - 1
    end = date.fromordinal(last)
    return end.replace(day=1).isoformat(), end.isoformat()


@route(pages, "GET", "/istanze/nuova", REQUEST_LOAD, "page")
async def new_load_form(ctx: Ctx) -> Response:
    start, end = _default_period()
    form = {"tipo": "FLUSSO_C", "ente": min(ctx.principal.enti), "dal": start, "al": end, "pianificata": ""}
    return page(ctx, "new_load.html", "Nuovo caricamento", active="/istanze/nuova", form=form, errors={},
                flow_types=FLOW_TYPE_CHOICES)


def _load_errors(principal: auth.Principal, form: dict[str, str]) -> tuple[dict[str, str], dict[str, Any]]:
    errors: dict[str, str] = {}
    values: dict[str, Any] = {}
    if form["tipo"] not in FlowType.__members__.values():
        errors["tipo"] = f"Tipo di flusso {form['tipo']!r} sconosciuto."
    if form["ente"] not in principal.enti:
        own = ", ".join(sorted(principal.enti))
        errors["ente"] = f"Ente {form['ente']!r}: può scegliere solo tra i suoi enti ({own})."
    for name, label in (("dal", "Inizio riferimento"), ("al", "Fine riferimento")):
        try:
            values[name] = date.fromisoformat(form[name])
        except ValueError:
            errors[name] = f"{label}: data non valida ({form[name]!r}), attesa AAAA-MM-GG."
    if "dal" in values and "al" in values and values["al"] < values["dal"]:
        errors["al"] = "La fine del periodo viene prima del suo inizio."
    values["pianificata"] = None
    if form["pianificata"]:
        try:
            values["pianificata"] = datetime.fromisoformat(form["pianificata"]).replace(tzinfo=ROME)
        except ValueError:
            errors["pianificata"] = f"Avvio pianificato non valido ({form['pianificata']!r})."
    return errors, values


_FIELD_OF = {"flow_type": "tipo", "ente": "ente", "period": "al", "start": "dal", "end": "al",
             "scheduled_at": "pianificata"}


@route(pages, "POST", "/istanze/nuova", REQUEST_LOAD, "action")
async def new_load(ctx: Ctx) -> Response:
    request = ctx.request
    console = _console(request)
    raw = await request.form()
    form = {k: str(raw.get(k) or "").strip() for k in ("tipo", "ente", "dal", "al", "pianificata")}
    errors, values = _load_errors(ctx.principal, form)
    request_id = None
    if not errors:
        try:
            command = load_request(form["tipo"], form["ente"], values["dal"], values["al"], "2020",
                                   values["pianificata"], ctx.principal.name)
        except pydantic.ValidationError as exc:
            for problem in exc.errors():
                field = next((_FIELD_OF[str(p)] for p in reversed(problem["loc"]) if str(p) in _FIELD_OF), "tipo")
                errors[field] = problem["msg"]
        else:
            await send_load_request(console.settings.kafka_bootstrap, command)
            request_id = command.request_id
    if errors:
        return page(ctx, "new_load.html", "Nuovo caricamento", status=422, active="/istanze/nuova", form=form,
                    errors=errors, flow_types=FLOW_TYPE_CHOICES)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        instance = await console.pool.fetchval("SELECT instance FROM instance_list WHERE request_id = $1", request_id)
        if instance is not None:
            return RedirectResponse(f"/istanze/{instance}", status_code=303)
        await asyncio.sleep(0.1)
    return page(ctx, "message.html", "Richiesta inviata", status=202, level="info", back="/istanze",
                message=f"La richiesta {request_id} è stata inviata; il caricatore non l'ha ancora presa in carico. "
                        "L'istanza comparirà nell'elenco appena creata.")


async def _instance_view(ctx: Ctx) -> dict[str, Any]:
    console = _console(ctx.request)
    assert ctx.row is not None
    instance = int(ctx.row["instance"])
    history = await console.store.read_stream(instance_stream(instance))
    breaks = await console.store.verify_stream(instance_stream(instance))
    files = await console.pool.fetch(
        "SELECT * FROM instance_files WHERE instance = $1 ORDER BY kind = 'feedback', name", instance)
    actions = []
    if may(ctx.principal, ACT_ON_INSTANCE, ctx.row["ente"]):
        for action, event in (("format", flows.TYPE_OF[flows.FormattingStarted]),
                              ("delete", flows.TYPE_OF[flows.InstanceDeleted])):
            with contextlib.suppress(IllegalTransition):
                target_of(event, {}, InstanceState(ctx.row["state"]))
                actions.append(action)
        if _sendable(ctx.row):
            actions.append("send")
    return {"row": ctx.row, "history": history, "chain_breaks": [str(b) for b in breaks], "files": files,
            "actions": actions}


@route(pages, "GET", "/istanze/{instance}", READ_INSTANCE, "page")
async def instance_page(ctx: Ctx) -> Response:
    assert ctx.row is not None
    return page(ctx, "instance.html", f"Istanza {ctx.row['instance']}", active="/istanze", **await _instance_view(ctx))


@route(pages, "GET", "/istanze/{instance}/stato", READ_INSTANCE, "page")
async def instance_fragment(ctx: Ctx) -> Response:
    request = ctx.request
    return templates.TemplateResponse(request, "_instance_body.html",
                                      {"principal": ctx.principal, **await _instance_view(ctx)})


# An open event stream's keep-alive period, and how often it checks again that its session still may read the
# instance (the tests shorten it, or make it an hour to show that a notice, not this check, ended a stream). A
# logout, a disable, a new password or a lost ente wakes the stream's check at once (access_watch.py): this period
# is the safety net for a notice that never came.
STREAM_CHECK_S = 15.0
STREAM_ENDED = "event: ended\ndata: {}\n\n"


async def _stream_still_allowed(console: Console, request: Request, ente: str, why: str) -> bool:
    """Whether the session of an open event stream still reads the instance of `ente`: not logged out, expired or
    disabled, and still bound to the ente. Every other request checks its session in the database; a stream lives
    for hours, so it does so at each keep-alive, and at once when access_watch.py announces that its session or
    user changed (`why`: "keep-alive" or "woken", for the log). When the check cannot be made (PostgreSQL down)
    the stream ends too: the page reconnects through the guard, which answers 503 until the database is back
    (console.js then tries again, backed off)."""
    try:
        principal = await _principal(console, request)
    except Exception as exc:
        log.info("console.stream_ended", path=request.url.path, checked_on=why,
                 reason=f"session not checked: {type(exc).__name__}")
        return False
    if principal is None or not may(principal, READ_INSTANCE, ente):
        log.info("console.stream_ended", path=request.url.path, checked_on=why,
                 reason="session no longer valid for this instance")
        return False
    return True


@route(pages, "GET", "/istanze/{instance}/eventi", READ_INSTANCE, "stream")
async def instance_events(ctx: Ctx) -> Response:
    """The instance's changes as server-sent events: `ready` once subscribed, `change` per event (its type only),
    `ended` before the server ends a stream whose session no longer reads the instance (console.js then asks why,
    without waiting for the browser's own reconnection, and says so)."""
    request = ctx.request
    assert ctx.row is not None
    instance, ente = int(ctx.row["instance"]), str(ctx.row["ente"])
    console = _console(request)
    feed = console.feed
    token = request.cookies.get(console.cookie_name, "")  # the guard read the session from it

    async def stream() -> AsyncIterator[str]:
        queue = feed.watch(instance)
        watched = console.access.watch(auth.token_sha256(token), ctx.principal.name)
        watched.recheck.set()  # a logout between the guard's check and this watch was announced to nobody
        try:
            # `ready`: the page refetches once, covering a change between its render and this subscription.
            yield "event: ready\ndata: {}\n\n"
            while not await request.is_disconnected():
                event_type = await next_change(queue, watched.recheck, STREAM_CHECK_S)
                if event_type is None:  # the keep-alive, or a notice that the session or its user changed
                    why = "woken" if watched.recheck.is_set() else "keep-alive"
                    watched.recheck.clear()  # before the check: a notice during it asks for another one
                    if not await _stream_still_allowed(console, request, ente, why):
                        yield STREAM_ENDED
                        return
                    yield ": keep-alive\n\n"
                    continue
                yield f"event: change\ndata: {json.dumps({'event': event_type})}\n\n"
        finally:
            console.access.unwatch(watched)
            feed.unwatch(instance, queue)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def _file(ctx: Ctx, name: str) -> asyncpg.Record:
    assert ctx.row is not None
    if "\x00" in name:  # PostgreSQL text cannot hold it, so no file has it
        raise HTTPException(404)
    row = await _console(ctx.request).pool.fetchrow(
        "SELECT * FROM instance_files WHERE instance = $1 AND name = $2", ctx.row["instance"], name)
    if row is None:  # the name is only ever a key of this table, never a path
        raise HTTPException(404)
    return row


def _attachment(name: str) -> dict[str, str]:
    ascii_name = "".join(c if c.isalnum() or c in "._-" else "_" for c in name) or "file"
    return {"Content-Disposition": f"attachment; filename=\"{ascii_name}\"; "
                                   f"filename*=UTF-8''{urllib.parse.quote(name, safe='')}"}


@route(pages, "GET", "/istanze/{instance}/file/{name}", READ_INSTANCE, "page")
async def file_view(ctx: Ctx, name: str, da: int = 0) -> Response:
    request = ctx.request
    assert ctx.row is not None
    console = _console(request)
    f = await _file(ctx, name)
    offset = max(da, 0)
    try:
        caption, columns, rows = file_rows(console.files.path(f["sha256"]), f["kind"], ctx.row["flow_type"],
                                           ctx.row["version"], FILE_PAGE, offset)
    except UserError as exc:
        raise HTTPException(409, str(exc)) from exc
    await record_access(console.store, ctx.principal, "file-view", int(ctx.row["instance"]), ctx.address,
                        {"file": name, "from": offset, "records": len(rows)})
    base = f"/istanze/{ctx.row['instance']}/file/{urllib.parse.quote(name, safe='')}"
    return page(ctx, "table_view.html", f"{name}", active="/istanze", instance=ctx.row["instance"], caption=caption,
                columns=columns, rows=rows, download=base + "/scarica",
                prev_url=f"{base}?da={max(offset - FILE_PAGE, 0)}" if offset else None,
                next_url=f"{base}?da={offset + FILE_PAGE}" if len(rows) == FILE_PAGE else None)


@route(pages, "GET", "/istanze/{instance}/file/{name}/scarica", READ_INSTANCE, "download")
async def file_download(ctx: Ctx, name: str) -> Response:
    request = ctx.request
    assert ctx.row is not None
    console = _console(request)
    f = await _file(ctx, name)
    await record_access(console.store, ctx.principal, "file-download", int(ctx.row["instance"]), ctx.address,
                        {"file": name})
    return FileResponse(console.files.path(f["sha256"]), media_type=f["media_type"], headers=_attachment(name))


@route(pages, "GET", "/istanze/{instance}/file.zip", READ_INSTANCE, "download")
async def files_zip(ctx: Ctx) -> Response:
    request = ctx.request
    assert ctx.row is not None
    console = _console(request)
    instance = int(ctx.row["instance"])
    files = await console.pool.fetch("SELECT * FROM instance_files WHERE instance = $1 ORDER BY name", instance)
    if not files:
        raise HTTPException(404)
    await record_access(console.store, ctx.principal, "files-zip", instance, ctx.address,
                        {"files": [f["name"] for f in files]})
    spool = tempfile.NamedTemporaryFile(prefix="console-zip-", suffix=".zip", delete=False)
    with spool, zipfile.ZipFile(spool, "w", zipfile.ZIP_DEFLATED) as archive:
        for f in files:
            archive.write(console.files.path(f["sha256"]), arcname=Path(f["name"]).name)
    return FileResponse(spool.name, media_type="application/zip", headers=_attachment(f"istanza-{instance}.zip"),
                        background=BackgroundTask(Path(spool.name).unlink, missing_ok=True))


async def _feedback_files(ctx: Ctx) -> list[asyncpg.Record]:
    assert ctx.row is not None
    return await _console(ctx.request).pool.fetch(
        "SELECT * FROM instance_files WHERE instance = $1 AND kind IN ('feedback', 'ts-errors') ORDER BY name",
        ctx.row["instance"])


@route(pages, "GET", "/istanze/{instance}/feedback", READ_INSTANCE, "page")
async def feedback_page(ctx: Ctx, da: int = 0) -> Response:
    request = ctx.request
    assert ctx.row is not None
    console = _console(request)
    files = await _feedback_files(ctx)
    if not files:
        return page(ctx, "message.html", f"Esito dell'istanza {ctx.row['instance']}", level="success",
                    back=f"/istanze/{ctx.row['instance']}",
                    message="Nessun problema: l'istanza non ha esiti da leggere.")
    f = files[0]
    offset = max(da, 0)
    caption, columns, rows = file_rows(console.files.path(f["sha256"]), f["kind"], ctx.row["flow_type"],
                                       ctx.row["version"], FILE_PAGE, offset)
    await record_access(console.store, ctx.principal, "feedback-view", int(ctx.row["instance"]), ctx.address,
                        {"file": f["name"], "from": offset, "records": len(rows)})
    base = f"/istanze/{ctx.row['instance']}/feedback"
    return page(ctx, "table_view.html", f"Esito dell'istanza {ctx.row['instance']}", active="/istanze",
                instance=ctx.row["instance"], caption=f"{f['name']}: {caption}", columns=columns, rows=rows,
                download=base + ".csv", prev_url=f"{base}?da={max(offset - FILE_PAGE, 0)}" if offset else None,
                next_url=f"{base}?da={offset + FILE_PAGE}" if len(rows) == FILE_PAGE else None)


@route(pages, "GET", "/istanze/{instance}/feedback.csv", READ_INSTANCE, "download")
async def feedback_csv(ctx: Ctx) -> Response:
    request = ctx.request
    assert ctx.row is not None
    console = _console(request)
    files = await _feedback_files(ctx)
    if not files:
        raise HTTPException(404)
    await record_access(console.store, ctx.principal, "feedback-download", int(ctx.row["instance"]), ctx.address,
                        {"file": files[0]["name"]})
    return FileResponse(console.files.path(files[0]["sha256"]), media_type="text/csv",
                        headers=_attachment(files[0]["name"]))


@route(pages, "POST", "/istanze/{instance}/formatta", ACT_ON_INSTANCE, "action")
async def format_action(ctx: Ctx) -> Response:
    request = ctx.request
    assert ctx.row is not None
    try:
        await send_format_request(_console(request).settings.kafka_bootstrap, ctx.row, ctx.principal.name)
    except UserError as exc:
        raise HTTPException(409, f"L'istanza è {STATE_LABELS.get(ctx.row['state'])}: non si può formattare.") from exc
    return RedirectResponse(f"/istanze/{ctx.row['instance']}", status_code=303)


@route(pages, "POST", "/istanze/{instance}/cancella", ACT_ON_INSTANCE, "action")
async def delete_action(ctx: Ctx) -> Response:
    request = ctx.request
    assert ctx.row is not None
    reason = str((await request.form()).get("motivo") or "").strip() or None
    try:
        await append_deletion(_console(request).pool, ctx.row, ctx.principal.name, reason, source="/flows/console")
    except UserError as exc:
        raise HTTPException(409, f"L'istanza è {STATE_LABELS.get(ctx.row['state'])}: non si può cancellare.") from exc
    return RedirectResponse(f"/istanze/{ctx.row['instance']}", status_code=303)


# ---------------------------------------------------------------- Scadenze
DEADLINE_LABELS = {"covered": ("Coperta", "bg-success"), "late": ("In ritardo", "bg-danger"),
                   "due-soon": ("Scade entro 7 giorni", "bg-warning text-dark"), "open": ("Aperta", "bg-secondary")}


@route(pages, "GET", "/scadenze", LIST_INSTANCES, "page")
async def deadlines_page(ctx: Ctx, mese: str | None = None) -> Response:
    today = italian_today()
    year, month = default_month(today)
    error = None
    if mese:
        try:
            year, month = (int(x) for x in mese.split("-"))
            date(year, month, 1)
        except ValueError:
            error, (year, month) = f"Mese {mese!r} non valido: atteso AAAA-MM.", default_month(today)
    rows: list[dict[str, Any]] = []
    try:
        items = deadlines_for_month(year, month)
    except (DeadlineDataMissing, DeadlineDataInvalid) as exc:
        error = f"Scadenze non disponibili: {exc}"
    else:
        enti = None if ctx.principal.role in ("ops", "auditor") else sorted(ctx.principal.enti)
        for ente, deadline, covering in await coverage(_console(ctx.request).pool, items, None, enti):
            label, css = DEADLINE_LABELS[deadline_status(deadline, covering, today)]
            rows.append({"ente": ente, "d": deadline, "covering": covering, "label": label, "css": css})
    return page(ctx, "deadlines.html", "Scadenze", active="/scadenze", rows=rows, mese=f"{year:04d}-{month:02d}",
                error=error)


# ---------------------------------------------------------------- Invia a Sistema TS
def _sendable(row: asyncpg.Record) -> bool:
    if row["flow_type"] not in SENDABLE_FLOW_TYPES:
        return False
    try:
        target_of(flows.TYPE_OF[flows.TsSubmissionRequested], {}, InstanceState(row["state"]))
    except IllegalTransition:
        return False
    return True


@route(pages, "GET", "/istanze/{instance}/invia-ts", ACT_ON_INSTANCE, "page")
async def ts_send_form(ctx: Ctx) -> Response:
    assert ctx.row is not None
    if not _sendable(ctx.row):
        raise HTTPException(409, f"L'istanza è {STATE_LABELS.get(ctx.row['state'])}: non si può inviare a Sistema TS.")
    public_key = _console(ctx.request).settings.keys_dir / PUBLIC_KEY_FILE
    if not public_key.exists():
        raise HTTPException(503, "La chiave pubblica del gateway TS non è disponibile: il gateway è attivo?")
    return page(ctx, "ts_send.html", f"Invia a Sistema TS l'istanza {ctx.row['instance']}", active="/istanze",
                row=ctx.row, public_key=public_key.read_text(), today=italian_today().isoformat(), error=None)


@route(pages, "POST", "/istanze/{instance}/invia-ts", ACT_ON_INSTANCE, "action")
async def ts_send(ctx: Ctx) -> Response:
    """Receives only the box the browser sealed (and the date): never a credential in clear."""
    assert ctx.row is not None
    console = _console(ctx.request)
    if not _sendable(ctx.row):
        raise HTTPException(409, f"L'istanza è {STATE_LABELS.get(ctx.row['state'])}: non si può inviare a Sistema TS.")
    form = await ctx.request.form()
    sealed, when = str(form.get("sigillo") or ""), str(form.get("data") or "")
    try:
        transmission = date.fromisoformat(when)
    except ValueError:
        raise HTTPException(422, f"Data di trasmissione non valida ({when!r}), attesa AAAA-MM-GG.") from None
    today = italian_today()  # the CLI's rule (flows send-730): today in Italy or a later day, never a past one
    if transmission < today:
        raise HTTPException(422, f"La data di trasmissione {transmission:%d/%m/%Y} è nel passato: indichi oggi "
                                 f"({today:%d/%m/%Y}) o un giorno successivo.")
    try:
        await send_sealed_730(console.settings.kafka_bootstrap, console.pool, console.settings.keys_dir,
                              int(ctx.row["instance"]), sealed, transmission, ctx.principal.name)
    except UserError as exc:
        raise HTTPException(409, f"Invio non possibile: {exc}") from exc
    return RedirectResponse(f"/istanze/{ctx.row['instance']}", status_code=303)


# ---------------------------------------------------------------- access log
@route(pages, "GET", "/accessi", READ_ACCESS_LOG, "page")
async def access_log_page(ctx: Ctx, utente: str | None = None, istanza: str | None = None) -> Response:
    request = ctx.request
    instance = int(istanza) if istanza and istanza.isdigit() else None
    pool = _console(request).pool
    rows = await read_access_log(pool, utente or None, instance)
    # the record of user administration (auth.USERS_STREAM): the changes of the user asked for, or all; an API key's
    # issue and revocation come with its access-log name, api:<key id> (auth.user_history)
    changes = await auth.user_history(pool, utente or None, limit=200)
    return page(ctx, "access_log.html", "Registro degli accessi", active="/accessi", rows=rows, utente=utente,
                istanza=istanza, changes=changes, change_labels=USER_CHANGE_LABELS)


USER_CHANGE_LABELS = {auth.USER_ADDED: "aggiunto", auth.USER_DISABLED: "disattivato",
                      auth.USER_ENABLED: "riattivato", auth.USER_PASSWORD_SET: "nuova password",
                      auth.API_KEY_ADDED: "chiave API emessa", auth.API_KEY_REVOKED: "chiave API revocata"}


# ---------------------------------------------------------------- Esercizio (ops): dead letters, consumer lag
# The same functions as `flows dlq` and `flows lag` (services/runtime/deadletters.py, ops.py).
KAFKA_WAIT_S = 20
KAFKA_DOWN = "Kafka non risponde entro {s} secondi: i dati di esercizio non sono disponibili ora. Riprovi più tardi."


def _decision_text(event: Any) -> str:
    what = "rilanciato" if event.type == dl.REDRIVEN else "scartato"
    return f"{what} da {event.actor} il {event.recorded_at.astimezone(ROME):%d/%m/%Y %H:%M:%S}"


@route(pages, "GET", "/esercizio", READ_OPS, "page")
async def ops_page(ctx: Ctx) -> Response:
    """Per `.dlq` topic: dead letters and those still pending; per consumer group and partition: the lag."""
    console = _console(ctx.request)
    topics: list[dict[str, Any]] = []
    lags: list[ops.Lag] = []
    error = None
    try:
        async with asyncio.timeout(KAFKA_WAIT_S):
            found = await dl.dlq_topics(console.settings.kafka_bootstrap)
            decided = await dl.decisions(console.store)
            lags = await ops.consumer_lag(console.settings.kafka_bootstrap)
    except (TimeoutError, KafkaError, OSError):
        error = KAFKA_DOWN.format(s=KAFKA_WAIT_S)
    else:
        for t in found:
            if t.count:
                done = sum(1 for letter_id in decided if t.holds(letter_id))
                topics.append({"topic": t.topic, "count": t.count, "pending": max(t.count - done, 0)})
    groups: dict[str, dict[str, Any]] = {}
    for lag in lags:
        g = groups.setdefault(lag.group, {"partitions": 0, "lag": 0, "last": None})
        g["partitions"] += 1
        g["lag"] += lag.lag
        if lag.last_commit and (g["last"] is None or lag.last_commit > g["last"]):
            g["last"] = lag.last_commit
    return page(ctx, "ops.html", "Esercizio: messaggi non elaborabili e ritardo dei consumatori", active="/esercizio",
                topics=topics, groups=groups, lags=lags, error=error)


@route(pages, "GET", "/esercizio/scarti", READ_OPS, "page")
async def dead_letters_page(ctx: Ctx, coda: str | None = None, da_decidere: bool = False) -> Response:
    """The dead letters of one `.dlq` topic (or of all), oldest first, with what was decided about each."""
    console = _console(ctx.request)
    rows: list[dict[str, Any]] = []
    error = None
    try:
        async with asyncio.timeout(KAFKA_WAIT_S):
            letters = await dl.list_letters(console.settings.kafka_bootstrap, coda or None)
    except (TimeoutError, KafkaError, OSError):
        error, letters = KAFKA_DOWN.format(s=KAFKA_WAIT_S), []
    decided = await dl.decisions(console.store)
    for letter in letters:
        decision = decided.get(letter.id)
        if da_decidere and decision is not None:
            continue
        rows.append({"letter": letter, "status": _decision_text(decision) if decision else "da decidere"})
    title = f"Messaggi non elaborabili di {dl.dlq_topic(coda)}" if coda else "Messaggi non elaborabili"
    return page(ctx, "dead_letters.html", title, active="/esercizio", rows=rows, coda=coda or "",
                da_decidere=da_decidere, error=error)


async def _letter(ctx: Ctx, letter: str) -> dl.DeadLetter:
    """The dead letter the path names, or 404 (a malformed id, a topic, partition or offset that does not exist)."""
    try:
        dl.parse_id(letter)
    except ValueError:
        raise HTTPException(404) from None
    try:
        async with asyncio.timeout(KAFKA_WAIT_S):
            return await dl.fetch(_console(ctx.request).settings.kafka_bootstrap, letter)
    except ValueError:
        raise HTTPException(404) from None
    except (TimeoutError, KafkaError, OSError):
        raise HTTPException(503, KAFKA_DOWN.format(s=KAFKA_WAIT_S)) from None


async def _letter_page(ctx: Ctx, letter: dl.DeadLetter, status: int = 200, message: str | None = None,
                       level: str = "info") -> Response:
    console = _console(ctx.request)
    # A dead letter's body is a message as it was sent: a source record names its patient, so showing it
    # is a view of personal data, recorded like a file view.
    await record_access(console.store, ctx.principal, "dead-letter-view", None, ctx.address,
                        {"dead_letter": letter.id, "topic": letter.original_topic})
    decision = await dl.decision_about(console.store, letter.id)
    return page(ctx, "dead_letter.html", f"Messaggio non elaborabile {letter.id}", status=status, active="/esercizio",
                letter=letter, decision=decision, decision_text=_decision_text(decision) if decision else None,
                can_decide=ctx.principal.role in DECIDE_DEAD_LETTER.roles and decision is None,
                message=message, level=level)


@route(pages, "GET", "/esercizio/scarti/{letter}", READ_OPS, "page")
async def dead_letter_page(ctx: Ctx, letter: str) -> Response:
    """One dead letter: its reason, where it came from, its original headers and body, its decision."""
    return await _letter_page(ctx, await _letter(ctx, letter))


def _refused(letter_id: str, exc: dl.AlreadyDecided) -> str:
    done = (f"è già stato {_decision_text(exc.decision)}" if exc.decision
            else "è appena stato trattato da un altro utente")
    return (f"Il messaggio {letter_id} {done}: un messaggio non elaborabile si rilancia o si scarta una volta sola. "
            "Nessuna nuova azione è stata eseguita.")


@route(pages, "POST", "/esercizio/scarti/{letter}/rilancia", DECIDE_DEAD_LETTER, "action")
async def dead_letter_redrive(ctx: Ctx, letter: str) -> Response:
    """Re-publishes the message to its original topic (original key, a new ce id) once; the user is the actor."""
    found = await _letter(ctx, letter)
    console = _console(ctx.request)
    try:
        await dl.redrive(console.pool, console.store, found, ctx.principal.name)
    except dl.AlreadyDecided as exc:
        return await _letter_page(ctx, found, 409, _refused(found.id, exc), "danger")
    except dl.NotRedrivable as exc:
        why = ("non ha una chiave, e il suo argomento è partizionato per chiave" if exc.cause == "no-key"
               else "il suo contenuto non è JSON: nessun consumatore potrebbe leggerlo")
        return await _letter_page(ctx, found, 409, f"Il messaggio {found.id} non si può rilanciare: {why}. "
                                                   "Lo scarti indicandone il motivo.", "danger")
    return RedirectResponse(f"/esercizio/scarti/{urllib.parse.quote(found.id, safe='')}", status_code=303)


@route(pages, "POST", "/esercizio/scarti/{letter}/scarta", DECIDE_DEAD_LETTER, "action")
async def dead_letter_discard(ctx: Ctx, letter: str) -> Response:
    """Marks the message as not to be processed, with the reason; the user is the actor."""
    found = await _letter(ctx, letter)
    reason = str((await ctx.request.form()).get("motivo") or "").strip()
    if not reason:
        return await _letter_page(ctx, found, 422, "Indichi il motivo per cui il messaggio va scartato.", "danger")
    try:
        await dl.discard(_console(ctx.request).store, found.id, found.original_topic, reason, ctx.principal.name)
    except dl.AlreadyDecided as exc:
        return await _letter_page(ctx, found, 409, _refused(found.id, exc), "danger")
    return RedirectResponse(f"/esercizio/scarti/{urllib.parse.quote(found.id, safe='')}", status_code=303)


# ---------------------------------------------------------------- Utenti (admin)
# The same functions as `flows users add|list|disable|password` and `flows users api-key|api-keys|api-key-revoke`
# (services/console/auth.py): the same checks, the same records in the `console-users` stream, by the admin's name.
USER_FIELDS = ("name", "role", "enti", "structure", "password")


def _enti_field(text: str) -> list[str]:
    """The enti typed in a form's field, separated by spaces or commas (upper-cased: codes like 9A1)."""
    return [e.upper() for e in text.replace(",", " ").split()]


async def _users_page(ctx: Ctx, status: int = 200, form: dict[str, str] | None = None,
                      errors: dict[str, str] | None = None, message: str | None = None,
                      reset: dict[str, str] | None = None, reset_errors: dict[str, str] | None = None,
                      key_form: dict[str, str] | None = None, key_errors: dict[str, str] | None = None,
                      revoke_error: str | None = None, issued: dict[str, Any] | None = None) -> Response:
    """The users page: the users and the API keys, each with its forms. `issued`: a key just issued, whose whole
    key (with its secret) this answer shows, the only time it is ever shown."""
    pool = _console(ctx.request).pool
    users, keys = await auth.list_users(pool), await auth.list_api_keys(pool)
    return page(ctx, "users.html", "Utenti della console", status=status, active="/utenti", users=users,
                roles=auth.ROLES, form=form or {"name": "", "role": "operator", "enti": "", "structure": ""},
                errors=errors or {}, message=message, reset=reset or {"name": ""}, reset_errors=reset_errors or {},
                keys=keys, key_form=key_form or {"label": "", "enti": ""}, key_errors=key_errors or {},
                revoke_error=revoke_error, issued=issued, label_max=auth.API_KEY_LABEL_MAX)


@route(pages, "GET", "/utenti", MANAGE_USERS, "page")
async def users_page(ctx: Ctx) -> Response:
    return await _users_page(ctx)


@route(pages, "POST", "/utenti", MANAGE_USERS, "action")
async def user_add(ctx: Ctx) -> Response:
    """A local user, checked and stored by auth.add_user (argon2id), as `flows users add`. The password
    the administrator types is never shown back nor logged."""
    raw = await ctx.request.form()
    form = {k: str(raw.get(k) or "").strip() for k in ("name", "role", "enti", "structure")}
    password = str(raw.get("password") or "")
    enti = _enti_field(form["enti"])
    try:
        await auth.add_user(_console(ctx.request).pool, form["name"], form["role"], enti, form["structure"] or None,
                            password, by=ctx.principal.name)
    except auth.UserInputError as exc:
        return await _users_page(ctx, 422, form, {exc.field: exc.italian})
    return await _users_page(ctx, message=f"Utente {form['name']} aggiunto ({ROLE_LABELS[form['role']]}).")


@route(pages, "POST", "/utenti/{user}/disabilita", MANAGE_USERS, "action")
async def user_disable(ctx: Ctx, user: str) -> Response:
    """Disables the user and closes its sessions at once (auth.disable_user, as `flows users disable`)."""
    if user == ctx.principal.name:
        raise HTTPException(409, "Non può disattivare il suo stesso utente: lo chieda a un altro amministratore.")
    return await _changed_user(ctx, user, auth.disable_user, f"Utente {user} disattivato; le sue sessioni sono chiuse.")


@route(pages, "POST", "/utenti/{user}/riattiva", MANAGE_USERS, "action")
async def user_enable(ctx: Ctx, user: str) -> Response:
    """A disabled user active again (auth.enable_user, as `flows users enable`): it logs in with its own password."""
    return await _changed_user(ctx, user, auth.enable_user, f"Utente {user} riattivato.")


async def _changed_user(ctx: Ctx, user: str, change: Callable[..., Awaitable[None]], message: str) -> Response:
    """An administrator's change of `user` (one of auth's, recorded as done by the administrator); the users page
    with `message`, or 404 for a user that does not exist."""
    try:
        await change(_console(ctx.request).pool, user, by=ctx.principal.name)
    except auth.UserInputError:
        raise HTTPException(404) from None
    return await _users_page(ctx, message=message)


@route(pages, "POST", "/utenti/password", MANAGE_USERS, "action")
async def user_password(ctx: Ctx) -> Response:
    """A new password the administrator gives a user (auth.set_password, as `flows users password`): stored as an
    argon2id hash, never shown back nor logged; the user's open sessions are closed. The user is a field of the
    form (a select of the users): no script needed."""
    raw = await ctx.request.form()
    user, password = str(raw.get("name") or "").strip(), str(raw.get("password") or "")
    try:
        await auth.set_password(_console(ctx.request).pool, user, password, by=ctx.principal.name)
    except auth.UserInputError as exc:
        return await _users_page(ctx, 422, reset={"name": user}, reset_errors={exc.field: exc.italian})
    return await _users_page(ctx, message=f"Nuova password impostata per {user}; le sue sessioni sono chiuse.")


@route(pages, "POST", "/utenti/chiavi", MANAGE_USERS, "action")
async def api_key_add(ctx: Ctx) -> Response:
    """A new API key for a regional system, bound to its enti (auth.add_api_key, as `flows users api-key`; recorded
    as issued by the administrator). The whole key is in this answer only: not a redirect (a URL would carry it),
    no-store like every answer, never logged, never in the record (which has its id, label and enti)."""
    raw = await ctx.request.form()
    form = {k: str(raw.get(k) or "").strip() for k in ("label", "enti")}
    enti = _enti_field(form["enti"])
    try:
        key = await auth.add_api_key(_console(ctx.request).pool, form["label"], enti, by=ctx.principal.name)
    except auth.UserInputError as exc:
        return await _users_page(ctx, 422, key_form=form, key_errors={exc.field: exc.italian})
    key_id = key.partition(".")[0].removeprefix("fk_")
    enti = sorted(set(enti))
    return await _users_page(ctx, message=f"Chiave API {key_id} emessa per {form['label']} (enti {', '.join(enti)}).",
                             issued={"id": key_id, "label": form["label"], "enti": enti, "key": key})


@route(pages, "POST", "/utenti/chiavi/revoca", MANAGE_USERS, "action")
async def api_key_revoke(ctx: Ctx) -> Response:
    """Revokes the key whose id the form carries (auth.revoke_api_key, as `flows users api-key-revoke`; recorded as
    done by the administrator): the API answers 401 to it from the next request on. An unknown id, one already
    revoked (another administrator, a stale page) or a whole key given is refused, said above the keys' table (a
    whole key or a long value is never repeated: it may be a secret)."""
    given = str((await ctx.request.form()).get("key") or "").strip()
    try:
        key_id = auth.api_key_id(given)
        await auth.revoke_api_key(_console(ctx.request).pool, key_id, by=ctx.principal.name)
    except auth.UserInputError as exc:
        return await _users_page(ctx, 422, revoke_error=exc.italian)
    return await _users_page(ctx, message=f"Chiave API {key_id} revocata: l'API la rifiuta da ora.")


# ---------------------------------------------------------------- JSON API
def _instance_json(row: asyncpg.Record) -> dict[str, Any]:
    """An instance as the API gives it: values, no sentences of ours. `summary` is the text of the instance's last
    outcome as its producer wrote it (a failed load's '3 errori in 2 record', a format failure's reasons, Sistema
    TS's reason), or null; a deletion is `deleted_by` and `deletion_reason` (null when none was given), null
    while the instance is not deleted."""
    return {"instance": row["instance"], "flow_type": row["flow_type"], "version": row["version"],
            "ente": row["ente"], "source_instance": row["source_instance"], "created_at": row["created_at"].isoformat(),
            "period_start": row["period_start"].isoformat(), "period_end": row["period_end"].isoformat(),
            "state": row["state"], "counts": row["counts"], "errors": row["errors"], "warnings": row["warnings"],
            "summary": row["summary"], "deleted_by": row["deleted_by"], "deletion_reason": row["deletion_reason"]}


@route(api, "GET", "/istanze", LIST_INSTANCES, "api")
async def api_instances(ctx: Ctx, tipo: str | None = None, ente: str | None = None, dal: str | None = None,
                        al: str | None = None, stato: str | None = None, prima: int | None = None) -> Response:
    """Search instances, newest first; `prima` is the keyset cursor (the last instance of the previous page)."""
    request = ctx.request
    q, errors = _parse_search(request.query_params)
    if errors:
        return JSONResponse({"detail": errors}, status_code=422)
    rows = await search_instances(_console(request).pool, ctx.principal, q, PAGE_SIZE + 1)
    more, rows = len(rows) > PAGE_SIZE, rows[:PAGE_SIZE]
    return JSONResponse({"items": [_instance_json(r) for r in rows],
                         "next": rows[-1]["instance"] if more else None})


@route(api, "GET", "/istanze/{instance}", READ_INSTANCE, "api")
async def api_instance(ctx: Ctx, instance: int) -> Response:
    request = ctx.request
    assert ctx.row is not None
    files = await _console(request).pool.fetch(
        "SELECT name, kind, records, bytes, sha256 FROM instance_files WHERE instance = $1 ORDER BY name", instance)
    return JSONResponse({**_instance_json(ctx.row), "files": [dict(f) for f in files]})


class LoadRequestBody(pydantic.BaseModel):
    """A load request of a machine client: one of its enti, a reference period, optionally a start time."""

    flow_type: FlowType
    ente: str = pydantic.Field(examples=["201"])
    period_start: date
    period_end: date
    scheduled_at: datetime | None = None


@route(api, "POST", "/caricamenti", REQUEST_LOAD, "api", status_code=202)
async def api_request_load(ctx: Ctx, body: LoadRequestBody) -> Response:
    """Request a load; answers the request id (the instance appears in /api/istanze when the loader takes it)."""
    problems = {}
    if body.ente not in ctx.principal.enti:
        problems["ente"] = f"ente {body.ente!r} is not one of this client's enti"
    if body.period_end < body.period_start:
        problems["period_end"] = f"period_end {body.period_end} is before period_start {body.period_start}"
    if problems:
        return JSONResponse({"detail": problems}, status_code=422)
    try:
        command = load_request(body.flow_type.value, body.ente, body.period_start, body.period_end, "2020",
                               body.scheduled_at, ctx.principal.name)
    except pydantic.ValidationError as exc:
        return JSONResponse({"detail": {".".join(map(str, e["loc"])): e["msg"] for e in exc.errors()}},
                            status_code=422)
    await send_load_request(_console(ctx.request).settings.kafka_bootstrap, command)
    return JSONResponse({"request_id": str(command.request_id)}, status_code=202)


@route(api, "GET", "/istanze/{instance}/feedback", READ_INSTANCE, "api")
async def api_feedback(ctx: Ctx, instance: int) -> Response:
    """The feedback CSV of an instance (recorded in the access log: it names codici fiscali)."""
    files = await _feedback_files(ctx)
    if not files:
        raise HTTPException(404)
    console = _console(ctx.request)
    await record_access(console.store, ctx.principal, "feedback-download", instance, ctx.address,
                        {"file": files[0]["name"], "via": "api"})
    return FileResponse(console.files.path(files[0]["sha256"]), media_type="text/csv",
                        headers=_attachment(files[0]["name"]))


@route(api, "GET", "/istanze/{instance}/file/{name}", READ_INSTANCE, "api")
async def api_file(ctx: Ctx, instance: int, name: str) -> Response:
    """One file of an instance (recorded in the access log)."""
    f = await _file(ctx, name)
    console = _console(ctx.request)
    await record_access(console.store, ctx.principal, "file-download", instance, ctx.address,
                        {"file": name, "via": "api"})
    return FileResponse(console.files.path(f["sha256"]), media_type=f["media_type"], headers=_attachment(name))


# ---------------------------------------------------------------- onboarding
def _onboarding_deps(console: Console) -> onboarding.OnboardingDeps:
    return onboarding.OnboardingDeps(pool=console.pool, files=console.files,
                                     calendar=SwitchCalendar(load_patron_days()),
                                     store=EventStore(console.pool, source="/flows/console",
                                                      projections=[DashboardProjection()]))


@route(pages, "GET", "/onboarding", LIST_ONBOARDING, "page")
async def onboarding_dashboard(ctx: Ctx, stato: str | None = None) -> Response:
    rows = await onboarding_rows(_console(ctx.request).pool, stato or None)
    if ctx.principal.role == "structure":
        rows = [r for r in rows if r["structure_sts11"] == ctx.principal.structure]
    return page(ctx, "onboarding.html", "Onboarding delle strutture", active="/onboarding", rows=rows, stato=stato)


async def _onboarding_view(ctx: Ctx, message: str | None = None, level: str = "info",
                           switch: dict[str, Any] | None = None) -> dict[str, Any]:
    assert ctx.row is not None
    deps = _onboarding_deps(_console(ctx.request))
    request_id = str(ctx.row["request_id"])
    req = await onboarding.require(deps, request_id)
    history = await deps.store.read_stream(onboarding.stream_of(request_id))
    findings: dict[str, list[dict[str, Any]]] = {}
    for event in history:
        if event.type == "onboarding.document-assessed":
            findings[event.data["document_id"]] = list(event.data.get("problems") or [])
    latest = req.latest_by_slot()
    slots = []
    for slot in onboarding.required_slots(req, req.requirements):
        doc = latest.get(slot)
        state = ("mancante" if doc is None else "da valutare" if doc.compliant is None
                 else "conforme" if doc.compliant else "non conforme")
        slots.append({"slot": slot, "state": state, "doc": doc,
                      "findings": findings.get(doc.document_id, []) if doc else []})
    return {"row": ctx.row, "req": req, "slots": slots, "message": message, "level": level,
            "types": ["tracciati", *sorted(req.requirements.document_types)],
            "can_upload": ctx.principal.role in UPLOAD_ONBOARDING.roles,
            "can_download": ctx.principal.role in DOWNLOAD_ONBOARDING.roles,
            # the form is offered where the service would judge a slot (its rule still decides)
            "can_switch": ctx.principal.role in SWITCH_REQUEST.roles and req.complete_on is not None
            and req.requirements.kind(req.kind).switch,
            "switch": switch or {"form": {"data": "", "dalle": "09:00", "alle": "11:00", "credenziali": ""},
                                 "errors": {}, "proposal": None},
            "is_desk": ctx.principal.role in DESK_VERDICT.roles}


@route(pages, "GET", "/onboarding/{request}", READ_ONBOARDING, "page")
async def onboarding_request(ctx: Ctx) -> Response:
    assert ctx.row is not None
    return page(ctx, "onboarding_request.html", f"Richiesta {ctx.row['request_id']}", active="/onboarding",
                **await _onboarding_view(ctx))


async def _add_uploaded(ctx: Ctx, request_id: str, form: Any) -> tuple[int, str | None, str]:
    """The uploaded document given to the onboarding service: (status, message, level) for the page."""
    upload, doc_type = form.get("documento"), str(form.get("tipo") or "")
    if not isinstance(upload, UploadFile) or not upload.filename:
        return 422, "Scelga il file da caricare.", "danger"
    name = Path(upload.filename).name
    content = await upload.read()
    try:
        added = await onboarding.add_document(_onboarding_deps(_console(ctx.request)), request_id,
                                              name, content, doc_type, {}, ctx.principal.name)
    except onboarding.DocumentNotStored as exc:
        log.warning("store.full", path=str(exc.path), request=request_id, document=name, bytes=exc.size,
                    error=str(exc.__cause__), step="onboarding document")
        return 507, (f"Documento {name} non salvato: spazio su disco esaurito nell'archivio dei documenti. Non è "
                     "stato registrato nulla: riprovare più tardi (se il problema continua, avvisare l'esercizio)."), \
            "danger"
    except (onboarding.OnboardingError, ValueError) as exc:
        return 422, f"Documento non accettato: {exc}", "danger"
    message = f"Documento {name} ricevuto e valutato."
    if added.ignored_sheets:
        message += f" Fogli non richiesti, ignorati: {', '.join(added.ignored_sheets)}."
    return 200, message, "success"


@route(pages, "POST", "/onboarding/{request}/documenti", UPLOAD_ONBOARDING, "action")
async def onboarding_upload(ctx: Ctx) -> Response:
    """A document, assessed at once: a tracciato's findings come back with sheet, row, column and rule.

    A full disk answers 507 at once with nothing stored or recorded (the file store removes a partial file), and
    the person uploading tries again later: the file store's disk (the page names the document), or this server's
    temporary folder, where a large upload is spooled while it arrives (read_form: the name is not known yet).
    Each refusal is a `store.full` warning for the operators."""
    assert ctx.row is not None
    status, message, level = await _add_uploaded(ctx, str(ctx.row["request_id"]), await read_form(ctx.request))
    ctx.row = await _console(ctx.request).pool.fetchrow("SELECT * FROM onboarding_dashboard WHERE request_id = $1",
                                                        ctx.row["request_id"])
    return page(ctx, "onboarding_request.html", f"Richiesta {ctx.row['request_id']}", status=status,
                active="/onboarding", **await _onboarding_view(ctx, message, level))


@route(pages, "GET", "/onboarding/{request}/documenti/{document}", DOWNLOAD_ONBOARDING, "download")
async def onboarding_document(ctx: Ctx, document: str) -> Response:
    """A document of the request as it was received (a workbook of several tracciati: the whole workbook),
    recorded in the access log: a structure's documents name people (its staff, its users)."""
    assert ctx.row is not None
    console = _console(ctx.request)
    request_id = str(ctx.row["request_id"])
    received = [e for e in await console.store.read_stream(onboarding.stream_of(request_id))
                if e.type == "onboarding.document-received" and e.data.get("document_id") == document]
    if not received:  # the id is only ever looked up in the request's own history, never a path
        raise HTTPException(404)
    doc = received[-1].data
    if not console.files.exists(doc["sha256"]):
        raise HTTPException(503, "Il documento è registrato ma il suo file non è nell'archivio: avvisi l'esercizio.")
    await record_access(console.store, ctx.principal, "onboarding-document-download", None, ctx.address,
                        {"request": request_id, "document": document, "file": doc["filename"]})
    media_type = mimetypes.guess_type(doc["filename"])[0] or "application/octet-stream"
    return FileResponse(console.files.path(doc["sha256"]), media_type=media_type, headers=_attachment(doc["filename"]))


WEEKDAYS_IT = ("lunedì", "martedì", "mercoledì", "giovedì", "venerdì", "sabato", "domenica")


def _slot_text(day: date, start: str, end: str) -> str:
    return f"{WEEKDAYS_IT[day.weekday()]} {day:%d/%m/%Y}, {start}-{end}"


@route(pages, "POST", "/onboarding/{request}/switch", SWITCH_REQUEST, "action")
async def onboarding_switch(ctx: Ctx) -> Response:
    """A (new) switch slot, judged by the onboarding service's own rule (onboarding.request_switch, as the
    `onboarding switch` command): scheduled, or refused with the earliest valid slot proposed."""
    assert ctx.row is not None
    raw = await ctx.request.form()
    form = {k: str(raw.get(k) or "").strip() for k in ("data", "dalle", "alle", "credenziali")}
    errors: dict[str, str] = {}
    day = window = None
    try:
        day = date.fromisoformat(form["data"])
    except ValueError:
        errors["data"] = f"Data non valida ({form['data']!r}): attesa AAAA-MM-GG."
    try:
        window = SwitchWindow.parse(f"{form['dalle']}-{form['alle']}")
    except ValueError:
        errors["alle"] = f"Fascia oraria non valida ({form['dalle']}-{form['alle']}): attesa OO:MM - OO:MM."
    if form["credenziali"] not in ("", "basic", "new-oauth2"):
        errors["credenziali"] = f"Credenziali {form['credenziali']!r} sconosciute: basic o new-oauth2."
    status, message, level, proposal = 200, None, "success", None
    if errors:
        status, message, level = 422, "Lo switch non è stato chiesto: correggere i campi indicati.", "danger"
    else:
        assert day is not None and window is not None
        try:
            events = await onboarding.request_switch(_onboarding_deps(_console(ctx.request)),
                                                     str(ctx.row["request_id"]), SwitchSlot(day, window),
                                                     form["credenziali"] or None, ctx.principal.name)
        except (onboarding.OnboardingError, ValueError) as exc:
            status, message, level = 409, f"Switch non accettato: {exc}", "danger"
        else:
            decision = events[-1]
            if isinstance(decision, SwitchScheduled):
                chosen = _slot_text(decision.switch_date, decision.window_start, decision.window_end)
                message = f"Switch fissato per {chosen}" + (f" (attenzione: {decision.warning})."
                                                            if decision.warning else ".")
            elif isinstance(decision, SwitchRefused):
                level = "warning"
                proposal = {"data": decision.proposed_date.isoformat(), "dalle": decision.proposed_window_start,
                            "alle": decision.proposed_window_end,
                            "testo": _slot_text(decision.proposed_date, decision.proposed_window_start,
                                                decision.proposed_window_end)}
                asked = _slot_text(decision.switch_date, decision.window_start, decision.window_end)
                message = (f"Lo switch richiesto per {asked} non è possibile: {'; '.join(decision.reasons)}. "
                           f"Prima data valida: {proposal['testo']}.")
    ctx.row = await _console(ctx.request).pool.fetchrow("SELECT * FROM onboarding_dashboard WHERE request_id = $1",
                                                        ctx.row["request_id"])
    switch = {"form": form, "errors": errors, "proposal": proposal}
    return page(ctx, "onboarding_request.html", f"Richiesta {ctx.row['request_id']}", status=status,
                active="/onboarding", **await _onboarding_view(ctx, message, level, switch))


@route(pages, "POST", "/onboarding/{request}/verdetto", DESK_VERDICT, "action")
async def onboarding_verdict(ctx: Ctx) -> Response:
    assert ctx.row is not None
    form = await ctx.request.form()
    document, verdict = str(form.get("documento") or ""), str(form.get("esito") or "")
    reason = str(form.get("motivo") or "").strip()
    if verdict not in ("conforme", "non-conforme") or (verdict == "non-conforme" and not reason):
        raise HTTPException(422, "Indichi l'esito e, se non conforme, il motivo.")
    try:
        await onboarding.desk_verdict(_onboarding_deps(_console(ctx.request)), str(ctx.row["request_id"]), document,
                                    verdict == "conforme", [reason] if reason else [], ctx.principal.name)
    except onboarding.OnboardingError as exc:
        raise HTTPException(409, str(exc)) from exc
    return RedirectResponse(f"/onboarding/{ctx.row['request_id']}", status_code=303)
