"""The console's two speed targets (issue 12), measured in one run on the local stack:

1. With 100,000 instances, a page of the instance list (HTTP, logged in, rendered HTML) at p95
   within 2x of the raw SQL query for the same page. Pages are the first one and the next ones by
   keyset (`prima`), for an operator of two enti and for an ops user, with and without a state
   filter; console and raw alternate page by page so machine load hits both alike. The raw query is the
   page's own list SQL (services/console/instance_pages.py `list_page_rows`: its columns, the filters asked, the
   principal given), the same statement text for the same search, so both run on PostgreSQL's cached generic plan once
   warm; the page runs the same list with its session lookup in one statement. The pages are
   fetched over one keep-alive connection and parsed by httptools (llhttp, C), as the raw query runs on
   asyncpg's Cython protocol (`PageClient`).
2. An instance's state change reaches an open page within 1 s of its event on Kafka (p95 over 50
   changes): from the moment the event is acknowledged by Kafka to the moment the page's live
   stream announced it AND the page fetched the fresh fragment (what console.js does).

    uv run python bench/console.py [--instances 100000] [--changes 50] [--against DIR]

`--against DIR` also starts the console of another checkout (DIR holds its `services` and `contracts`, e.g.
`git archive main services contracts | tar -x -C DIR`) and fetches each page from both consoles in turn, their
order swapped every other pass, after the raw query: the two pages' figures come from the same seconds of the
machine, which one run's p95 of a shared machine does not give from run to run. The raw query and the ratio
printed first stay this checkout's.

Runs on a fresh database of the stack's PostgreSQL (DATABASE_URL, or FLOWS_PG_PORT), dropped at
the end; Kafka at FLOWS_KAFKA_BOOTSTRAP (or 127.0.0.1:FLOWS_KAFKA_PORT_BASE). The instance rows are
written straight into the read model (COPY): this measures the console's read path, not the loader.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import socket
import statistics
import sys
import tempfile
import time
import urllib.parse
from datetime import UTC, datetime, timedelta

import asyncpg
import httptools
import httpx
from aiokafka import AIOKafkaProducer

from services.console import auth
from services.console.instance_pages import Search, list_page_rows
from services.console.web import PAGE_SIZE
from services.runtime.db import create_database, create_pool, drop_database
from services.runtime.host import prepare_database
from services.runtime.read_models import FLOW_PROJECTIONS

PG = (os.environ.get("DATABASE_URL")
      or f"postgresql://postgres@127.0.0.1:{os.environ.get('FLOWS_PG_PORT', '15432')}/flows")
KAFKA = os.environ.get("FLOWS_KAFKA_BOOTSTRAP") or f"127.0.0.1:{os.environ.get('FLOWS_KAFKA_PORT_BASE', '19092')}"
PASSWORD = "bench password 1"
STATES = ["Checked", "Failed loading", "Formatted", "Confirmed", "Running"]


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[18] if len(values) >= 20 else max(values)


def free_port() -> int:
    base = int(os.environ.get("FLOWS_KAFKA_PORT_BASE", "19092")) + 150
    for port in range(base, base + 100):
        with socket.socket() as s:
            with contextlib.suppress(OSError):
                s.bind(("127.0.0.1", port))
                return port
    raise RuntimeError("no free port")


# The files of an instance in each state, as the services leave them (instance_files, and the read model's has_esiti
# and has_files, which the list page reads for its Azioni column): a failed load's feedback, a Checked load's when it
# warned (every other one here), a formatted one's C1 and C2.
FILES = {"Checked": (("feedback",), ()), "Failed loading": (("feedback",),) * 2, "Formatted": (("C1", "C2"),) * 2,
         "Confirmed": (("C1", "C2"),) * 2, "Running": ((), ())}


async def fill(pool: asyncpg.Pool, n: int) -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    rows, files = [], []
    for i in range(n):
        created = start + timedelta(minutes=7 * i)
        month = created.date().replace(day=1)
        instance, state = 1947 + i, STATES[i % len(STATES)]
        kinds = FILES[state][i % 2]
        rows.append((instance, "FLUSSO_C", "2020", f"{201 + i % 10}", created, month, month + timedelta(days=27),
                     state, created, "bench", "flows.load-checked", 3, "feedback" in kinds,
                     any(kind != "feedback" for kind in kinds)))
        for kind in kinds:
            name = f"feedback_{instance}.csv" if kind == "feedback" else f"{kind}_{instance}.txt"
            files.append((instance, name, kind, 10, 1000, "0" * 64, "text/plain", created))
    await pool.copy_records_to_table("instance_list", records=rows, columns=[
        "instance", "flow_type", "version", "ente", "created_at", "period_start", "period_end", "state",
        "state_since", "requested_by", "last_event", "events", "has_esiti", "has_files"])
    await pool.copy_records_to_table("instance_files", records=files, columns=[
        "instance", "name", "kind", "records", "bytes", "sha256", "media_type", "added_at"])
    await pool.execute("ANALYZE instance_list")
    await pool.execute("ANALYZE instance_files")


async def login(client: httpx.AsyncClient, url: str, user: str) -> None:
    form = await client.get(url + "/login")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert token
    response = await client.post(url + "/login", data={"utente": user, "password": PASSWORD, "csrf": token.group(1)})
    assert response.status_code == 303, response.status_code


class PageClient(asyncio.Protocol):
    """GETs over one keep-alive HTTP/1.1 connection, each answer parsed by httptools (llhttp, the C parser uvicorn
    parses the requests with): the page's time is the server's and the network's, as the raw query's is
    PostgreSQL's and asyncpg's Cython protocol's. A general client's own Python was a large part of what it timed:
    httpx (pure-Python h11) ~3 ms a page; aiohttp ~0.13 ms of the ~0.34 ms a GET /healthz took (this client:
    ~0.21 ms), while the raw query's p50 is ~0.45 ms."""

    def __init__(self, cookie: str) -> None:
        self.cookie = cookie
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.body: list[bytes] = []
        self.done: asyncio.Future[None] | None = None

    @classmethod
    async def open(cls, url: str, cookie: str = "") -> PageClient:
        address = urllib.parse.urlsplit(url)
        assert address.hostname and address.port, url
        _, client = await asyncio.get_running_loop().create_connection(
            lambda: cls(cookie), address.hostname, address.port)
        return client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError("the console closed the connection"))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        assert self.done is not None
        self.done.set_result(None)

    async def get(self, path: str, params: dict[str, str] | None = None) -> tuple[int, str]:
        assert self.transport is not None
        target = path + ("?" + urllib.parse.urlencode(params) if params else "")
        self.body, self.done = [], asyncio.get_running_loop().create_future()
        cookie = f"Cookie: {self.cookie}\r\n" if self.cookie else ""
        self.transport.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{cookie}\r\n".encode())
        await self.done
        return self.parser.get_status_code(), b"".join(self.body).decode()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def list_pages(pool: asyncpg.Pool, urls: list[str], rounds: int) -> tuple[list[list[float]], list[float]]:
    """The pages of each console of `urls` (their times, in the order of `urls`) and the raw query's times."""
    consoles_ms: list[list[float]] = [[] for _ in urls]
    raw_ms: list[float] = []
    for user in ("op.bench", "ops.bench"):
        principal = auth.Principal(user, "operator" if user == "op.bench" else "ops", frozenset({"201", "202"}))
        sessions = []
        for url in urls:
            async with httpx.AsyncClient(follow_redirects=False, timeout=30) as client:
                await login(client, url, user)
                sessions.append(await PageClient.open(url, f"flows_session={client.cookies.get('flows_session')}"))
        try:
            for state in (None, "Checked"):
                for n in range(rounds):
                    before = None
                    order = list(range(len(urls)))[::-1 if n % 2 else 1]
                    for _page in range(20):
                        q = Search(stato=state, prima=before)
                        t0 = time.perf_counter()
                        rows = await list_page_rows(pool, principal, q)
                        raw_ms.append((time.perf_counter() - t0) * 1000)
                        params = {k: str(v) for k, v in (("stato", state), ("prima", before)) if v is not None}
                        for i in order:
                            t0 = time.perf_counter()
                            status, html = await sessions[i].get("/istanze", params)
                            consoles_ms[i].append((time.perf_counter() - t0) * 1000)
                            assert status == 200 and f'href="/istanze/{rows[0]["instance"]}"' in html
                        before = rows[PAGE_SIZE - 1]["instance"]
        finally:
            for session in sessions:
                session.close()
    return consoles_ms, raw_ms


