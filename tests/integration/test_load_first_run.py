"""A load's first run starts beside its command's transaction (services.loader.handlers.FirstRun): its snapshot is
copied while the command appends the Running and commits, and the snapshot commits only after the Running did. So
no snapshot is ever committed for an instance that is not there: a Running that fails rolls its snapshot back, and
a loader killed (SIGKILL) before the Running's commit leaves nothing of either; the command, redelivered, makes
the load once.

The Running is held back for real: another transaction inserts the first event of the instance's stream (the
number the command will draw) and keeps it uncommitted, so the Running's insert waits on the events' primary key.
That transaction's ROLLBACK lets the Running through; its COMMIT makes the Running fail as a stream that moved."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest

from contracts import flows
from contracts.envelope import Envelope
from contracts.sources import DeliveredService
from services.loader import handlers
from services.loader.intake import store_services
from services.runtime.broker import Incoming
from services.runtime.commands import send_command
from services.runtime.db import create_pool
from services.runtime.eventstore import ConcurrencyError, EventStore
from services.runtime.filestore import FileStore
from services.runtime.host import prepare_database
from services.runtime.locks import LOAD_LOCK
from services.runtime.read_models import FLOW_PROJECTIONS
from simulators.cup.generator import generate, month_period
from tests.isolation import logged_process, scratch_database
from tests.stack_urls import KAFKA

pytestmark = pytest.mark.integration

ENTE, MONTH = "204", "2020-08"
TOPIC = flows.TYPE_OF[flows.LoadRequested]


def _command() -> flows.LoadRequested:
    start, end = month_period(MONTH)
    return flows.LoadRequested(request_id=uuid.uuid4(), flow_type=flows.FlowType.FLUSSO_C, ente=ENTE,
                               period=flows.Period(start=start, end=end), requested_by="op.test")


async def _store_month(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        services = [r for r in generate(ENTE, MONTH, 60, seed=4242) if isinstance(r, DeliveredService)]
        await store_services(conn, services)
    finally:
        await conn.close()


async def _next_instance(conn: asyncpg.Connection) -> int:
    """The number the next load request will draw (flow_instance_seq's next value, not drawn here)."""
    row = await conn.fetchrow("SELECT last_value, is_called FROM flow_instance_seq")
    return int(row["last_value"]) + 1 if row["is_called"] else int(row["last_value"])


@asynccontextmanager
async def _stream_held(url: str, instance: int) -> AsyncIterator[asyncpg.Connection]:
    """A transaction holding the first event of `instance`'s stream, uncommitted: a Running of it waits on the key.
    The caller ends it (ROLLBACK or COMMIT)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("BEGIN")
        await conn.execute(
            "INSERT INTO events (stream_id, version, event_id, type, data, actor, recorded_at, prev_hash, hash) "
            "VALUES ($1, 1, $2, 'test.held', '{}', 'test', now(), $3, $3)", f"instance-{instance}", uuid.uuid4(),
            bytes(32))
        yield conn
    finally:
        await conn.close()


async def _running_waits_and_snapshot_copied(conn: asyncpg.Connection, blocker_pid: int) -> None:
    """Until the Running's insert waits on the held key AND the snapshot's transaction has copied its rows and
    waits, uncommitted, for the Running (what FirstRun overlaps)."""
    async with asyncio.timeout(30):
        while True:
            rows = await conn.fetch(
                "SELECT state, wait_event_type, query FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND pid <> $1", blocker_pid)
            waiting = any(r["wait_event_type"] == "Lock" and "INSERT INTO events" in r["query"] for r in rows)
            copied = any(r["state"] == "idle in transaction" and "INSERT INTO snapshot_service" in r["query"]
                         for r in rows)
            if waiting and copied:
                return
            await asyncio.sleep(0.02)


async def _left_of(conn: asyncpg.Connection, instance: int, request_id: uuid.UUID) -> dict[str, int]:
    """What the load of `instance` left committed (its snapshot's number is the next, drawn by the same statement)."""
    return {
        "load_request": await conn.fetchval("SELECT count(*) FROM load_request WHERE request_id = $1", request_id),
        "instance_list": await conn.fetchval("SELECT count(*) FROM instance_list WHERE instance = $1", instance),
        "source_snapshot": await conn.fetchval("SELECT count(*) FROM source_snapshot WHERE instance = $1", instance),
        "snapshot_service": await conn.fetchval("SELECT count(*) FROM snapshot_service WHERE snapshot_id = $1",
                                                instance + 1),
        "processed_message": await conn.fetchval("SELECT count(*) FROM processed_message WHERE consumer = 'loader'"),
    }


@pytest.fixture
async def pool(fresh_db: str) -> AsyncIterator[asyncpg.Pool]:
    """A first run takes up to three connections at once: the command's, its snapshot's, and one for the read of a
    Running that failed on a stream that moved (services.runtime.eventstore) while the snapshot waits for it."""
    pool = await create_pool(fresh_db, min_size=1, max_size=3)
    try:
        yield pool
    finally:
        await pool.close()


NOTHING = {"load_request": 0, "instance_list": 0, "source_snapshot": 0, "snapshot_service": 0, "processed_message": 0}


@pytest.mark.parametrize("held", ["rolled back", "committed", "handler cancelled"])
async def test_the_snapshot_commits_only_after_the_running_and_is_rolled_back_with_it(
        held: str, fresh_db: str, pool: asyncpg.Pool, tmp_path: Path) -> None:
    await prepare_database(pool, FLOW_PROJECTIONS)
    await _store_month(fresh_db)
    deps = handlers.LoaderDeps(pool=pool, store=EventStore(pool, source="/flows/loader", projections=FLOW_PROJECTIONS),
                               files=FileStore(tmp_path / "files"))
    cmd = _command()
    msg = Incoming(Envelope.new(TOPIC, "/flows/cli"), str(cmd.request_id), TOPIC, 0, 0)
    observer = await asyncpg.connect(fresh_db)
    try:
        instance = await _next_instance(observer)
        async with _stream_held(fresh_db, instance) as blocker:
            handling = asyncio.create_task(handlers.handle_load_requested(cmd, msg, deps))
            await _running_waits_and_snapshot_copied(observer, blocker.get_server_pid())
            assert await _left_of(observer, instance, cmd.request_id) == NOTHING  # copied, not committed
            if held == "handler cancelled":  # the service stopping: the Running's statement and the load with it
                handling.cancel()
                with pytest.raises(asyncio.CancelledError):
                    async with asyncio.timeout(60):
                        await handling
            await blocker.execute("COMMIT" if held == "committed" else "ROLLBACK")
            if held != "rolled back":
                if held == "committed":
                    with pytest.raises(ConcurrencyError):
                        async with asyncio.timeout(60):
                            await handling
                assert await _left_of(observer, instance, cmd.request_id) == NOTHING
                assert not await observer.fetchval(
                    "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database WHERE l.locktype = "
                    "'advisory' AND d.datname = current_database() AND l.classid = $1 AND l.objid = $2", LOAD_LOCK,
                    instance)
                return
            async with asyncio.timeout(60):
                await handling
        left = await _left_of(observer, instance, cmd.request_id)
        rows = await observer.fetchval("SELECT rows FROM source_snapshot WHERE instance = $1", instance)
        assert rows > 0 and left == {**NOTHING, "load_request": 1, "instance_list": 1, "source_snapshot": 1,
                                     "snapshot_service": rows, "processed_message": 1}
        assert await observer.fetchval("SELECT state FROM instance_list WHERE instance = $1", instance) in (
            "Checked", "Failed loading")
    finally:
        await observer.close()


async def test_a_loader_killed_before_the_running_commits_leaves_nothing_and_the_command_loads_once(
        stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    async with scratch_database("t_first_run") as url:
        await _store_month(url)
        env = {**os.environ, "DATABASE_URL": url, "FLOWS_KAFKA_BOOTSTRAP": KAFKA, "FLOWS_FILES_DIR": str(tmp_path),
               "FLOWS_LOG_FORMAT": "json"}
        suffix = uuid.uuid4().hex[:8]  # both loaders in the same groups: the second takes the command up again
        observer = await asyncpg.connect(url)
        try:
            cmd = _command()
            instance = await _next_instance(observer)
            async with _stream_held(url, instance) as blocker:
                log = tmp_path / "loader-1.log"
                async with logged_process(log, "-m", "tests.integration.outage_loader", suffix, env=env) as first:
                    await _started(log, first)
                    await send_command(KAFKA, TOPIC, cmd, key=str(cmd.request_id))
                    await _running_waits_and_snapshot_copied(observer, blocker.get_server_pid())
                    first.send_signal(signal.SIGKILL)
                    await first.wait()
                await blocker.execute("ROLLBACK")  # the dead loader's Running goes through, and finds no client
                async with asyncio.timeout(30):  # its backends end: their transactions roll back
                    while await observer.fetchval(
                            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                            "AND pid <> pg_backend_pid() AND pid <> $1 AND backend_type = 'client backend'",
                            blocker.get_server_pid()):
                        await asyncio.sleep(0.05)
            assert await _left_of(observer, instance, cmd.request_id) == NOTHING
            log = tmp_path / "loader-2.log"
            async with logged_process(log, "-m", "tests.integration.outage_loader", suffix, "--resume",
                                      env=env) as second:
                await _started(log, second)
                async with asyncio.timeout(60):  # the command, never acknowledged, comes again
                    while (state := await observer.fetchval(
                            "SELECT l.state FROM instance_list l JOIN load_request r USING (instance) "
                            "WHERE r.request_id = $1", cmd.request_id)) not in ("Checked", "Failed loading"):
                        await asyncio.sleep(0.1)
            made = await observer.fetch("SELECT instance FROM load_request WHERE request_id = $1", cmd.request_id)
            assert len(made) == 1 and made[0]["instance"] > instance  # a new number: the dead run's were drawn
            again = int(made[0]["instance"])
            assert await observer.fetchval("SELECT count(*) FROM source_snapshot WHERE instance = $1", again) == 1
            assert state in ("Checked", "Failed loading")
            assert await observer.fetchval("SELECT count(*) FROM source_snapshot") == 1  # none of the dead run
        finally:
            await observer.close()


async def _started(log: Path, process: asyncio.subprocess.Process) -> None:
    async with asyncio.timeout(90):
        while '"service.started"' not in log.read_text(errors="replace"):
            assert process.returncode is None, log.read_text()[-3000:]
            await asyncio.sleep(0.2)
