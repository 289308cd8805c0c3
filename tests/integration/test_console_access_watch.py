"""Open live streams end at once when their access ends (services/console/access_watch.py), on the real console app,
PostgreSQL and Kafka: a logout and a disable announced by migration 0066's NOTIFY end the matching streams on two
console replicas at once, and only those; an ente no longer the user's (an OIDC login with other claims) ends the
streams of that ente; a LISTEN connection killed for real is opened again and every open stream checks once; and
a change that announced nothing is still caught by the keep-alive check, the safety net.

STREAM_CHECK_S is an hour wherever the notice is what must end a stream: the keep-alive check cannot do it within
the test. Every wait is a condition with a generous deadline; no assert is about time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncpg
import httpx
import pytest

from contracts import flows
from services.console import access_watch, auth, instance_pages, oidc
from services.runtime.eventstore import NewEvent
from services.runtime.outbox import OutboxRelay
from services.runtime.read_models import instance_stream
from tests.console_support import RunningConsole, csrf_of, running_console
from tests.stack_urls import KAFKA

pytestmark = pytest.mark.integration

DEADLINE_S = 60.0
AN_HOUR = 3600.0


@dataclass
class Stream:
    """An instance's event stream read in the background: the names of its events (`ready`, `change`, `ended`,
    and `keep-alive` for the comment the server sends after a check that passed), in order."""

    events: list[str] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_until(self, what: str, count: int = 1) -> None:
        async with asyncio.timeout(DEADLINE_S):
            while self.events.count(what) < count:
                if self.closed.is_set():
                    pytest.fail(f"the stream closed before its {count}. {what!r}: {self.events}")
                self.arrived.clear()
                await self.arrived.wait()

    async def wait_closed(self) -> None:
        async with asyncio.timeout(DEADLINE_S):
            await self.closed.wait()


@contextlib.asynccontextmanager
async def open_stream(client: httpx.AsyncClient, url: str) -> AsyncIterator[Stream]:
    """The stream of `url` read by `client` (no read timeout: with the keep-alive an hour away the stream is quiet),
    once the console said `ready`."""
    stream = Stream()

    async def read() -> None:
        try:
            async with client.stream("GET", url, headers={"accept": "text/event-stream"},
                                     timeout=httpx.Timeout(10.0, read=None)) as response:
                assert response.status_code == 200, response.status_code
                async for line in response.aiter_lines():
                    if line.startswith("event: ") or line == ": keep-alive":
                        stream.events.append(line[7:] if line.startswith("event: ") else "keep-alive")
                        stream.arrived.set()
        finally:
            stream.closed.set()
            stream.arrived.set()

    task = asyncio.create_task(read())
    try:
        await stream.wait_until("ready")
        yield stream
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def listeners(pool: asyncpg.Pool) -> list[int]:
    """The backends of the consoles' access watch on this database that have sent their LISTEN (their last
    statement is the LISTEN or the probe that checks it)."""
    rows = await pool.fetch("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                            "AND application_name = $1 AND query ILIKE '%listen%'", access_watch.APPLICATION_NAME)
    return [row["pid"] for row in rows]


async def until_listening(pool: asyncpg.Pool, consoles: int, not_pid: int | None = None) -> list[int]:
    async with asyncio.timeout(DEADLINE_S):
        while len(pids := [p for p in await listeners(pool) if p != not_pid]) < consoles:
            await asyncio.sleep(0.1)
    return pids


async def until_ready(client: httpx.AsyncClient, *consoles: RunningConsole) -> None:
    """Each console's Kafka feed sees what comes next (/readyz)."""
    async with asyncio.timeout(DEADLINE_S):
        for console in consoles:
            while (await client.get(console.url + "/readyz")).status_code != 200:
                await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def relaying(console: RunningConsole) -> AsyncIterator[None]:
    """The outbox relay of the services, so that an appended instance event reaches Kafka and the consoles."""
    stop = asyncio.Event()
    task = asyncio.create_task(OutboxRelay(console.pool, KAFKA, poll_interval=0.5).run(stop))
    try:
        yield
    finally:
        stop.set()
        await task


async def test_two_replicas_end_the_streams_of_a_logout_and_of_a_disable_at_once(  # type: ignore[no-untyped-def]
        fresh_db, tmp_path, monkeypatch) -> None:
    """op.201 has two sessions (two browsers) and three open streams on two console replicas. A logout on replica
    A ends the logged-out session's streams on A and on B at once, and not the other session's, which still gets
    the instance's changes; the administrator's disable then ends that one too."""
    monkeypatch.setattr(instance_pages, "STREAM_CHECK_S", AN_HOUR)
    files = tmp_path / "files"
    async with running_console(fresh_db, KAFKA, files) as a, running_console(fresh_db, KAFKA, files) as b, \
            relaying(a), httpx.AsyncClient(timeout=10) as first, httpx.AsyncClient(timeout=10) as second:
        await a.add_users()
        instance = await a.instance("201")
        assert (await a.login(first, "op.201")).status_code == 303
        assert (await b.login(second, "op.201")).status_code == 303
        await until_listening(a.pool, consoles=2)
        await until_ready(first, a, b)
        events = f"/istanze/{instance}/eventi"
        async with open_stream(first, a.url + events) as a_first, open_stream(first, b.url + events) as b_first, \
                open_stream(second, b.url + events) as b_second:
            logout = await first.post(a.url + "/logout",
                                      data={"csrf": csrf_of((await first.get(a.url + "/istanze")).text)})
            assert logout.status_code == 303 and logout.headers["location"] == "/login"
            await a_first.wait_closed()
            await b_first.wait_closed()
            assert a_first.events[-1] == b_first.events[-1] == "ended", (a_first.events, b_first.events)

            assert not b_second.closed.is_set()
            checked = flows.LoadChecked(instance=instance, source_instance=instance + 1, counts={"services": 3})
            await a.store.append(instance_stream(instance), [
                NewEvent("flows.load-checked", checked.model_dump(mode="json"), actor="loader")],
                expected_version=1, key=str(instance))
            await b_second.wait_until("change")  # the other session's stream lives on

            await auth.disable_user(a.pool, "op.201", by="adm.1")
            await b_second.wait_closed()
            assert b_second.events[-1] == "ended", b_second.events


