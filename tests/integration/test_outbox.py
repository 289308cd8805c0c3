"""The outbox relay on the real Kafka and PostgreSQL of the local stack (fails, never skips, when down)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import uuid
import warnings
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import NewTopic
from pydantic import BaseModel

from contracts.envelope import from_kafka_headers
from contracts.topics import Topic
from services.runtime.db import create_pool, scratch_database
from services.runtime.eventstore import EventStore, EventTooLarge, NewEvent
from services.runtime.kafkaadmin import admin_client
from services.runtime.migrations import MIGRATIONS_DIR, migrate
from services.runtime.outbox import (
    _MARK_PUBLISHED,
    OutboxRelay,
    mark_processed,
    parked_rows,
    retry_parked,
    skip_parked,
)
from services.runtime.topics_admin import apply_topics, registry_topic_provisioner, topic_exists
from tests.isolation import logged_process
from tests.kafka_topics import create_topics
from tests.pg_outage import late_close_proxy, postgres_down
from tests.stack_urls import DATABASE_URL, KAFKA

pytestmark = pytest.mark.integration



@pytest.fixture
async def outbox_db(tmp_path: Path) -> AsyncIterator[str]:
    """A database of our own on the shared server, with only this area's migrations: its URL."""
    for path in [*MIGRATIONS_DIR.glob("000[1-9]_*.sql"), *MIGRATIONS_DIR.glob("0051_*.sql")]:
        shutil.copy(path, tmp_path / path.name)
    async with scratch_database(DATABASE_URL, "test_outbox", migrated=False) as url:
        pool = await create_pool(url, min_size=1, max_size=2)
        try:
            await migrate(pool, tmp_path)
            await pool.execute("CREATE TABLE stamp (event_id uuid NOT NULL)")  # the consumer's effect
        finally:
            await pool.close()
        yield url


