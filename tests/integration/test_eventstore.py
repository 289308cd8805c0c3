"""The event store on the real PostgreSQL of the local stack (fails, never skips, when it is down)."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from services.runtime.db import create_pool, scratch_database
from services.runtime.eventstore import ConcurrencyError, EventStore, NewEvent, StoredEvent
from services.runtime.migrations import MIGRATIONS_DIR, MigrationError, migrate
from services.runtime.outbox import headers_json_for_append, mark_processed
from services.runtime.projections import install, rebuild_and_diff
from tests.isolation import lock_waiters
from tests.stack_urls import DATABASE_URL

pytestmark = pytest.mark.integration



def foundation_migrations(into: Path) -> Path:
    """Only this area's files (0001-0009): other areas' migrations are tested by their owners."""
    into.mkdir(parents=True, exist_ok=True)
    for path in MIGRATIONS_DIR.glob("000[1-9]_*.sql"):
        shutil.copy(path, into / path.name)
    return into


async def _fresh_database(area: str) -> AsyncIterator[str]:
    """A database of our own on the shared server, dropped afterwards."""
    async with scratch_database(DATABASE_URL, f"test_{area}", migrated=False) as url:
        yield url


@pytest.fixture(scope="module")
async def pool(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[asyncpg.Pool]:
    async for url in _fresh_database("eventstore"):
        pool = await create_pool(url, min_size=2, max_size=30)
        await migrate(pool, foundation_migrations(tmp_path_factory.mktemp("migrations")))
        yield pool
        await pool.close()


@pytest.fixture
async def own_pool(tmp_path: Path) -> AsyncIterator[asyncpg.Pool]:
    """A database of this test alone, with the foundation migrations: the migration tests change what is applied
    (one adds a later file), so on the module's database each saw what the one before it left."""
    async for url in _fresh_database("migrations"):
        pool = await create_pool(url, min_size=1, max_size=2)
        await migrate(pool, foundation_migrations(tmp_path / "foundation"))
        yield pool
        await pool.close()


@pytest.fixture
def store(pool: asyncpg.Pool) -> EventStore:
    return EventStore(pool, source="/flows/test")


def load_checked(rows: int, **extra: object) -> NewEvent:
    return NewEvent(type="flows.load-checked", data={"rows": rows, **extra}, actor="operator-rossi")


# --- migrations ---------------------------------------------------------------------------------


async def test_migrations_are_recorded_and_applied_only_once(own_pool: asyncpg.Pool, tmp_path: Path) -> None:
    pool = own_pool
    recorded = await pool.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
    assert [(r["version"], r["name"]) for r in recorded] == [
        (1, "event_store"), (2, "outbox"), (3, "processed_message"), (4, "outbox_text"), (5, "housekeeping")]
    assert await migrate(pool, foundation_migrations(tmp_path / "again")) == []


async def test_outbox_rows_queued_before_the_text_columns_keep_their_headers_and_payload(tmp_path: Path) -> None:
    """0004 turned the outbox's jsonb headers and payload into text: a row still unpublished then is sent as it was."""
    async for url in _fresh_database("outbox_text"):
        pool = await create_pool(url)
        try:
            folder = foundation_migrations(tmp_path / "before")
            (folder / "0004_outbox_text.sql").unlink()
            await migrate(pool, folder)
            event_id = uuid.uuid4()
            await pool.execute(
                "INSERT INTO events (stream_id, version, event_id, type, data, actor, recorded_at, prev_hash, hash) "
                "VALUES ('instance-1', 1, $1, 'flows.load-checked', '{\"rows\": 2}', 'system', now(), $2, $2)",
                event_id, bytes(32))
            await pool.execute("INSERT INTO outbox (event_id, topic, key, headers, payload) VALUES "
                               "($1, 'flows.load-checked', '1', $2::jsonb, $3::jsonb)",
                               event_id, [["ce_id", str(event_id)], ["ce_type", "flows.load-checked"]],
                               {"rows": 2, "ente": "ASL Napoli 1 – Centro"})
            assert await migrate(pool, foundation_migrations(tmp_path / "after")) == ["0004_outbox_text.sql"]
            row = await pool.fetchrow("SELECT headers, payload FROM outbox WHERE event_id = $1", event_id)
            assert json.loads(row["headers"]) == [["ce_id", str(event_id)], ["ce_type", "flows.load-checked"]]
            assert json.loads(row["payload"]) == {"rows": 2, "ente": "ASL Napoli 1 – Centro"}
        finally:
            await pool.close()