async def start_console(env: dict[str, str], port: int, checkout: str | None = None) -> asyncio.subprocess.Process:
    """The console in its own process, as deployed (client and server do not share an event loop); `checkout`: a
    folder whose `services` it runs (default: this checkout's), until /readyz answers."""
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.console", env={**env, "FLOWS_CONSOLE_PORT": str(port)},
        stdout=asyncio.subprocess.DEVNULL, cwd=checkout)
    url = f"http://127.0.0.1:{port}"
    async with asyncio.timeout(60), httpx.AsyncClient() as ready:
        while True:
            with contextlib.suppress(httpx.TransportError):
                if (await ready.get(url + "/readyz")).status_code == 200:
                    return server
            if server.returncode is not None:
                raise RuntimeError(f"the console of {checkout or 'this checkout'} exited ({server.returncode})")
            await asyncio.sleep(0.2)


async def live_changes(pool: asyncpg.Pool, url: str, changes: int) -> list[float]:
    instance = int(await pool.fetchval("SELECT max(instance) FROM instance_list WHERE ente = '201'"))
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, acks="all")
    await producer.start()
    latencies: list[float] = []
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            await login(client, url, "op.bench")
            async with client.stream("GET", f"{url}/istanze/{instance}/eventi") as stream:
                lines = stream.aiter_lines()
                while "ready" not in await anext(lines):
                    pass
                for _ in range(changes):
                    await producer.send_and_wait("flows.load-checked", b"{}", key=str(instance).encode())
                    t0 = time.perf_counter()
                    while not (await anext(lines)).startswith("event: change"):
                        pass
                    fragment = await client.get(f"{url}/istanze/{instance}/stato")
                    assert fragment.status_code == 200
                    latencies.append((time.perf_counter() - t0) * 1000)
                    await asyncio.sleep(0.05)
    finally:
        await producer.stop()
    return latencies