@pytest.fixture
async def pool(outbox_db: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(outbox_db, min_size=1, max_size=10)
    yield pool
    await pool.close()


async def fresh_topic() -> str:
    """A topic of its own for the test, created first: the brokers never auto-create one."""
    name = f"test.relay-{uuid.uuid4().hex[:8]}"
    await create_topics(KAFKA, name)
    return name


async def append_numbered(store: EventStore, topic: str, keys: list[str], per_key: int) -> list[uuid.UUID]:
    ids = []
    for n in range(per_key):
        for key in keys:
            written = await store.append(f"instance-{key}", [NewEvent(type=topic, data={"key": key, "n": n})],
                                         expected_version=n, key=key)
            ids.append(written[0].id)
    return ids


async def unpublished(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL"))


async def wait_until(condition: Callable[[], Awaitable[bool]], within: float = 30.0) -> None:
    async with asyncio.timeout(within):
        while not await condition():
            await asyncio.sleep(0.05)


async def consume_all(topic: str, expected: int, settle: float = 2.0) -> list[tuple[str, dict, dict]]:
    """(key, headers, payload) of every message, reading until ``expected`` arrived and nothing more comes."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=KAFKA, group_id=f"g-{uuid.uuid4().hex[:6]}",
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    messages: list[tuple[str, dict, dict]] = []
    try:
        async with asyncio.timeout(60):
            quiet_since = None
            while True:
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    for r in records:
                        assert r.key is not None and r.value is not None
                        messages.append((r.key.decode(), dict(from_kafka_headers(r.headers).__dict__),
                                         json.loads(r.value)))
                now = asyncio.get_running_loop().time()
                if batch or len(messages) < expected:
                    quiet_since = now
                elif quiet_since is not None and now - quiet_since > settle:
                    return messages
    finally:
        await consumer.stop()


async def test_a_relay_killed_between_ack_and_mark_resends_and_the_deduping_consumer_applies_once(
        pool: asyncpg.Pool, outbox_db: str, tmp_path: Path) -> None:
    store = EventStore(pool, source="/flows/loader")
    topic = await fresh_topic()
    ids = await append_numbered(store, topic, keys=["1947", "1948", "2001"], per_key=10)

    # The relay in a process of its own, killed with SIGKILL once Kafka acknowledged its first 12 rows and
    # before it marked them (no finally, no cleanup: its leader lock goes with its dropped connection).
    log = tmp_path / "relay.log"
    async with logged_process(log, "-m", "tests.integration.outbox_relay_process", outbox_db, KAFKA, "12",
                              env={**os.environ}) as doomed:
        async with asyncio.timeout(60):
            while "acked 12" not in log.read_text(errors="replace"):
                assert doomed.returncode is None, log.read_text(errors="replace")[-3000:]
                await asyncio.sleep(0.05)
        doomed.send_signal(signal.SIGKILL)
        assert await doomed.wait() == -signal.SIGKILL
    assert await unpublished(pool) == 30  # 12 reached Kafka but were never marked

    stop = asyncio.Event()
    restarted = OutboxRelay(pool, KAFKA, batch_size=12)
    running = asyncio.create_task(restarted.run(stop))
    await wait_until(lambda: _none_left(pool))
    stop.set()
    await running
    assert restarted.published == 30

    messages = await consume_all(topic, expected=42)
    assert len(messages) == 42  # 12 duplicates: at least once, as promised
    for _key, headers, _payload in messages:
        async with pool.acquire() as conn, conn.transaction():
            if await mark_processed(conn, "stamper", headers["id"]):
                await conn.execute("INSERT INTO stamp VALUES ($1)", uuid.UUID(headers["id"]))
    stamped = [row["event_id"] for row in await pool.fetch("SELECT event_id FROM stamp")]
    assert sorted(stamped) == sorted(ids)  # every event, each exactly once

    by_key: dict[str, list[int]] = defaultdict(list)
    for key, headers, payload in messages:
        assert headers["type"] == topic and headers["source"] == "/flows/loader" and headers["subject"] == key
        if payload["n"] not in by_key[key]:
            by_key[key].append(payload["n"])
    assert by_key == {k: list(range(10)) for k in ("1947", "1948", "2001")}  # per-key order kept


async def _none_left(pool: asyncpg.Pool) -> bool:
    return await unpublished(pool) == 0


async def test_only_one_relay_publishes_and_a_standby_takes_over_when_it_stops(pool: asyncpg.Pool) -> None:
    store = EventStore(pool, source="/flows/loader")
    topic = await fresh_topic()
    stop_first, stop_second = asyncio.Event(), asyncio.Event()
    first, second = OutboxRelay(pool, KAFKA, poll_interval=0.2), OutboxRelay(pool, KAFKA, poll_interval=0.2)
    first_task = asyncio.create_task(first.run(stop_first))
    await wait_until(lambda: _is(first.is_leader))
    second_task = asyncio.create_task(second.run(stop_second))
    await append_numbered(store, topic, keys=["1947"], per_key=5)
    await wait_until(lambda: _none_left(pool))
    assert (first.published, second.is_leader) == (5, False)

    stop_first.set()
    await first_task
    await wait_until(lambda: _is(second.is_leader))
    await append_numbered_from(store, topic, key="1947", start=5, count=3)
    await wait_until(lambda: _none_left(pool))
    stop_second.set()
    await second_task
    assert second.published == 3


async def _is(flag: bool) -> bool:
    return flag


async def append_numbered_from(store: EventStore, topic: str, key: str, start: int, count: int) -> None:
    for n in range(start, start + count):
        await store.append(f"instance-{key}", [NewEvent(type=topic, data={"key": key, "n": n})],
                           expected_version=n, key=key)


async def test_the_mark_of_published_rows_commits_without_a_flush_and_leaves_the_session_as_it_was(
        pool: asyncpg.Pool) -> None:
    """The relay's mark makes its own transaction commit without waiting for the WAL flush (a lost mark only sends
    its rows again) and nothing more: a setting that outlived it would make every later statement of the leader's
    connection commit that way. Alone (its own transaction) and inside the transaction of a batch with a parked row."""
    store = EventStore(pool, source="/flows/loader")
    await append_numbered_from(store, "test.relay-mark", key="4004", start=0, count=2)
    ids = [int(r["id"]) for r in await pool.fetch("SELECT id FROM outbox WHERE published_at IS NULL ORDER BY id")]
    assert len(ids) == 2
    async with pool.acquire() as conn:
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
        async with conn.transaction():
            assert await conn.execute(_MARK_PUBLISHED, ids[:1]) == "UPDATE 1"
            assert await conn.fetchval("SHOW synchronous_commit") == "off"
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
        assert await conn.execute(_MARK_PUBLISHED, ids[1:]) == "UPDATE 1"
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
    assert await unpublished(pool) == 0


async def test_the_relay_wakes_on_notify_not_on_its_poll(pool: asyncpg.Pool) -> None:
    """Its poll comes once an hour here: the second event is published only if the append's NOTIFY wakes the relay
    waiting after its pass of the first. No timing asserted: the wait only stops a hang, naming what never came."""
    store = EventStore(pool, source="/flows/loader")
    stop = asyncio.Event()
    relay = OutboxRelay(pool, KAFKA, poll_interval=3600)
    running = asyncio.create_task(relay.run(stop))
    try:
        await wait_until(lambda: _is(relay.is_leader))
        for n in range(2):  # the first may come with its first pass; the second is appended while it waits
            await append_numbered_from(store, await fresh_topic(), key="3003", start=n, count=1)
            try:
                await wait_until(lambda: _none_left(pool), within=60)
            except TimeoutError:
                raise AssertionError(f"the relay never published event {n + 1}, appended while it waited: no NOTIFY "
                                     "woke it") from None
    finally:
        stop.set()
        await running
    assert relay.published == 2


async def test_what_a_pass_sent_is_marked_by_the_next_pass_or_at_the_stop(pool: asyncpg.Pool) -> None:
    """The relay marks the rows it sent in the statement of its next read (no round trip of their own), and the last
    ones as it stops: never left unmarked, or the next relay would send them all again. Its poll and its delay
    before marking are an hour here: only the next NOTIFY's pass, then the stop, can mark."""
    store = EventStore(pool, source="/flows/loader")
    topic = await fresh_topic()
    stop = asyncio.Event()
    relay = OutboxRelay(pool, KAFKA, poll_interval=3600)
    relay.MARK_DELAY_S = 3600
    # appended before the relay listens: its first pass sends it, and no NOTIFY makes a second pass
    await append_numbered_from(store, topic, key="5005", start=0, count=1)
    running = asyncio.create_task(relay.run(stop))
    try:
        assert len(await consume_all(topic, expected=1, settle=0.2)) == 1
        assert (await unpublished(pool), relay.published) == (1, 0)  # sent, its mark waits for the next pass
        await append_numbered_from(store, topic, key="5005", start=1, count=1)
        assert len(await consume_all(topic, expected=2, settle=0.2)) == 2
        # the pass that read the second row marked the first in the same statement
        assert await pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL AND key = '5005'") == 1
        assert relay.published == 1
    finally:
        stop.set()
        await running
    assert (await unpublished(pool), relay.published) == (0, 2)  # the stop marked the last one


async def test_a_relay_cancelled_while_it_marks_at_its_stop_never_gives_its_listening_connection_back(
        outbox_db: str, pool: asyncpg.Pool) -> None:
    """A service's shutdown cancels its relay, which may be marking what it sent (at its stop, the marks it kept for
    the next pass). The mark is held here on a lock of the outbox for real, the stop set, then the relay cancelled in
    the middle of it: its connection must not go back to the pool with its listener (asyncpg's InterfaceWarning,
    seen in a full run when a service stopped), and what it did not mark is there for the next relay to send."""
    store = EventStore(pool, source="/flows/loader")
    topic = await fresh_topic()
    stop = asyncio.Event()
    relay = OutboxRelay(pool, KAFKA, poll_interval=3600)
    relay.MARK_DELAY_S = 3600  # only the stop marks
    await append_numbered_from(store, topic, key="5006", start=0, count=1)
    running = asyncio.create_task(relay.run(stop))
    blocker = await asyncpg.connect(outbox_db)
    try:
        assert len(await consume_all(topic, expected=1, settle=0.2)) == 1
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            async with blocker.transaction():
                await blocker.execute("LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE")
                stop.set()
                await wait_until(lambda: _lock_waiters(blocker), within=30)  # the stop's mark waits on the lock
                running.cancel()
                ended = await asyncio.gather(running, return_exceptions=True)
            assert isinstance(ended[0], asyncio.CancelledError), ended
            await asyncio.sleep(0.1)  # a release with its warning would have come by now
        released = [str(w.message) for w in caught if "released to the pool" in str(w.message)]
        assert released == [], released
        assert not relay.is_leader
        assert await unpublished(pool) == 1  # not marked: the next relay sends it again (consumers skip a ce_id seen)
    finally:
        await blocker.close()


async def _lock_waiters(conn: asyncpg.Connection) -> bool:
    return bool(await conn.fetchval(
        "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'outbox'::regclass"))


async def test_a_row_too_large_for_the_broker_is_parked_and_only_its_own_stream_waits(pool: asyncpg.Pool) -> None:
    store = EventStore(pool, source="/flows/loader")
    topic = await fresh_topic()
    await append_numbered(store, topic, keys=["7001"], per_key=1)
    # A row from before the append-time size check: 1.2 MB, over the broker's (and producer's) 1 MiB.
    await pool.execute("UPDATE outbox SET payload = jsonb_build_object('key', '7001', 'n', 0, 'blob', "
                       "repeat('x', 1200000))::text")
    await append_numbered_from(store, topic, key="7001", start=1, count=2)  # behind it in its stream
    await append_numbered(store, topic, keys=["7002", "7003"], per_key=3)  # other streams
    stop = asyncio.Event()
    relay = OutboxRelay(pool, KAFKA, poll_interval=0.2)
    running = asyncio.create_task(relay.run(stop))
    try:
        await wait_until(lambda: _unpublished_is(pool, 3))  # the parked row and the 2 behind it
        parked = await parked_rows(pool)
        assert [(p["key"], p["waiting"]) for p in parked] == [("7001", 2)]
        assert "MessageSizeTooLarge" in parked[0]["parked_reason"] and "bytes" in parked[0]["parked_reason"]
        # which limit to raise: here the producer's (the topic's, the broker's default, is higher)
        assert "the relay's producer sends at most 1048576 bytes a request (max_request_size)" in \
            parked[0]["parked_reason"], parked[0]["parked_reason"]
        assert "the topic's max.message.bytes is " in parked[0]["parked_reason"]
        assert relay.parked == 1
        messages = await consume_all(topic, expected=6)
        assert sorted((k, p["n"]) for k, _, p in messages) == [(k, n) for k in ("7002", "7003") for n in range(3)]

        # The operator skips it: its stream goes on, in order.
        assert await skip_parked(pool, parked[0]["id"], reason="test: too large", by="ops.test")
        await wait_until(lambda: _none_left(pool))
        messages = await consume_all(topic, expected=8)
        assert [p["n"] for k, _, p in messages if k == "7001"] == [1, 2]
        assert await parked_rows(pool) == []
        assert await pool.fetchval("SELECT count(*) FROM outbox WHERE skipped_at IS NOT NULL") == 1
    finally:
        stop.set()
        await running


async def test_a_parked_row_retried_after_its_cause_is_fixed_is_published_first(pool: asyncpg.Pool) -> None:
    store = EventStore(pool, source="/flows/loader")
    topic = await fresh_topic()
    await append_numbered(store, topic, keys=["7101"], per_key=1)
    await pool.execute("UPDATE outbox SET topic = 'not a valid topic name!'")  # InvalidTopic: permanent
    await append_numbered_from(store, topic, key="7101", start=1, count=1)
    stop = asyncio.Event()
    relay = OutboxRelay(pool, KAFKA, poll_interval=0.2)
    running = asyncio.create_task(relay.run(stop))
    try:
        await wait_until(lambda: _parked_count_is(pool, 1))
        assert await unpublished(pool) == 2
        row = (await parked_rows(pool))[0]
        await pool.execute("UPDATE outbox SET topic = $1 WHERE id = $2", topic, row["id"])  # the fix
        assert await retry_parked(pool, row["id"], by="ops.test")
        await wait_until(lambda: _none_left(pool))
        messages = await consume_all(topic, expected=2)
        assert [p["n"] for _, _, p in messages] == [0, 1]
    finally:
        stop.set()
        await running


async def test_an_event_over_the_broker_limit_is_refused_at_append_naming_type_aggregate_and_sizes(
        pool: asyncpg.Pool) -> None:
    store = EventStore(pool, source="/flows/loader")
    with pytest.raises(EventTooLarge) as refused:
        await store.append("instance-7201", [NewEvent(type="flows.load-failed", data={"blob": "é" * 600_000})],
                           expected_version=0, key="7201")
    message = str(refused.value)
    assert "flows.load-failed" in message and "7201" in message and "1200" in message and "1048576" in message
    assert await pool.fetchval("SELECT count(*) FROM events") == 0
    assert await unpublished(pool) == 0


async def _unpublished_is(pool: asyncpg.Pool, count: int) -> bool:
    return await unpublished(pool) == count


async def _parked_count_is(pool: asyncpg.Pool, count: int) -> bool:
    return len(await parked_rows(pool)) == count


async def test_a_relay_stopped_while_postgres_is_down_never_gives_its_listening_connection_back(
        outbox_db: str) -> None:
    """PostgreSQL stopped for real (pg_ctl stop) under the leading relay: its LISTEN connection dies, and the relay's
    clean-up (remove the listener, unlock) cannot reach the server. The connection must then be terminated, never
    released to the pool with its listener still set (asyncpg's InterfaceWarning "... is being released to the pool
    but has 1 active notification listener", seen in a CI run). The relay's pool goes through `late_close_proxy`,
    which lets the server's FATAL reach the relay before the close: the relay's next poll then lands in the window
    where asyncpg aborts the connection without its own clean-up, every time rather than once in a while. The server
    back, the same pool serves a new relay, which leads (the old session and its leader lock are gone) and
    publishes."""
    async with late_close_proxy(outbox_db, close_delay=5.0) as through_proxy:
        pool = await create_pool(through_proxy, min_size=1, max_size=2)
        try:
            store = EventStore(pool, source="/flows/loader")
            topic = await fresh_topic()
            relay = OutboxRelay(pool, KAFKA, poll_interval=0.5)  # polls within the window, rarely mid-query
            running = asyncio.create_task(relay.run())
            await append_numbered(store, topic, keys=["7300"], per_key=1)
            await wait_until(lambda: _none_left(pool), within=60)  # leading, its producer up, a pass done
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                async with postgres_down():
                    # Its next poll finds the connection lost, and the relay ends on that error, through the same
                    # clean-up as a stop (a stop set before that poll would find a connection asyncpg still calls
                    # open, and clean it up: not the case under test).
                    async with asyncio.timeout(60):  # a hang guard, no speed target
                        ended = await asyncio.gather(running, return_exceptions=True)
            assert isinstance(ended[0], asyncpg.InterfaceError | asyncpg.InternalClientError | asyncpg.PostgresError), \
                ended
            released = [str(w.message) for w in caught if "released to the pool" in str(w.message)]
            assert released == [], released
            assert not relay.is_leader

            # The server accepts connections again: the pool connects anew. Its other connection, idle when the
            # FATAL came, may still be in the relay's window (closed 5 s later) and fail the first try: asyncpg's
            # InternalClientError there, which aborts it.
            async with asyncio.timeout(60):
                while True:
                    try:
                        assert await pool.fetchval("SELECT 1") == 1
                        break
                    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError):
                        await asyncio.sleep(0.2)
            again = asyncio.Event()
            second = OutboxRelay(pool, KAFKA, poll_interval=0.2)
            second_task = asyncio.create_task(second.run(again))
            try:
                await wait_until(lambda: _is(second.is_leader), within=60)
                await append_numbered_from(store, topic, key="7300", start=1, count=2)
                await wait_until(lambda: _none_left(pool), within=60)
            finally:
                again.set()
                await second_task
            assert second.published == 2
        finally:
            await pool.close()


