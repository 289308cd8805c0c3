"""The console under test: the real app on a real uvicorn server (a port derived from the test
stack's FLOWS_KAFKA_PORT_BASE, so parallel checkouts never collide), on a fresh migrated database
and the test stack's Kafka; instances are written through the event store like the services do."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import html
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import asyncpg
import httpx
import uvicorn
from playwright.async_api import Browser, BrowserContext

from contracts import flows
from services.console import auth
from services.console.app import create_app
from services.console.server import ConsoleHttpProtocol
from services.console.web import STATIC, VENDOR, ConsoleApp
from services.onboarding import handlers
from services.runtime.db import create_pool
from services.runtime.eventstore import EventStore, NewEvent
from services.runtime.filestore import FileStore
from services.runtime.host import prepare_database
from services.runtime.read_models import FLOW_PROJECTIONS, instance_stream
from services.runtime.settings import Settings
from tests.stack_urls import free_port

PASSWORD = "correct horse battery"
STRUCTURE = "150123"  # the structure user's STS11: the HUB of tests.fixtures.onboarding.workbooks
ROLE_USERS = {"operator": ("op.201", ["201"]), "structure": ("st.1", []), "desk": ("desk.1", []),
              "ops": ("ops.1", []), "auditor": ("aud.1", []), "admin": ("adm.1", [])}
# The browser of an Italian operator: the console's pages, date inputs and screenshots as they see them. Every
# Playwright context of the console's browser tests is made by `italian_context`; date inputs are still
# filled with ISO values, which work in any locale.
BROWSER_LOCALE, BROWSER_TIMEZONE = "it-IT", "Europe/Rome"


CHROMIUM = os.environ.get("FLOWS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


class BrowserSession:
    """The session's Chromium (tests/e2e/conftest.py `chromium`, launched once: ~1 s a launch, some 35 a run) as one
    test's browser: its contexts, each with its own cookies, storage and cache as in a browser of its own, are the
    test's; `close` closes them and leaves Chromium to the next test."""

    def __init__(self, chromium: Browser) -> None:
        assert chromium.is_connected(), "the session's Chromium is gone"
        self.chromium = chromium
        self.contexts: list[BrowserContext] = []

    async def new_context(self, **options: Any) -> BrowserContext:
        context = await self.chromium.new_context(**options)
        self.contexts.append(context)
        return context

    async def close(self) -> None:
        while self.contexts:
            await self.contexts.pop().close()


@contextlib.asynccontextmanager
async def browser_of(chromium: Browser) -> AsyncIterator[BrowserSession]:
    """A test's browser on the session's Chromium, its contexts closed when the block ends, as a browser launched for
    the block was: before a console opened in the same `async with` stops (its pages' live streams end first)."""
    session = BrowserSession(chromium)
    try:
        yield session
    finally:
        await session.close()


async def italian_context(browser: Browser | BrowserSession, **options: Any) -> BrowserContext:
    """A new Playwright browser context with the Italian operator's locale and time zone."""
    return await browser.new_context(locale=BROWSER_LOCALE, timezone_id=BROWSER_TIMEZONE, **options)


@functools.cache
def password_hash(hasher: Callable[[str], str] = auth.hash_password) -> str:
    """PASSWORD's argon2id hash (auth.hash_password, the console's own), made once a session."""
    return hasher(PASSWORD)


def _session_hash(password: str) -> str:
    assert password == PASSWORD, "the session's hash is PASSWORD's only"
    return password_hash()


