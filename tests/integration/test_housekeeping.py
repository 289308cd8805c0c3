"""Housekeeping on the real PostgreSQL (services.runtime.housekeeping): old dedup records and long-published outbox
rows go, chunk by chunk; what may still be needed stays (a dedup record within the horizon, an outbox row not
published or parked however old); one pruner at a time; and the audit service, running its real main, does it."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import asyncpg
import pytest

from services.runtime import housekeeping
from services.runtime.eventstore import EventStore, NewEvent
from services.runtime.locks import HOUSEKEEPING_LOCK_KEY

pytestmark = pytest.mark.integration


async def _dedup_records(pool: asyncpg.Pool, consumer: str, count: int, age: timedelta) -> None:
    await pool.execute("INSERT INTO processed_message (consumer, message_id, processed_at) "
                       "SELECT $1, $1 || '-' || i, now() - $3::interval FROM generate_series(1, $2) AS i",
                       consumer, count, age)


async def _outbox_row(store: EventStore, pool: asyncpg.Pool, stream: str, *, created: timedelta,
                      published: timedelta | None, parked: bool = False) -> None:
    """An event of `stream` whose outbox row was made `created` ago and published `published` ago (None: not)."""
    await store.append(stream, [NewEvent("test.kept", {"stream": stream})], expected_version=None, key=stream)
    await pool.execute("UPDATE outbox SET created_at = now() - $2::interval, "
                       "published_at = now() - $3::interval, parked_at = CASE WHEN $4 THEN now() END "
                       "WHERE key = $1", stream, created, published, parked)


async def _left(pool: asyncpg.Pool) -> tuple[dict[str, int], list[str]]:
    counts = {r["consumer"]: int(r["n"]) for r in await pool.fetch(
        "SELECT consumer, count(*) AS n FROM processed_message GROUP BY consumer")}
    keys = [r["key"] for r in await pool.fetch("SELECT key FROM outbox ORDER BY key")]
    return counts, keys


async def test_old_dedup_records_and_long_published_outbox_rows_go_and_the_rest_stays(pool: asyncpg.Pool) -> None:
    horizon = housekeeping.dedup_horizon()
    assert horizon == timedelta(days=30 + 7 + 1), "the registry's longest retention (30 days) + a segment + a day"
    await _dedup_records(pool, "old", 2_500, horizon + timedelta(hours=1))
    await _dedup_records(pool, "within", 300, horizon - timedelta(hours=1))
    await _dedup_records(pool, "fresh", 200, timedelta(0))
    store = EventStore(pool, source="/flows/test")
    day = timedelta(days=1)
    await _outbox_row(store, pool, "published-8-days-ago", created=8 * day, published=8 * day)
    await _outbox_row(store, pool, "published-6-days-ago", created=8 * day, published=6 * day)
    await _outbox_row(store, pool, "never-published", created=60 * day, published=None)
    await _outbox_row(store, pool, "parked", created=60 * day, published=None, parked=True)
    await _outbox_row(store, pool, "just-published", created=timedelta(0), published=timedelta(0))

    pruned = await housekeeping.prune(pool, chunk=1_000)  # three chunks of the old records, the last one short

    assert pruned == housekeeping.Pruned(processed=2_500, outbox=1, ran=True)
    counts, keys = await _left(pool)
    assert counts == {"within": 300, "fresh": 200}
    assert keys == ["just-published", "never-published", "parked", "published-6-days-ago"]
    events = int(await pool.fetchval("SELECT count(*) FROM events WHERE stream_id LIKE 'published-8%'"))
    assert events == 1, "the event itself stays in the event store"
    assert await housekeeping.prune(pool) == housekeeping.Pruned(0, 0, ran=True), "nothing left to delete"


async def test_one_pruner_at_a_time(pool: asyncpg.Pool, fresh_db: str) -> None:
    await _dedup_records(pool, "old", 10, housekeeping.dedup_horizon() + timedelta(days=1))
    other = await asyncpg.connect(fresh_db)
    try:
        assert await other.fetchval("SELECT pg_try_advisory_lock($1)", HOUSEKEEPING_LOCK_KEY)
        assert await housekeeping.prune(pool) == housekeeping.Pruned(0, 0, ran=False)
        assert (await _left(pool))[0] == {"old": 10}
    finally:
        await other.close()  # its session's lock goes with it
    assert await housekeeping.prune(pool) == housekeeping.Pruned(10, 0, ran=True)


async def test_the_audit_service_prunes(settings, fresh_db, pool, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from prometheus_client import CollectorRegistry

    from services.audit.app import main

    await _dedup_records(pool, "old", 50, housekeeping.dedup_horizon() + timedelta(days=1))
    await _dedup_records(pool, "fresh", 5, timedelta(0))
    cfg = settings.model_copy(update={"database_url": fresh_db, "checkpoint_key": tmp_path / "k" / "signing.key",
                                      "checkpoints_dir": tmp_path / "cps", "checkpoint_interval_s": 0,
                                      "ops_metrics_interval_s": 0, "housekeeping_interval_s": 3600})
    stop = asyncio.Event()
    service = asyncio.create_task(main(cfg, stop, registry=CollectorRegistry()))
    try:
        async with asyncio.timeout(30):  # its first pass runs at its start
            while (await _left(pool))[0] != {"fresh": 5}:
                assert not service.done(), service
                await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.wait_for(service, 30)