async def _offering_relay(pool: asyncpg.Pool,
                          store: EventStore) -> tuple[OutboxRelay, asyncio.Event, asyncio.Task[None]]:
    """A relay that `store`'s one-event appends offer their rows to (as services.runtime.host.serve wires it), its poll
    and its marks' delay an hour: only a NOTIFY makes it pass. Returned once it leads and its first pass has read."""
    relay = OutboxRelay(pool, KAFKA, poll_interval=3600)
    relay.MARK_DELAY_S = 3600
    store.offers = relay
    stop = asyncio.Event()
    running = asyncio.create_task(relay.run(stop))
    await wait_until(lambda: _is(relay.is_leader and relay.reads >= 1))
    return relay, stop, running


async def test_rows_offered_by_their_appends_go_without_a_read_and_in_each_streams_order(pool: asyncpg.Pool) -> None:
    store = EventStore(pool, source="/flows/loader")
    elsewhere = EventStore(pool, source="/flows/formatter")  # another process's store: it offers this relay nothing
    topic = await fresh_topic()
    relay, stop, running = await _offering_relay(pool, store)
    try:
        reads = relay.reads
        for n in range(4):  # one-event appends of three streams: each NOTIFY names a row offered here
            for key in ("8001", "8002", "8003"):
                await append_numbered_from(store, topic, key=key, start=n, count=1)
        await wait_until(lambda: _is(relay.sent_offered == 12))
        assert relay.reads == reads  # not one read
        # Wake-ups that name no row offered here, among offered ones: an append of two events, another process's.
        await store.append("instance-8001", [NewEvent(type=topic, data={"key": "8001", "n": n}) for n in (4, 5)],
                           expected_version=4, key="8001")
        await append_numbered_from(elsewhere, topic, key="8002", start=4, count=1)
        await append_numbered_from(store, topic, key="8001", start=6, count=3)
        await append_numbered_from(store, topic, key="8002", start=5, count=1)
        messages = await consume_all(topic, expected=19)
    finally:
        stop.set()
        await running
    streams: dict[str, list[int]] = defaultdict(list)
    for key, _, payload in messages:
        streams[key].append(payload["n"])
    assert streams == {"8001": list(range(9)), "8002": list(range(6)), "8003": list(range(4))}  # once each, in order
    assert relay.reads > reads  # the wake-ups without an offer were read
    assert await unpublished(pool) == 0 and relay.published == 19  # the reads and the stop marked every one


