"""`flows replay --verify` on a real database: silent when the log is intact, loud when a row was
rewritten behind the event store's back, and the read models rebuilt from the log equal the live ones."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from typer.testing import CliRunner

from contracts import flows
from services.cli.main import app
from services.cli.replay import all_projections
from services.console import auth
from services.console.access import record_access
from services.console.auth import Principal
from services.runtime.db import create_pool
from services.runtime.eventstore import EventStore, NewEvent
from services.runtime.host import prepare_database
from services.runtime.read_models import FLOW_PROJECTIONS, instance_stream

pytestmark = pytest.mark.integration


async def _an_instance_checked(url: str) -> None:
    pool = await create_pool(url, min_size=1, max_size=2)
    try:
        await prepare_database(pool, FLOW_PROJECTIONS)
        store = EventStore(pool, source="/test", projections=FLOW_PROJECTIONS)
        running = flows.LoadRunning(instance=1947, request_id=uuid.uuid4(), flow_type=flows.FlowType.FLUSSO_C,
                                    version="2020", ente="201",
                                    period=flows.Period.model_validate({"start": "2026-10-01", "end": "2026-10-31"}),
                                    requested_by="op.rossi")
        checked = flows.LoadChecked(instance=1947, source_instance=1948, counts={"services": 3})
        await store.append(instance_stream(1947), [
            NewEvent("flows.load-running", running.model_dump(mode="json"), actor="loader"),
            NewEvent("flows.load-checked", checked.model_dump(mode="json"), actor="loader")],
            expected_version=0, key="1947")
    finally:
        await pool.close()


def test_replay_verify_passes_on_an_intact_log_and_reports_a_tampered_row(fresh_db, monkeypatch):
    asyncio.run(_an_instance_checked(fresh_db))
    monkeypatch.setenv("DATABASE_URL", fresh_db)
    runner = CliRunner()

    intact = runner.invoke(app, ["replay", "--all", "--verify"], env={"COLUMNS": "200"})
    assert intact.exit_code == 0, intact.output
    assert "every hash chain verifies" in intact.output
    assert "equal the live ones" in intact.output

    async def tamper() -> None:
        conn = await asyncpg.connect(fresh_db)
        try:
            await conn.execute("""UPDATE events SET data = jsonb_set(data, '{counts,services}', '300')
                                  WHERE stream_id = 'instance-1947' AND version = 2""")
        finally:
            await conn.close()

    asyncio.run(tamper())
    tampered = runner.invoke(app, ["replay", "1947", "--verify"], env={"COLUMNS": "200"})
    assert tampered.exit_code == 2, tampered.output
    assert "hash chain broken" in tampered.output
    assert "instance-1947" in tampered.output
    # the read model still holds what was recorded at the time; rebuilt from the tampered log it differs
    assert "read models differ from the log" in tampered.output


def test_replay_all_verify_works_on_a_database_where_only_the_migrations_ran(fresh_db, monkeypatch):
    """A database no service has started on (fresh_db: migrated, nothing else) has no read-model tables, which the
    services create at start-up (host.prepare_database); `flows users` and the access log append there all the
    same. The replay creates them itself, with the same function, instead of failing on a missing live table."""
    async def migrations_only_then_some_events() -> None:
        pool = await create_pool(fresh_db, min_size=1, max_size=2)
        try:
            assert await pool.fetchval("SELECT to_regclass('instance_list')") is None  # only the migrations ran
            await auth.add_user(pool, "op.rossi", "operator", ["201"], None, "una password lunga", by="cli:tester")
            await auth.disable_user(pool, "op.rossi", by="cli:tester")
            await record_access(EventStore(pool, source="/test"), Principal("aud.1", "auditor"), "feedback-view",
                                1947, "10.0.0.8")
        finally:
            await pool.close()

    asyncio.run(migrations_only_then_some_events())
    monkeypatch.setenv("DATABASE_URL", fresh_db)
    replayed = CliRunner().invoke(app, ["replay", "--all", "--verify"], env={"COLUMNS": "200"})
    assert replayed.exit_code == 0, replayed.output
    assert "replayed 2 stream(s), 3 events" in replayed.output, replayed.output
    assert "every hash chain verifies" in replayed.output and "equal the live ones" in replayed.output

    async def read_models() -> list[str]:
        conn = await asyncpg.connect(fresh_db)
        try:
            return [table for projection in all_projections() for table in projection.tables
                    if await conn.fetchval("SELECT to_regclass($1)", table) is None]
        finally:
            await conn.close()

    assert asyncio.run(read_models()) == []  # every read model's table is there now, as a service would leave it