async def test_migrations_pick_up_later_files_and_refuse_an_edited_applied_one(
        own_pool: asyncpg.Pool, tmp_path: Path) -> None:
    pool = own_pool
    folder = foundation_migrations(tmp_path / "migrations")
    (folder / "0010_instance_list.sql").write_text("CREATE TABLE instance_list (instance int PRIMARY KEY);")
    assert await migrate(pool, folder) == ["0010_instance_list.sql"]
    (folder / "0003_processed_message.sql").write_text("-- rewritten history\n")
    with pytest.raises(MigrationError, match=r"0003_processed_message\.sql changed after it was applied"):
        await migrate(pool, folder)


async def test_migrations_refuse_two_files_with_the_same_number(tmp_path: Path, own_pool: asyncpg.Pool) -> None:
    pool = own_pool
    (tmp_path / "0011_files.sql").write_text("SELECT 1;")
    (tmp_path / "0011_onboarding.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="0011 is used twice"):
        await migrate(pool, tmp_path)


# --- appends and optimistic concurrency ---------------------------------------------------------


async def test_a_new_stream_starts_at_version_1_and_reads_back_what_was_written(store: EventStore) -> None:
    stream = f"instance-{random.randint(10**6, 10**7)}"
    written = await store.append(stream, [load_checked(120, ente="ASL Napoli 1", amount=1e20), load_checked(0)],
                                 expected_version=0, key=stream.split("-")[1])
    assert [e.version for e in written] == [1, 2]
    assert await store.read_stream(stream) == written
    assert written[0].data == {"rows": 120, "ente": "ASL Napoli 1", "amount": 10**20}
    assert await store.stream_version(stream) == 2
    assert await store.verify_stream(stream) == []


async def test_two_writers_of_one_stream_one_wins_the_other_gets_concurrency_error(
        store: EventStore, pool: asyncpg.Pool) -> None:
    await store.append("instance-1947", [load_checked(1)], expected_version=0, key="1947")
    winner_holds_version_2 = asyncio.Event()
    winner_may_commit = asyncio.Event()

    async def winner() -> list[StoredEvent]:
        async with pool.acquire() as conn, conn.transaction():
            written = await store.append("instance-1947", [load_checked(2, by="winner")],
                                         expected_version=1, key="1947", conn=conn)
            winner_holds_version_2.set()
            await winner_may_commit.wait()
            return written

    async def loser() -> None:
        await winner_holds_version_2.wait()
        # Both saw version 1; the loser's insert of version 2 waits on the winner's uncommitted row.
        attempt = asyncio.create_task(store.append("instance-1947", [load_checked(2, by="loser")],
                                                   expected_version=1, key="1947"))
        # Its insert reached the server and waits there, seen waiting on a lock: not a moment slept, in which a loaded
        # machine may not even have sent it (the check below could not fail then)
        async with asyncio.timeout(60):  # a hang guard
            while not await lock_waiters(pool):
                assert not attempt.done(), attempt
                await asyncio.sleep(0.01)
        assert not attempt.done()
        winner_may_commit.set()
        await attempt

    results = await asyncio.gather(winner(), loser(), return_exceptions=True)
    assert isinstance(results[1], ConcurrencyError)
    assert "instance-1947" in str(results[1])
    # Nothing lost: the loser re-reads and appends after the winner.
    await store.append("instance-1947", [load_checked(3, by="loser")], expected_version=2, key="1947")
    stream = await store.read_stream("instance-1947")
    assert [(e.version, e.data.get("by")) for e in stream] == [(1, None), (2, "winner"), (3, "loser")]
    assert await store.verify_stream("instance-1947") == []


async def test_a_stale_expected_version_is_refused_naming_both_versions(store: EventStore) -> None:
    await store.append("instance-2001", [load_checked(1), load_checked(2)], expected_version=0, key="2001")
    with pytest.raises(ConcurrencyError, match="stream instance-2001: expected version 1, but it is at version 2"):
        await store.append("instance-2001", [load_checked(3)], expected_version=1, key="2001")


async def test_an_expected_version_the_stream_never_reached_is_refused_and_writes_nothing(
        store: EventStore, pool: asyncpg.Pool) -> None:
    await store.append("instance-2002", [load_checked(1), load_checked(2)], expected_version=0, key="2002")
    with pytest.raises(ConcurrencyError, match="stream instance-2002: expected version 5, but it is at version 2"):
        await store.append("instance-2002", [load_checked(6)], expected_version=5, key="2002")
    with pytest.raises(ConcurrencyError, match="expected version 0, but it is at version 2"):
        await store.append("instance-2002", [load_checked(1)], expected_version=0, key="2002")
    async with pool.acquire() as conn, conn.transaction():  # the caller's transaction stays usable
        with pytest.raises(ConcurrencyError, match="expected version 3, but it is at version 2"):
            await store.append("instance-2002", [load_checked(4)], expected_version=3, key="2002", conn=conn)
        written = await store.append("instance-2002", [load_checked(3)], expected_version=2, key="2002", conn=conn)
    assert [e.version for e in written] == [3]
    assert await pool.fetchval("SELECT count(*) FROM events WHERE stream_id = 'instance-2002'") == 3
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE key = '2002'") == 3
    assert await store.verify_stream("instance-2002") == []


@pytest.mark.parametrize("size", [1, 3])  # one event takes the store's scalar statement, several its arrays
async def test_one_event_and_several_chain_queue_and_refuse_alike(size: int, store: EventStore,
                                                                   pool: asyncpg.Pool) -> None:
    stream, key = f"instance-{5000 + size}", str(5000 + size)

    def batch(first: int, **extra: object) -> list[NewEvent]:
        return [load_checked(first + n, **extra) for n in range(size)]

    first = await store.append(stream, batch(1, ente="Sant'Anna è"), expected_version=0, key=key)
    second = await store.append(stream, batch(10), expected_version=size, key=key, publish=False)
    assert [e.version for e in first + second] == list(range(1, 2 * size + 1))
    assert second[0].prev_hash == first[-1].hash
    for expected in (0, size, 2 * size + 1):  # moved past (the primary key), or never reached (no row comes back)
        with pytest.raises(ConcurrencyError, match=f"expected version {expected}, but it is at version {2 * size}"):
            await store.append(stream, batch(99), expected_version=expected, key=key)
    assert await store.read_stream(stream) == first + second
    assert await store.verify_stream(stream) == []
    rows = await pool.fetch("SELECT event_id, topic, headers, payload FROM outbox WHERE key = $1 ORDER BY id", key)
    assert [r["event_id"] for r in rows] == [e.id for e in first]  # the unpublished appends queued nothing
    assert [json.loads(r["payload"]) for r in rows] == [e.data for e in first]
    # Written in the statement, byte for byte what the relay's side of the store defines them to be.
    assert [r["headers"] for r in rows] == [
        headers_json_for_append([(e.id, e.type)], time=e.recorded_at, key=key, source=store.source)[0] for e in first]


async def test_without_a_savepoint_a_stale_append_names_the_versions_and_ends_the_callers_transaction(
        store: EventStore, pool: asyncpg.Pool) -> None:
    """savepoint=False (Instances.append in a command's transaction): two round trips fewer; the error still names
    the version the stream is at, read outside the aborted transaction, and nothing of the transaction stays."""
    await store.append("instance-2003", [load_checked(1), load_checked(2)], expected_version=0, key="2003")
    with pytest.raises(ConcurrencyError, match="stream instance-2003: expected version 1, but it is at version 2"):
        async with pool.acquire() as conn, conn.transaction():
            await store.append("instance-2004", [load_checked(1)], expected_version=0, key="2004", conn=conn,
                               savepoint=False)
            await store.append("instance-2003", [load_checked(2)], expected_version=1, key="2003", conn=conn,
                               savepoint=False)
    assert await pool.fetchval("SELECT count(*) FROM events WHERE stream_id IN ('instance-2003', 'instance-2004')") == 2
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE key IN ('2003', '2004')") == 2
    async with pool.acquire() as conn, conn.transaction():
        written = await store.append("instance-2003", [load_checked(3)], expected_version=2, key="2003", conn=conn,
                                     savepoint=False)
    assert [e.version for e in written] == [3]
    assert await store.verify_stream("instance-2003") == []


async def test_awkward_names_chain_as_verify_recomputes_them(store: EventStore) -> None:
    stream = 'instance-"Sant\'Anna" è\\ 🏥'
    events = [NewEvent(type="flows.load-checked", data={"note": "a\"b\\c\u2028"}, actor='op."rossi" è'),
              NewEvent(type="flows.formatted", data={"n": 1.0, "big": 10**20}, actor="loader")]
    written = await store.append(stream, events, expected_version=0, key="k")
    await store.append(stream, [NewEvent(type="flows.load-checked", data={}, actor="x\ty")], expected_version=2,
                       key="k")
    assert await store.verify_stream(stream) == []
    assert [e.hash for e in written] == [e.hash for e in (await store.read_stream(stream))[:2]]


async def test_an_append_inside_a_rolled_back_transaction_leaves_no_event_and_no_outbox_row(
        store: EventStore, pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        written = await store.append("instance-3003", [load_checked(7)], expected_version=0, key="3003", conn=conn)
        await tx.rollback()
    assert await store.read_stream("instance-3003") == []
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE event_id = $1", written[0].id) == 0


async def test_a_published_append_queues_one_outbox_row_per_event_with_cloudevents_headers(
        store: EventStore, pool: asyncpg.Pool) -> None:
    written = await store.append("instance-4004", [load_checked(1), load_checked(2)], expected_version=0,
                                 key="4004")
    internal = await store.append("instance-4004", [NewEvent(type="flows.note-added", data={"n": 1})],
                                  expected_version=2, key="4004", publish=False)
    rows = await pool.fetch("SELECT event_id, topic, key, headers, payload FROM outbox "
                            "WHERE event_id = ANY($1::uuid[]) ORDER BY id", [e.id for e in written + internal])
    assert [(r["event_id"], r["topic"], r["key"]) for r in rows] == [
        (e.id, "flows.load-checked", "4004") for e in written]
    headers = dict(json.loads(rows[0]["headers"]))
    assert headers["ce_id"] == str(written[0].id) and headers["ce_specversion"] == "1.0"
    assert headers["ce_source"] == "/flows/test" and headers["ce_subject"] == "4004"
    assert headers["ce_type"] == "flows.load-checked" and headers["content-type"] == "application/json"
    assert rows[1]["payload"] == '{"rows":2}'  # the bytes the relay sends: the data's canonical JSON, as hashed


async def test_a_consumer_marks_a_message_once_inside_its_own_transaction(store: EventStore,
                                                                          pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        with pytest.raises(RuntimeError, match="must run inside the transaction"):
            await mark_processed(conn, "formatter", "ce-1947")
        async with conn.transaction(), store.first_delivery(conn, consumer="formatter", message_id="ce-1947") as fresh:
            assert fresh
        async with conn.transaction(), store.first_delivery(conn, consumer="formatter", message_id="ce-1947") as fresh:
            assert not fresh
        async with conn.transaction():
            assert await mark_processed(conn, "ts-gateway", "ce-1947")  # another consumer, its own record


async def test_events_are_append_only(store: EventStore, pool: asyncpg.Pool) -> None:
    await store.append("instance-5005", [load_checked(1)], expected_version=0, key="5005")
    with pytest.raises(asyncpg.RaiseError, match="append-only: DELETE refused"):
        await pool.execute("DELETE FROM events WHERE stream_id = 'instance-5005'")


async def test_a_non_json_payload_is_refused_naming_the_stream_event_and_field(store: EventStore) -> None:
    with pytest.raises(ValueError, match=r"event 1 \(flows.load-checked\) of stream instance-6006: data\.when"):
        await store.append("instance-6006", [NewEvent(type="flows.load-checked", data={"when": object()})],
                           expected_version=0, key="6006")


# --- the global order ---------------------------------------------------------------------------


async def tail_until(store: EventStore, after: tuple[int, int], wanted: set[uuid.UUID],
                     within: float = 30.0) -> list[StoredEvent]:
    """Tails from ``after`` until ``wanted`` showed up. Transactions of OTHER databases on the shared
    server hold the horizon back too (transaction ids are cluster-wide), so visibility may lag."""
    found: list[StoredEvent] = []
    async with asyncio.timeout(within):
        while not wanted <= {e.id for e in found}:
            batch = await store.read_all(after=after)
            found.extend(e for e in batch if e.id in wanted)
            after = batch[-1].global_position if batch else after
            await asyncio.sleep(0 if batch else 0.01)
    return found


async def test_a_reader_does_not_pass_an_uncommitted_transaction(store: EventStore, pool: asyncpg.Pool) -> None:
    start = await store.read_all(limit=100_000)
    checkpoint = start[-1].global_position if start else (0, 0)
    async with pool.acquire() as slow:
        tx = slow.transaction()
        await tx.start()
        late = await store.append("instance-7007", [load_checked(1)], expected_version=0, key="7007", conn=slow)
        early = await store.append("instance-7008", [load_checked(1)], expected_version=0, key="7008")
        assert early[0].position > late[0].position
        # The later, committed event is held back: returning it would let the checkpoint skip 7007.
        assert [e.stream_id for e in await store.read_all(after=checkpoint) if "700" in e.stream_id] == []
        await tx.commit()
    ours = await tail_until(store, checkpoint, {late[0].id, early[0].id})
    assert [e.stream_id for e in ours] == ["instance-7007", "instance-7008"]


async def test_a_tailing_reader_sees_every_event_exactly_once_while_commits_land_out_of_order(
        store: EventStore, pool: asyncpg.Pool) -> None:
    start = await store.read_all(limit=100_000)
    checkpoint = start[-1].global_position if start else (0, 0)
    writers, appends = 20, 50
    written: list[uuid.UUID] = []
    done = asyncio.Event()

    async def writer(n: int) -> None:
        stream = f"instance-{90000 + n}"
        for version in range(appends):
            async with pool.acquire() as conn, conn.transaction():
                stored = await store.append(stream, [load_checked(version)], expected_version=version,
                                            key=str(90000 + n), conn=conn)
                await asyncio.sleep(random.uniform(0, 0.01))  # commit later than others that started later
            written.extend(e.id for e in stored)

    async def reader() -> list[uuid.UUID]:
        seen: list[uuid.UUID] = []
        nonlocal checkpoint
        async with asyncio.timeout(60):
            # Until the writers are done and every event they wrote has passed the horizon.
            while not (done.is_set() and set(written) <= set(seen)):
                batch = await store.read_all(after=checkpoint, limit=97)
                seen.extend(e.id for e in batch if e.stream_id.startswith("instance-900"))
                checkpoint = batch[-1].global_position if batch else checkpoint
                await asyncio.sleep(0 if batch else 0.005)
        return seen

    async def naive_reader() -> set[uuid.UUID]:
        """Tails by position alone: the control that shows commits really landed out of order."""
        seen: set[uuid.UUID] = set()
        last = checkpoint[1] if checkpoint != (0, 0) else 0
        while not done.is_set():
            rows = await pool.fetch("SELECT position, event_id FROM events WHERE position > $1 "
                                    "ORDER BY position LIMIT 97", last)
            seen.update(row["event_id"] for row in rows)
            last = rows[-1]["position"] if rows else last
            await asyncio.sleep(0.002)
        return seen

    reading, naive = asyncio.create_task(reader()), asyncio.create_task(naive_reader())
    await asyncio.gather(*(writer(n) for n in range(writers)))
    done.set()
    seen, naive_seen = await reading, await naive
    assert len(seen) == writers * appends
    assert len(set(seen)) == len(seen)
    assert set(seen) == set(written)
    assert len(set(written) - naive_seen) > 0, "no commit landed out of position order: the test proved nothing"


# --- hash chain verification --------------------------------------------------------------------


async def test_an_event_edited_in_the_database_is_reported_by_verify(store: EventStore,
                                                                     pool: asyncpg.Pool) -> None:
    await store.append("instance-8008", [load_checked(10), load_checked(11), load_checked(12)],
                       expected_version=0, key="8008")
    await pool.execute("UPDATE events SET data = '{\"rows\": 9999}' WHERE stream_id = 'instance-8008' "
                       "AND version = 2")
    breaks = await store.verify_stream("instance-8008")
    assert [(b.stream_id, b.version, b.link) for b in breaks] == [("instance-8008", 2, "hash")]
    everywhere = await store.verify_all(batch=7)  # small pages: links across page ends are checked too
    assert [(b.stream_id, b.version, b.link) for b in everywhere] == [("instance-8008", 2, "hash")]


# --- projections --------------------------------------------------------------------------------


class EventsPerStream:
    name = "events_per_stream"
    tables = {"events_per_stream": "CREATE TABLE events_per_stream "
                                   "(stream_id text PRIMARY KEY, events int NOT NULL, last_type text NOT NULL)"}

    async def apply(self, conn: asyncpg.Connection, event: StoredEvent) -> None:
        await conn.execute(
            "INSERT INTO events_per_stream VALUES ($1, 1, $2) ON CONFLICT (stream_id) "
            "DO UPDATE SET events = events_per_stream.events + 1, last_type = excluded.last_type",
            event.stream_id, event.type)


@pytest.fixture
async def projected_store() -> AsyncIterator[tuple[EventStore, asyncpg.Pool]]:
    async for url in _fresh_database("projections"):
        pool = await create_pool(url, min_size=1, max_size=5)
        await migrate(pool, foundation_migrations(Path(f"/tmp/{uuid.uuid4().hex}")))
        async with pool.acquire() as conn:
            await install(conn, EventsPerStream())
        yield EventStore(pool, source="/flows/test", projections=[EventsPerStream()]), pool
        await pool.close()


async def test_a_rebuilt_projection_equals_the_live_one_and_a_tampered_row_shows_in_the_diff(
        projected_store: tuple[EventStore, asyncpg.Pool]) -> None:
    store, pool = projected_store
    await store.append("instance-1947", [load_checked(1), load_checked(2)], expected_version=0, key="1947")
    await store.append("onboarding-42", [NewEvent(type="onboarding.document-received", data={"doc": "DURC"})],
                       expected_version=0, key="42")
    await store.append("instance-1947", [NewEvent(type="flows.formatted", data={"files": 2})],
                       expected_version=2, key="1947")
    # Live projection ran inline: the writer reads its own write.
    assert await pool.fetchval("SELECT events FROM events_per_stream WHERE stream_id = 'instance-1947'") == 3

    clean = await rebuild_and_diff(pool, [EventsPerStream()])
    assert clean.events_replayed == 4
    assert clean.differences == []
    assert await pool.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = 'replay_scratch'") == 0

    await pool.execute("UPDATE events_per_stream SET events = 99 WHERE stream_id = 'onboarding-42'")
    tampered = await rebuild_and_diff(pool, [EventsPerStream()])
    assert sorted((d.only_in, d.row["stream_id"], d.row["events"]) for d in tampered.differences) == [
        ("live", "onboarding-42", 99), ("rebuilt", "onboarding-42", 1)]