async def test_a_notify_of_another_session_never_sends_an_offered_row_before_its_commit(pool: asyncpg.Pool) -> None:
    """An offer is made when the row is written, before its transaction commits (it may roll back): only the NOTIFY
    of the connection that wrote it, which PostgreSQL delivers after the commit, lets the relay send it. Any session
    can NOTIFY the channel: here one names the row while its transaction is open, and that transaction rolls back."""
    store = EventStore(pool, source="/flows/loader")
    topic = await fresh_topic()
    relay, stop, running = await _offering_relay(pool, store)
    try:
        async with pool.acquire() as conn:
            open_transaction = conn.transaction()
            await open_transaction.start()
            [event] = await store.append("instance-8101", [NewEvent(type=topic, data={"key": "8101", "n": 0})],
                                         expected_version=0, key="8101", conn=conn, savepoint=False)
            row_id = await conn.fetchval("SELECT id FROM outbox WHERE event_id = $1", event.id)
            assert str(event.id) in relay._offers
            reads = relay.reads
            await pool.execute(f"NOTIFY flows_outbox, '{row_id:d} {event.id}'")  # as the append's NOTIFY names it
            await wait_until(lambda: _is(relay.reads == reads + 1))  # not trusted: that pass read, and found nothing
            await open_transaction.rollback()
        await append_numbered_from(store, topic, key="8102", start=0, count=1)
        messages = await consume_all(topic, expected=1)
    finally:
        stop.set()
        await running
    assert [(key, payload["n"]) for key, _, payload in messages] == [("8102", 0)]
    assert relay.sent_offered == 1