async def test_an_ente_no_longer_the_users_ends_its_streams_of_that_ente(  # type: ignore[no-untyped-def]
        fresh_db, tmp_path, monkeypatch) -> None:
    """An OIDC operator of 201 and 202 watches one instance of each; it logs in again (another browser) and the
    identity provider's claims now give it 202 only (oidc.upsert_user, the callback's own function). The stream of
    the 201 instance ends at once; that of the 202 instance was woken too, checked, and stays."""
    monkeypatch.setattr(instance_pages, "STREAM_CHECK_S", AN_HOUR)
    async with running_console(fresh_db, KAFKA, tmp_path / "files") as console, \
            httpx.AsyncClient(timeout=10) as client:
        await oidc.upsert_user(console.pool, oidc.Identity("op.oidc", "operator", ["201", "202"], None))
        client.cookies.set("flows_session", await auth.open_session(console.pool, "op.oidc", 3600))
        of_201, of_202 = await console.instance("201"), await console.instance("202")
        await until_listening(console.pool, consoles=1)
        async with open_stream(client, f"{console.url}/istanze/{of_201}/eventi") as stream_201, \
                open_stream(client, f"{console.url}/istanze/{of_202}/eventi") as stream_202:
            await stream_202.wait_until("keep-alive")  # the check every stream makes once subscribed
            await oidc.upsert_user(console.pool, oidc.Identity("op.oidc", "operator", ["202"], None))
            await stream_201.wait_closed()
            assert stream_201.events[-1] == "ended", stream_201.events
            await stream_202.wait_until("keep-alive", count=2)  # woken by the same notice, still allowed
            assert not stream_202.closed.is_set()
            assert (await client.get(f"{console.url}/istanze/{of_201}/stato")).status_code == 404


async def test_a_lost_listen_connection_is_opened_again_and_every_open_stream_checks_once(  # type: ignore[no-untyped-def]
        fresh_db, tmp_path, monkeypatch) -> None:
    """The console's LISTEN backend is terminated for real (pg_terminate_backend, as a restart or an administrator
    would). While nobody listens the operator's session is deleted: its notice reaches no one. Once the console
    listens again (the first retry is set 3 s away here, so the deletion surely falls before it), every open stream
    checks once, and the stream of the deleted session ends."""
    monkeypatch.setattr(instance_pages, "STREAM_CHECK_S", AN_HOUR)
    monkeypatch.setattr(access_watch, "RELISTEN_FIRST_S", 3.0)
    async with running_console(fresh_db, KAFKA, tmp_path / "files") as console, \
            httpx.AsyncClient(timeout=10) as client:
        await console.add_users()
        instance = await console.instance("201")
        assert (await console.login(client, "op.201")).status_code == 303
        [listener] = await until_listening(console.pool, consoles=1)
        async with open_stream(client, f"{console.url}/istanze/{instance}/eventi") as stream:
            await stream.wait_until("keep-alive")  # subscribed and checked once, before the LISTEN dies
            assert await console.pool.fetchval("SELECT pg_terminate_backend($1, 30000)", listener)
            await console.pool.execute("DELETE FROM console_session WHERE user_name = 'op.201'")
            await stream.wait_closed()
            assert stream.events[-1] == "ended", stream.events
        assert await until_listening(console.pool, consoles=1, not_pid=listener)


async def test_a_change_that_announced_nothing_is_caught_by_the_keep_alive_check(  # type: ignore[no-untyped-def]
        fresh_db, tmp_path, monkeypatch) -> None:
    """The safety net. A session deleted with the triggers off (session_replication_role = replica, as a
    replication tool or a restore would) announces nothing; the stream's next keep-alive check ends it."""
    monkeypatch.setattr(instance_pages, "STREAM_CHECK_S", 0.5)
    async with running_console(fresh_db, KAFKA, tmp_path / "files") as console, \
            httpx.AsyncClient(timeout=10) as client:
        await console.add_users()
        instance = await console.instance("201")
        assert (await console.login(client, "op.201")).status_code == 303
        async with open_stream(client, f"{console.url}/istanze/{instance}/eventi") as stream:
            async with console.pool.acquire() as conn, conn.transaction():
                await conn.execute("SET LOCAL session_replication_role = replica")
                await conn.execute("DELETE FROM console_session WHERE user_name = 'op.201'")
            await stream.wait_closed()
            assert stream.events[-1] == "ended", stream.events
