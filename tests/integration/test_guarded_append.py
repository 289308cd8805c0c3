"""A guarded append (EventStore.append(..., guard=Guard(...))): one statement that locks the guard's row and appends
only when the row is there. The loader writes a load's outcome this way, guarded by its snapshot's row, which a run
that took the load over deletes (services.loader.pipeline.drop_dead_runs).

Here on a table of its own: the row there -> the event, its outbox row and its read-model row, all in one statement
without a transaction; the row gone -> GuardFailed and nothing written; the row there but the stream moved ->
ConcurrencyError and nothing written; a DELETE of the row not yet committed -> the append waits for it and then
finds the row gone; the row locked by the append -> a DELETE waits until the append committed."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from contracts import flows
from services.runtime.eventstore import ConcurrencyError, EventStore, Guard, GuardFailed
from services.runtime.host import prepare_database
from services.runtime.instances import new_event
from services.runtime.read_models import FLOW_PROJECTIONS, instance_stream
from tests.integration.test_read_models_rebuild import created

pytestmark = pytest.mark.integration

HELD = "SELECT FROM guard_row WHERE id = {0}::bigint FOR SHARE"


async def written(pool: asyncpg.Pool) -> tuple[Any, ...]:
    return (await pool.fetchval("SELECT count(*) FROM events"), await pool.fetchval("SELECT count(*) FROM outbox"),
            [dict(r) for r in await pool.fetch("SELECT instance, state FROM instance_list ORDER BY instance")])


def checked(instance: int) -> Any:
    return new_event(flows.LoadChecked(instance=instance, source_instance=7, counts={"services": 3}), "loader")


@pytest.fixture
async def store(pool: asyncpg.Pool) -> EventStore:
    await prepare_database(pool, FLOW_PROJECTIONS)
    await pool.execute("CREATE TABLE guard_row (id bigint PRIMARY KEY)")
    await pool.execute("INSERT INTO guard_row VALUES (7)")
    store = EventStore(pool, source="/flows/test", projections=FLOW_PROJECTIONS)
    await store.append(instance_stream(1), [new_event(created(1), "loader")], expected_version=0, key="1")
    return store


async def test_the_row_there_appends_the_event_its_outbox_row_and_its_read_model_change(
        store: EventStore, pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        [event] = await store.append(instance_stream(1), [checked(1)], expected_version=1, key="1", conn=conn,
                                     savepoint=False, guard=Guard(HELD, (7,)))
        assert not conn.is_in_transaction()
    assert event.version == 2 and event.hash != event.prev_hash
    assert await written(pool) == (2, 2, [{"instance": 1, "state": "Checked"}])
    assert await store.verify_stream(instance_stream(1)) == []
    # the pool's own connection, and without the read model's change in the statement (no projection): the same
    plain = EventStore(pool, source="/flows/test")
    await plain.append(instance_stream(2), [new_event(created(2), "loader")], expected_version=0, key="2")
    await plain.append(instance_stream(2), [checked(2)], expected_version=1, key="2", guard=Guard(HELD, (7,)))
    assert [e.type for e in await plain.read_stream(instance_stream(2))] == [
        flows.TYPE_OF[flows.LoadRunning], flows.TYPE_OF[flows.LoadChecked]]


async def test_the_row_gone_writes_nothing(store: EventStore, pool: asyncpg.Pool) -> None:
    before = await written(pool)
    with pytest.raises(GuardFailed, match="guard_row"):
        await store.append(instance_stream(1), [checked(1)], expected_version=1, key="1", guard=Guard(HELD, (8,)))
    assert await written(pool) == before
    # the stream moved AND the row is there: the stream's error, nothing written either
    with pytest.raises(ConcurrencyError):
        await store.append(instance_stream(1), [checked(1)], expected_version=0, key="1", guard=Guard(HELD, (7,)))
    with pytest.raises(ConcurrencyError):
        await store.append(instance_stream(1), [checked(1)], expected_version=5, key="1", guard=Guard(HELD, (7,)))
    assert await written(pool) == before
    # one event after a named version only
    with pytest.raises(ValueError, match="guarded"):
        await store.append(instance_stream(1), [checked(1)], expected_version=None, key="1", guard=Guard(HELD, (7,)))


async def test_a_delete_in_flight_is_waited_for_and_one_that_comes_after_waits_for_the_append(
        store: EventStore, pool: asyncpg.Pool, fresh_db: str) -> None:
    before = await written(pool)
    other = await asyncpg.connect(fresh_db)

    def guarded_append() -> asyncio.Task[Any]:
        return asyncio.create_task(store.append(instance_stream(1), [checked(1)], expected_version=1, key="1",
                                                guard=Guard(HELD, (7,))))
    try:
        # the row deleted by a transaction not yet committed: the append waits on it, then finds the row gone
        deleting = other.transaction()
        await deleting.start()
        await other.execute("DELETE FROM guard_row WHERE id = 7")
        append = guarded_append()
        await asyncio.sleep(0.5)
        assert not append.done()  # waiting on the DELETE's row lock
        await deleting.commit()
        with pytest.raises(GuardFailed):
            await asyncio.wait_for(append, 10)
        assert await written(pool) == before

        # the append's statement holds the row FOR SHARE until it commits: a DELETE meanwhile waits, and finds it
        # done. The append is held up inside its own statement by a lock on the read model's row.
        await pool.execute("INSERT INTO guard_row VALUES (7)")
        blocking = other.transaction()
        await blocking.start()
        await other.execute("SELECT FROM instance_list WHERE instance = 1 FOR UPDATE")
        append = guarded_append()
        await asyncio.sleep(0.5)
        assert not append.done()
        async with pool.acquire() as third:
            delete = asyncio.create_task(third.execute("DELETE FROM guard_row WHERE id = 7"))
            await asyncio.sleep(0.5)
            assert not delete.done()  # waits for the append's FOR SHARE
            await blocking.rollback()
            [event] = await asyncio.wait_for(append, 10)
            assert await asyncio.wait_for(delete, 10) == "DELETE 1"
        assert event.version == 2
        assert await written(pool) == (2, 2, [{"instance": 1, "state": "Checked"}])
    finally:
        await other.close()