async def test_offered_rows_of_a_stream_with_a_parked_row_wait_behind_it(pool: asyncpg.Pool) -> None:
    store = EventStore(pool, source="/flows/loader")
    topic = await fresh_topic()
    await append_numbered(store, topic, keys=["8201"], per_key=1)
    await pool.execute("UPDATE outbox SET topic = 'not a valid topic name!'")  # InvalidTopic: parked
    relay, stop, running = await _offering_relay(pool, store)
    try:
        await wait_until(lambda: _parked_count_is(pool, 1))
        # Another stream's offered rows go as offered. (Appended before the parked stream's: a pass whose wake-ups
        # name a row of a parked stream reads the outbox, and its read would send any of these it found.)
        await append_numbered_from(store, topic, key="8202", start=0, count=3)
        await wait_until(lambda: _is(relay.sent_offered == 3))
        assert sorted((k, p["n"]) for k, _, p in await consume_all(topic, expected=3)) == [("8202", n)
                                                                                          for n in range(3)]
        # The parked stream's offered rows make the relay read, and the read leaves them behind the parked row.
        reads = relay.reads
        await append_numbered_from(store, topic, key="8201", start=1, count=2)
        await wait_until(lambda: _is(relay.reads > reads))
        assert relay.sent_offered == 3
        # the parked row and the two behind it
        assert await pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL AND key = '8201'") == 3
        row = (await parked_rows(pool))[0]
        await pool.execute("UPDATE outbox SET topic = $1 WHERE id = $2", topic, row["id"])  # the fix
        # its NOTIFY makes the relay read the parked keys and the outbox
        assert await retry_parked(pool, row["id"], by="ops.test")
        messages = await consume_all(topic, expected=6)
    finally:
        stop.set()
        await running
    assert [p["n"] for k, _, p in messages if k == "8201"] == [0, 1, 2]
    assert await unpublished(pool) == 0


