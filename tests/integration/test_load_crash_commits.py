"""A load's snapshot and its checked mark commit without waiting for the WAL flush (services/loader/snapshot.py,
services/loader/pipeline.py `mark_checked`); only the outcome's commit waits, and it flushes them with it. So a real
crash of PostgreSQL between the snapshot's commit and the outcome may lose the snapshot (or keep it, when something
flushed the WAL meanwhile). Either way the load must be taken again and reach the outcome of a load never cut: one
outcome in its history, the same errors, warnings and counts, and one snapshot's rows left (a kept snapshot is a
dead run's, dropped; a lost one left nothing).

The crash is real: a backend of the session's PostgreSQL killed with SIGKILL, at the moment the loader's own code
reaches its checks (the real `run_checks` wrapped, only to choose that moment); the postmaster then ends every
backend and runs crash recovery. The WAL writer is slowed for the test (wal_writer_delay 10 s, the maximum) so the
crash falls before it would flush the snapshot's commit on its own: the asynchronous commit is what is exercised."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from contracts import flows
from contracts.instance import FlowInstance
from contracts.sources import DeliveredService
from contracts.states import InstanceState
from services.loader import handlers, pipeline
from services.loader.intake import store_services
from services.loader.pipeline import run_load
from services.runtime.db import create_pool
from services.runtime.eventstore import EventStore
from services.runtime.filestore import FileStore
from services.runtime.host import prepare_database
from services.runtime.read_models import FLOW_PROJECTIONS, instance_stream
from simulators.cup.generator import generate

pytestmark = pytest.mark.integration
AUGUST = (date(2020, 8, 1), date(2020, 8, 31))


@contextlib.asynccontextmanager
async def slow_wal_writer(url: str) -> AsyncIterator[None]:
    """wal_writer_delay at its maximum for the block (a server setting: reloaded, and reset after)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("ALTER SYSTEM SET wal_writer_delay = '10s'")
        await conn.execute("SELECT pg_reload_conf()")
        yield
    finally:
        with contextlib.suppress(Exception):
            await conn.close(timeout=2)
        conn = await _connect(url)
        await conn.execute("ALTER SYSTEM RESET wal_writer_delay")
        await conn.execute("SELECT pg_reload_conf()")
        await conn.close()


async def _connect(url: str) -> asyncpg.Connection:
    """A connection once the server accepts them again (after crash recovery)."""
    async with asyncio.timeout(90):
        while True:
            try:
                return await asyncpg.connect(url, timeout=5)
            except (OSError, asyncpg.PostgresError, TimeoutError):
                await asyncio.sleep(0.2)


async def _deps(url: str, files: Path) -> handlers.LoaderDeps:
    pool = await create_pool(url, min_size=1, max_size=4)
    await prepare_database(pool, FLOW_PROJECTIONS)
    return handlers.LoaderDeps(pool=pool, store=EventStore(pool, source="/flows/loader", projections=FLOW_PROJECTIONS),
                               files=FileStore(files), interrupted=handlers.interruptions(initial_s=0.05))


async def _running_instance(deps: handlers.LoaderDeps) -> int:
    """A new instance of ente 204, Running for August 2020 (as the loader's command handler leaves it)."""
    instance = int(await deps.pool.fetchval("SELECT nextval('flow_instance_seq')"))
    await deps.instances.append(FlowInstance(instance), flows.LoadRunning(
        instance=instance, request_id=uuid.uuid4(), flow_type=flows.FlowType.FLUSSO_C, version="2020", ente="204",
        period=flows.Period(start=AUGUST[0], end=AUGUST[1]), requested_by="test.crash"), actor="test.crash")
    return instance


async def _snapshots(pool: asyncpg.Pool, instance: int) -> list[tuple[int, int]]:
    """(snapshot, rows in snapshot_service) of each snapshot the instance has."""
    rows = await pool.fetch("SELECT s.snapshot_id, (SELECT count(*) FROM snapshot_service r WHERE r.snapshot_id = "
                            "s.snapshot_id) AS n FROM source_snapshot s WHERE s.instance = $1 ORDER BY 1", instance)
    return [(int(r["snapshot_id"]), int(r["n"])) for r in rows]


