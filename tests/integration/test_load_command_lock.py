"""A load run by its command holds the instance's load lock from the transaction that made the instance: once the
instance is there to be seen (Running, which a pass of any loader takes up), nobody else can start its load; the lock
is let go after the outcome, and the command's connection goes back to the pool without a reset."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from contracts import flows
from contracts.envelope import Envelope
from services.loader import handlers
from services.runtime.broker import Incoming
from services.runtime.eventstore import EventStore
from services.runtime.filestore import FileStore
from services.runtime.host import prepare_database
from services.runtime.locks import LOAD_LOCK
from services.runtime.read_models import FLOW_PROJECTIONS

pytestmark = pytest.mark.integration

TOPIC = flows.TYPE_OF[flows.LoadRequested]


async def _load_locks(pool: asyncpg.Pool, instance: int) -> int:
    """Load locks of `instance` held by any session (two-key advisory locks: classid, objid)."""
    return int(await pool.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 AND classid = $1 AND objid = $2 "
        "AND granted", LOAD_LOCK, instance))


async def test_the_load_lock_is_held_once_the_instance_is_committed_and_let_go_after_its_outcome(
        pool: asyncpg.Pool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    await prepare_database(pool, FLOW_PROJECTIONS)
    deps = handlers.LoaderDeps(pool=pool, store=EventStore(pool, source="/flows/loader", projections=FLOW_PROJECTIONS),
                               files=FileStore(tmp_path / "files"))
    cmd = flows.LoadRequested(request_id=uuid.uuid4(), flow_type=flows.FlowType.FLUSSO_C, ente="204",
                              period=flows.Period(start=date(2021, 8, 1), end=date(2021, 8, 31)),
                              requested_by="op.test")
    msg = Incoming(Envelope.new(TOPIC, "/flows/cli"), str(cmd.request_id), TOPIC, 0, 0)
    committed: list[tuple[str, bool]] = []  # (state, could another session take the load lock?) after the commit
    original = handlers.run_instance

    async def run_instance(instance: int, deps: handlers.LoaderDeps, **kw: Any) -> None:
        # Called once the command's transaction has committed: the instance is Running for anyone to see.
        state = await pool.fetchval("SELECT state FROM instance_list WHERE instance = $1", instance)
        async with pool.acquire() as other:
            took = bool(await other.fetchval("SELECT pg_try_advisory_lock($1, $2)", LOAD_LOCK, instance))
            if took:
                await other.fetchval("SELECT pg_advisory_unlock($1, $2)", LOAD_LOCK, instance)
        committed.append((state, took))
        await original(instance, deps, **kw)

    monkeypatch.setattr(handlers, "run_instance", run_instance)
    await handlers.handle_load_requested(cmd, msg, deps)

    assert committed == [("Running", False)], "another loader could have started the load the command was running"
    row = await pool.fetchrow("SELECT l.instance, l.state FROM instance_list l JOIN load_request r USING (instance) "
                              "WHERE r.request_id = $1", cmd.request_id)
    assert row["state"] == "Checked"  # no data in August 2021: Checked with NO_SOURCE_DATA's warning
    assert await _load_locks(pool, row["instance"]) == 0
    # The same command again (redelivered), then the same request under a new message id (re-sent): no instance
    # more, no load run again, no lock left behind.
    await handlers.handle_load_requested(cmd, msg, deps)
    await handlers.handle_load_requested(cmd, Incoming(Envelope.new(TOPIC, "/flows/cli"), None, TOPIC, 0, 1), deps)
    assert await pool.fetchval("SELECT count(*) FROM load_request WHERE request_id = $1", cmd.request_id) == 1
    assert await pool.fetchval("SELECT count(*) FROM processed_message WHERE consumer = 'loader'") == 2
    assert len(committed) == 1
    assert await _load_locks(pool, row["instance"]) == 0


async def test_a_scheduled_load_takes_no_lock(pool: asyncpg.Pool, tmp_path: Path) -> None:
    """Scheduled for later: the command makes the instance and leaves it to the pass, locking nothing."""
    await prepare_database(pool, FLOW_PROJECTIONS)
    deps = handlers.LoaderDeps(pool=pool, store=EventStore(pool, source="/flows/loader", projections=FLOW_PROJECTIONS),
                               files=FileStore(tmp_path / "files"))
    cmd = flows.LoadRequested(request_id=uuid.uuid4(), flow_type=flows.FlowType.FLUSSO_C, ente="204",
                              period=flows.Period(start=date(2021, 8, 1), end=date(2021, 8, 31)),
                              requested_by="op.test", scheduled_at=datetime(2099, 1, 1, tzinfo=UTC))
    await handlers.handle_load_requested(cmd, Incoming(Envelope.new(TOPIC, "/flows/cli"), None, TOPIC, 0, 0), deps)
    row = await pool.fetchrow("SELECT l.instance, l.state FROM instance_list l JOIN load_request r USING (instance) "
                              "WHERE r.request_id = $1", cmd.request_id)
    assert row["state"] == "Scheduled"
    assert await _load_locks(pool, row["instance"]) == 0


async def test_a_first_run_takes_its_snapshot_number_and_the_reference_digest_from_the_command(
        pool: asyncpg.Pool, tmp_path: Path) -> None:
    """A load its command locked skips pipeline.earlier_runs: the command's statement drew the snapshot's number
    (the next after the instance's) and read the stored digest of the reference data. The digest read there decides
    as earlier_runs' did: the data is copied when none is stored or a different one is, and left alone when it is
    the files' own."""
    await prepare_database(pool, FLOW_PROJECTIONS)
    deps = handlers.LoaderDeps(pool=pool, store=EventStore(pool, source="/flows/loader", projections=FLOW_PROJECTIONS),
                               files=FileStore(tmp_path / "files"))
    checked = flows.TYPE_OF[flows.LoadChecked]

    async def load() -> tuple[int, int, datetime]:
        cmd = flows.LoadRequested(request_id=uuid.uuid4(), flow_type=flows.FlowType.FLUSSO_C, ente="204",
                                  period=flows.Period(start=date(2021, 8, 1), end=date(2021, 8, 31)),
                                  requested_by="op.test")
        await handlers.handle_load_requested(
            cmd, Incoming(Envelope.new(TOPIC, "/flows/cli"), str(cmd.request_id), TOPIC, 0, 0), deps)
        instance = int(await pool.fetchval("SELECT instance FROM load_request WHERE request_id = $1", cmd.request_id))
        source = await pool.fetchval("SELECT (data->>'source_instance')::bigint FROM events WHERE stream_id = $1 "
                                     "AND type = $2", f"instance-{instance}", checked)
        synced = await pool.fetchval("SELECT synced_at FROM reference_data_digest WHERE version = $1", cmd.version)
        return instance, int(source), synced

    assert await pool.fetchval("SELECT count(*) FROM reference_data_digest") == 0
    instance, snapshot, first_sync = await load()  # nothing stored: copied
    assert snapshot == instance + 1
    assert await pool.fetchval("SELECT count(*) FROM source_snapshot WHERE snapshot_id = $1 AND instance = $2",
                               snapshot, instance) == 1
    instance, snapshot, synced = await load()  # the files' digest stored: left alone
    assert (snapshot, synced) == (instance + 1, first_sync)
    await pool.execute("UPDATE reference_data_digest SET digest = '\\x00'::bytea")  # as if new files were shipped
    instance, snapshot, synced = await load()
    assert snapshot == instance + 1 and synced > first_sync
    assert await pool.fetchval("SELECT digest <> '\\x00'::bytea FROM reference_data_digest")