class _Numbered(BaseModel):
    key: str
    n: int


async def _delete_topic(name: str) -> None:
    """Deletes the topic, as an operator's `kafka-topics --delete` does, and waits until the cluster has it no more."""
    admin = admin_client(KAFKA)
    await admin.start()
    try:
        await admin.delete_topics([name])
    finally:
        await admin.close()
    async with asyncio.timeout(30):
        while await topic_exists(KAFKA, name):
            await asyncio.sleep(0.2)


async def test_a_registry_topic_deleted_by_hand_is_provisioned_again_and_its_rows_go_in_their_order(
        pool: asyncpg.Pool) -> None:
    """The brokers never create a topic, so a registry topic deleted by hand left its rows unsendable: aiokafka waits
    for the topic's metadata until its request timeout and says so as a transient error, and the relay retried the
    row for ever, every row of its stream (and every later event of its instances) held behind it. Now the relay
    asks the cluster, finds the topic gone, provisions it again from the registry as `flows topics apply` does, and
    the rows go, in their order. The relay's producer knew the topic before (it had sent to it)."""
    name = f"test.relay-gone-{uuid.uuid4().hex[:8]}"
    registry = [Topic(name, _Numbered, "key", "a relay test", ("test",))]
    await apply_topics(KAFKA, 1, registry)
    store = EventStore(pool, source="/flows/loader")
    await append_numbered(store, name, keys=["7301"], per_key=2)
    stop = asyncio.Event()
    relay = OutboxRelay(pool, KAFKA, poll_interval=0.2, retry_delay=0.2, producer_options={"request_timeout_ms": 3000},
                        provision=registry_topic_provisioner(KAFKA, 1, registry))
    running = asyncio.create_task(relay.run(stop))
    try:
        await wait_until(lambda: _none_left(pool))
        await _delete_topic(name)
        await append_numbered_from(store, name, key="7301", start=2, count=2)
        await wait_until(lambda: _none_left(pool), within=60)
        assert await topic_exists(KAFKA, name) and relay.parked == 0
        messages = await consume_all(name, expected=2)
        assert [(k, p["n"]) for k, _, p in messages] == [("7301", 2), ("7301", 3)], "the new topic's, in order"
    finally:
        stop.set()
        await running