@dataclass
class RunningConsole:
    url: str
    settings: Settings
    pool: asyncpg.Pool
    store: EventStore
    files: FileStore
    app: ConsoleApp | None = None  # the app the server runs (its own pool: app.state.console.pool)

    async def add_users(self) -> None:
        """The users of ROLE_USERS, added by auth.add_user (checked, recorded) with PASSWORD's hash of the session
        (`password_hash`): six argon2id hashes cost a console fixture ~0.6-1 s of CPU, before every test."""
        with mock.patch.object(auth, "hash_password", _session_hash):
            for role, (name, enti) in ROLE_USERS.items():
                if await self.pool.fetchval("SELECT 1 FROM console_user WHERE name = $1", name):
                    continue  # a session-wide database (the e2e platform's) has them from an earlier test
                await auth.add_user(self.pool, name, role, enti, STRUCTURE if role == "structure" else None,
                                    PASSWORD, by="test")

    async def instance(self, ente: str, state_events: list[tuple[str, dict[str, Any]]] = (),  # type: ignore[assignment]
                       flow_type: str = "FLUSSO_C", period: tuple[str, str] = ("2026-10-01", "2026-10-31")) -> int:
        """A new instance of `ente` for `period` (start, end), Running, then through `state_events` (type, data
        without instance)."""
        number = int(await self.pool.fetchval("SELECT nextval('flow_instance_seq')"))  # the loader's numbering
        running = flows.LoadRunning(instance=number, request_id=uuid.uuid4(), flow_type=flows.FlowType(flow_type),
                                    version="2020", ente=ente,
                                    period=flows.Period.model_validate({"start": period[0], "end": period[1]}),
                                    requested_by="op.test")
        events = [NewEvent("flows.load-running", running.model_dump(mode="json"), actor="loader")]
        events += [NewEvent(t, {"instance": number, **d}, actor="loader") for t, d in state_events]
        await self.store.append(instance_stream(number), events, expected_version=0, key=str(number), publish=False)
        return number

    async def onboarding_request(self, request_id: str, sts11: str, name: str = "Laboratorio Analisi Vesuvio",
                                 kind: str = "new-aggregation") -> str:
        """An onboarding request of structure `sts11` (by default a new aggregation with two SPOKEs), opened as the
        CLI does."""
        from contracts.onboarding import RequestKind, RequestOpened, Spoke
        from services.console.onboarding_pages import _onboarding_deps
        from services.console.web import Console

        deps = _onboarding_deps(Console(self.settings, self.pool, self.store, self.files, None, None))  # type: ignore[arg-type]
        spokes = [Spoke(sts11="150456", name="Lab Partenope", already_on_cup=True),
                  Spoke(sts11="150789", name="Lab Posillipo", already_on_cup=False)]
        if kind != "new-aggregation":
            spokes = []
        command = RequestOpened(request_id=request_id, kind=RequestKind(kind), structure_name=name,
                                structure_sts11=sts11, municipality_istat="063049", spokes=spokes,
                                other_structures=[], requirements_version=deps.requirements().version,
                                opened_at=datetime.now(UTC), opened_by="desk.1")
        await handlers.open_request(deps, command, "desk.1")
        return request_id

    async def onboarding_document(self, request_id: str, filename: str, content: bytes,
                                  document_type: str = "suap-authorisation",
                                  metadata: dict[str, str] | None = None) -> str:
        """A document added to the request as the `onboarding` CLI adds it; its document id."""
        from contracts.onboarding import DocumentReceived
        from services.console.onboarding_pages import _onboarding_deps
        from services.console.web import Console

        deps = _onboarding_deps(Console(self.settings, self.pool, self.store, self.files, None, None))  # type: ignore[arg-type]
        added = await handlers.add_document(deps, request_id, filename, content, document_type,
                                            {"protocol": "P-7"} if metadata is None else metadata,
                                            "desk.1")
        return next(e.document_id for e in added.events if isinstance(e, DocumentReceived))

    def file_ref(self, name: str, kind: str, data: bytes, records: int, media_type: str = "text/plain") -> dict:
        sha, size = self.files.put_bytes(data)
        return {"name": name, "kind": kind, "records": records, "bytes": size, "sha256": sha, "media_type": media_type}

    async def login(self, client: httpx.AsyncClient, user: str, password: str = PASSWORD) -> httpx.Response:
        form = await client.get(f"{self.url}/login")
        token = csrf_of(form.text)
        # its own timeout, whatever the client's (httpx's default is 5 s): the password's argon2id check is CPU work,
        # 0.79 s measured at load 10 (the slowest request of the console tests by far), a hang guard here
        return await client.post(f"{self.url}/login", data={"utente": user, "password": password, "csrf": token},
                                 timeout=30)

    @contextlib.asynccontextmanager
    async def client(self, role: str) -> AsyncIterator[httpx.AsyncClient]:
        """An HTTP client logged in as the console_support user of `role` (ROLE_USERS)."""
        async with httpx.AsyncClient(follow_redirects=False, timeout=20) as client:
            assert (await self.login(client, ROLE_USERS[role][0])).status_code == 303
            yield client


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "the page has no CSRF field"
    return match.group(1)