async def main(instances: int, changes: int, rounds: int, against: str | None) -> None:
    url_db = await create_database(PG, "bench_console", migrated=False)  # prepare_database migrates
    pool = await create_pool(url_db, min_size=1, max_size=4)
    servers: list[asyncio.subprocess.Process] = []
    try:
        await prepare_database(pool, FLOW_PROJECTIONS)
        t0 = time.perf_counter()
        await fill(pool, instances)
        print(f"{instances:,} instances written in {time.perf_counter() - t0:.1f} s")
        await auth.add_user(pool, "op.bench", "operator", ["201", "202"], None, PASSWORD, by="bench")
        await auth.add_user(pool, "ops.bench", "ops", [], None, PASSWORD, by="bench")
        env = {**os.environ, "DATABASE_URL": url_db, "FLOWS_KAFKA_BOOTSTRAP": KAFKA,
               "FLOWS_CONSOLE_SECURE_COOKIES": "false", "FLOWS_FILES_DIR": tempfile.mkdtemp(),
               "FLOWS_LOG_LEVEL": "WARNING"}
        urls = []
        for checkout in (None, against) if against else (None,):
            port = free_port()  # after the previous console took its own
            servers.append(await start_console(env, port, checkout))
            urls.append(f"http://127.0.0.1:{port}")
        url = urls[0]
        probe = await PageClient.open(url)
        floor = []
        for _ in range(200):
            t0 = time.perf_counter()
            status, _ = await probe.get("/healthz")
            floor.append((time.perf_counter() - t0) * 1000)
            assert status == 200
        probe.close()
        print(f"HTTP floor (GET /healthz, no database): p95 {p95(floor):.2f} ms")
        (console_ms, *other_ms), raw_ms = await list_pages(pool, urls, rounds)
        ratio = p95(console_ms) / p95(raw_ms)
        print(f"instance list, {len(console_ms)} pages of {PAGE_SIZE}: console p95 {p95(console_ms):.2f} ms, "
              f"raw SQL p95 {p95(raw_ms):.2f} ms, ratio {ratio:.2f} (target <= 2); p50 console "
              f"{statistics.median(console_ms):.2f} ms, raw {statistics.median(raw_ms):.2f} ms")
        for other in other_ms:
            print(f"  the console of {against}, the same pages in turn: p95 {p95(other):.2f} ms, ratio "
                  f"{p95(other) / p95(raw_ms):.2f}; p50 {statistics.median(other):.2f} ms")
        live = await live_changes(pool, url, changes)
        print(f"live state change, {len(live)} changes: p95 {p95(live):.0f} ms, max {max(live):.0f} ms "
              f"(target p95 <= 1000 ms)")
    finally:
        for server in servers:
            server.terminate()
            await server.wait()
        await pool.close()
        await drop_database(PG, url_db)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5,
                        help="passes over the 20 pages of each user and filter (5: 400 pages)")
    parser.add_argument("--against", metavar="DIR",
                        help="also the console of the checkout in DIR, page by page in turn with this one")
    args = parser.parse_args()
    asyncio.run(main(args.instances, args.changes, args.rounds, args.against))