async def test_a_deleted_topic_the_registry_does_not_know_has_its_row_parked_and_the_others_go_on(
        pool: asyncpg.Pool) -> None:
    """A topic that is not the registry's is not the relay's to create: its row is parked with the reason (the
    operators retry or skip it, `flows outbox`), its stream waits behind it, and the other streams go on."""
    gone, other = await fresh_topic(), await fresh_topic()
    await _delete_topic(gone)
    store = EventStore(pool, source="/flows/loader")
    await append_numbered(store, gone, keys=["7401"], per_key=1)
    await append_numbered_from(store, other, key="7401", start=1, count=1)  # behind it in its stream
    await append_numbered(store, other, keys=["7402"], per_key=2)
    stop = asyncio.Event()
    relay = OutboxRelay(pool, KAFKA, poll_interval=0.2, retry_delay=0.2, producer_options={"request_timeout_ms": 3000},
                        provision=registry_topic_provisioner(KAFKA, 1, []))
    running = asyncio.create_task(relay.run(stop))
    try:
        await wait_until(lambda: _unpublished_is(pool, 2), within=60)
        parked = await parked_rows(pool)
        assert [(p["topic"], p["key"], p["waiting"]) for p in parked] == [(gone, "7401", 1)]
        assert f"the topic '{gone}' does not exist on the cluster and is not in the registry" in \
            parked[0]["parked_reason"]
        messages = await consume_all(other, expected=2)
        assert [(k, p["n"]) for k, _, p in messages] == [("7402", 0), ("7402", 1)]
        assert not await topic_exists(KAFKA, gone)
    finally:
        stop.set()
        await running