async def test_a_postgres_crash_after_the_snapshot_commit_takes_the_load_again_to_the_same_outcome(
        fresh_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deps = await _deps(fresh_db, tmp_path / "files")
    try:
        async with deps.pool.acquire() as conn:
            await store_services(conn, [r for r in generate("204", "2020-08", 400, seed=50, bad=3)
                                        if isinstance(r, DeliveredService)])
        # The outcome of the same load never cut (another instance, the same source rows).
        reference = await run_load(deps.pool, deps.files, 1, int(await deps.pool.fetchval(
            "SELECT nextval('flow_instance_seq')")), flows.FlowType.FLUSSO_C, "2020", "204", *AUGUST)
        assert reference.errors > 0  # the planted records: a Failed loading with its feedback

        instance = await _running_instance(deps)
        real_run_checks = pipeline.run_checks
        crashed: list[list[tuple[int, int]]] = []

        async def crash_then_check(pool: asyncpg.Pool, *args: Any, **kwargs: Any) -> Any:
            if not crashed:  # the first run only: its snapshot is committed, its checks not begun
                crashed.append(await _snapshots(pool, instance))
                victim = await asyncpg.connect(fresh_db)
                os.kill(int(await victim.fetchval("SELECT pg_backend_pid()")), signal.SIGKILL)
                with contextlib.suppress(Exception):
                    await victim.close(timeout=2)
            return await real_run_checks(pool, *args, **kwargs)

        monkeypatch.setattr(pipeline, "run_checks", crash_then_check)
        async with slow_wal_writer(fresh_db):
            await handlers.run_instance(instance, deps)  # cut by the crash: an interruption, nothing appended
            assert len(crashed) == 1 and len(crashed[0]) == 1 and crashed[0][0][1] > 0, crashed
            first_snapshot = crashed[0][0][0]
            await (await _connect(fresh_db)).close()
            after_crash = await _snapshots(deps.pool, instance)
            assert (await deps.instances.read(instance)).state == InstanceState.RUNNING
            async with asyncio.timeout(120):  # the interruption's backoff (0.05 s, doubling) and the pool's recovery
                while (await deps.instances.read(instance)).state == InstanceState.RUNNING:
                    await asyncio.sleep(0.1)
                    await handlers.run_instance(instance, deps)
        current = await deps.instances.read(instance)
        history = await deps.store.read_stream(instance_stream(instance))
        left = await _snapshots(deps.pool, instance)
    finally:
        await deps.pool.close()

    print(f"\nafter the crash the first snapshot was {'kept' if after_crash else 'lost'}: {after_crash}")
    # the snapshot lost with its asynchronous commit, or kept (then dropped as a dead run's): nothing else
    assert after_crash in ([], [(first_snapshot, crashed[0][0][1])]), after_crash
    assert [e.type for e in history] == [flows.TYPE_OF[flows.LoadRunning], flows.TYPE_OF[flows.LoadFailed]], history
    failed = history[-1].data
    assert (failed["errors"], failed["warnings"], failed["summary"]) == (
        reference.errors, reference.warnings, reference.summary), failed
    assert current.state == InstanceState.FAILED_LOADING
    assert len(left) == 1 and left[0][0] != first_snapshot and left[0][0] == failed["source_instance"], left
    assert left[0][1] == crashed[0][0][1]  # the same rows as the first run's snapshot, once


async def _wal_fsyncs(conn: asyncpg.Connection) -> int:
    """WAL fsyncs this connection's backend has made (PostgreSQL 18's per-backend I/O statistics, flushed first)."""
    await conn.execute("SELECT pg_stat_force_next_flush()")
    return int(await conn.fetchval("SELECT coalesce(sum(fsyncs), 0) FROM pg_stat_get_backend_io(pg_backend_pid()) "
                                   "WHERE object = 'wal'"))


async def test_the_checked_mark_commits_in_one_statement_without_waiting_for_the_wal_flush(fresh_db: str) -> None:
    """pipeline.mark_checked is one statement, its own transaction, whose commit does not flush the WAL (like the
    snapshot's): the outcome's synchronous commit flushes it. Measured on the backend that ran it: a plain UPDATE
    of the same row costs a WAL fsync (the measure sees a synchronous commit), the mark none, and the session's
    synchronous_commit is back to on after it (the setting was the transaction's only)."""
    pool = await create_pool(fresh_db, min_size=1, max_size=1)  # one connection: the mark's backend is the measured one
    try:
        await prepare_database(pool, FLOW_PROJECTIONS)
        async with pool.acquire() as conn:
            await conn.execute("INSERT INTO source_snapshot (snapshot_id, instance, flow_type, version, ente, "
                               "period_start, period_end, source_table, rows) VALUES (7, 6, 'FLUSSO_C', '2020', "
                               "'204', $1, $2, 'snapshot_service', 3)", *AUGUST)
            before = await _wal_fsyncs(conn)
            await conn.execute("UPDATE source_snapshot SET rows = 4 WHERE snapshot_id = 7")
            synchronous = await _wal_fsyncs(conn) - before
        found = await pipeline.mark_checked(pool, pipeline.ChecksDone(7, {"services": 4}))
        async with pool.acquire() as conn:
            marked = await _wal_fsyncs(conn) - before - synchronous
            setting = await conn.fetchval("SHOW synchronous_commit")
            row = await conn.fetchrow("SELECT checked_counts, checked_problems FROM source_snapshot "
                                      "WHERE snapshot_id = 7")
        assert synchronous == 1, synchronous
        assert marked == 0, f"the checked mark flushed the WAL {marked} time(s)"
        assert setting == "on"
        assert (json.loads(row["checked_counts"]), row["checked_problems"], found.errors) == ({"services": 4}, 0, 0)
    finally:
        await pool.close()