# Any /static URL in a page: in an attribute (src, href, data-vendor, ...) or a CSS url(...).
STATIC_URL = re.compile(r"""(?<=["'(])/static/[^"'()\s]*""")
FILE_URL = re.compile(r"^/static/(?P<rel>[^?@]+)\?v=(?P<v>[0-9a-f]{12})$")
DIRECTORY_URL = re.compile(r"^/static/(?P<rel>[^?@]+)@(?P<v>[0-9a-f]{12})$")


def static_urls(page: str) -> set[str]:
    return {html.unescape(u) for u in STATIC_URL.findall(page)}


def file_fingerprint(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def directory_fingerprint(directory: Path) -> str:
    """As services/console/assets.py documents it: the lines `<path below>\\0<sha256 of the file>\\n` of every file
    beneath, in the order of their paths."""
    hasher = hashlib.sha256()
    for rel in sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()):
        hasher.update(f"{rel}\0{hashlib.sha256((directory / rel).read_bytes()).hexdigest()}\n".encode())
    return hasher.hexdigest()[:12]


def is_current_static_url(url: str, static_dir: Path = STATIC) -> bool:
    """Whether `url` (path and query) carries the current fingerprint of its content: a file's own (`?v=`), or that
    of Bootstrap Italia's directory (`@`: data-vendor, and the URLs console.js and the bundle build below it)."""
    file, directory = FILE_URL.match(url), DIRECTORY_URL.match(_directory_part(url))
    if file:
        return (static_dir / file["rel"]).is_file() and file["v"] == file_fingerprint(static_dir / file["rel"])
    if directory:
        below = url[len(directory.group(0)):]  # "" (data-vendor itself) or a file's path below the directory
        exists = below == "" or (below[:1] == "/" and "?" not in below and (static_dir / VENDOR / below[1:]).is_file())
        return directory["rel"] == VENDOR and directory["v"] == directory_fingerprint(static_dir / VENDOR) and exists
    return False


def _directory_part(url: str) -> str:
    """`url` up to the end of its directory@fingerprint segment (the whole URL when it has none)."""
    at = url.find("@")
    return url if at < 0 else url[:at + 13]


def stale_static_urls(page: str, static_dir: Path = STATIC) -> list[str]:
    """The /static URLs of `page` that do not carry the current fingerprint of their content."""
    return [url for url in sorted(static_urls(page)) if not is_current_static_url(url, static_dir)]


@contextlib.asynccontextmanager
async def running_console(database_url: str, kafka: str, files_dir: Path, static_dir: Path | None = None,
                          **overrides: Any) -> AsyncIterator[RunningConsole]:
    """The console on its port until the block ends; `static_dir`: its static assets (default: the app's own)."""
    port = free_port(100, 300)
    values: dict[str, Any] = {"console_secure_cookies": False, "log_format": "console", **overrides}
    settings = Settings(database_url=database_url, kafka_bootstrap=kafka, files_dir=files_dir, console_port=port,
                        **values)
    pool = await create_pool(database_url, min_size=1, max_size=4)
    await prepare_database(pool, FLOW_PROJECTIONS)
    app = create_app(settings) if static_dir is None else create_app(settings, static_dir)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                                           http=ConsoleHttpProtocol))  # the deployed protocol (__main__.py)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(30):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.05)
        yield RunningConsole(f"http://127.0.0.1:{port}", settings, pool,
                             EventStore(pool, source="/flows/test", projections=FLOW_PROJECTIONS), FileStore(files_dir),
                             app)
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await pool.close()