async def test_a_row_over_its_topics_limit_parks_alone_not_the_rows_sent_beside_it(pool: asyncpg.Pool) -> None:
    """The broker refuses a produce request's record batch whole when one record in it is over the topic's
    max.message.bytes, and aiokafka does not split it: every row sent beside the large one came back refused, and each
    was parked for another row's size, its stream held behind it. Now the refused rows go again one by one: only the
    large row is parked, the others are published, each stream in its order."""
    name = f"test.relay-limit-{uuid.uuid4().hex[:8]}"
    admin = admin_client(KAFKA)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1, topic_configs={"max.message.bytes": "2000"})])
    finally:
        await admin.close()
    async with asyncio.timeout(30):
        while not await topic_exists(KAFKA, name):
            await asyncio.sleep(0.1)
    store = EventStore(pool, source="/flows/loader")
    await append_numbered(store, name, keys=["7501"], per_key=1)
    await pool.execute("UPDATE outbox SET payload = jsonb_build_object('key', '7501', 'n', 0, 'blob', "
                       "repeat('x', 3000))::text")  # over the topic's 2,000 bytes, under the producer's limit
    await append_numbered_from(store, name, key="7501", start=1, count=1)  # behind it in its stream
    await append_numbered(store, name, keys=["7502", "7503"], per_key=2)  # beside it, in the same batch
    stop = asyncio.Event()
    relay = OutboxRelay(pool, KAFKA, poll_interval=0.2)
    running = asyncio.create_task(relay.run(stop))
    try:
        await wait_until(lambda: _unpublished_is(pool, 2))  # the large row and the one behind it
        parked = await parked_rows(pool)
        assert [(p["key"], p["waiting"]) for p in parked] == [("7501", 1)], parked
        assert "; the topic's max.message.bytes is 2000;" in parked[0]["parked_reason"], parked  # the limit to raise
        assert relay.parked == 1
        messages = await consume_all(name, expected=4)
        assert [(k, p["n"]) for k, _, p in messages] == [("7502", 0), ("7503", 0), ("7502", 1), ("7503", 1)]
    finally:
        stop.set()
        await running
