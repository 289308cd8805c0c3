"""Delivery guarantees around Kafka: the transactional outbox, its relay, and consumer deduplication.

Producer side. ``EventStore.append`` writes one outbox row per event in the append transaction (topic = event
type, key = aggregate id, CloudEvents binary-mode headers, JSON payload) and NOTIFYs the relay.
``OutboxRelay`` sends unpublished rows in id order with an idempotent producer (acks=all) and marks
them published only after the broker acknowledged them. A relay that dies between the ack and the
mark sends those rows again when it restarts: Kafka may hold duplicates, never gaps.

Order: only the relay holding a PostgreSQL advisory lock publishes (others wait as hot standbys), so
rows leave in id order. One aggregate's rows have increasing ids because its stream's versions
serialise the appends (an append that committed before the next one started took its ids first),
and the idempotent producer keeps them in order inside the partition chosen by the key.

Consumer side. ``mark_processed`` records (consumer, ce_id) in the consumer's own transaction, the
one that holds its effects: a redelivered message finds its id and the consumer skips its effects.
Kafka delivers at least once; with this the system behaves exactly once.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from datetime import datetime
from typing import Any

import asyncpg
import structlog
from aiokafka import AIOKafkaProducer

from contracts.envelope import to_kafka_headers

NOTIFY_CHANNEL = "flows_outbox"
# Arbitrary constant: every relay of this database competes for it.
RELAY_LOCK_KEY = 7_316_004_002

_PENDING = """
SELECT id, event_id, topic, key, headers, payload FROM outbox
WHERE published_at IS NULL ORDER BY id LIMIT $1
"""


def cloudevent_headers(*, event_id: uuid.UUID, type: str, time: datetime, key: str,
                       source: str) -> list[list[str]]:
    """The ce_* headers of one event, as JSON-friendly [name, value] pairs for its outbox row.

    The outbox rows themselves are written by ``EventStore.append`` in the statement that appends
    the events (one round trip, one transaction).
    """
    headers = to_kafka_headers(id=str(event_id), type=type, source=source, time=time, subject=key)
    return [[name, value.decode()] for name, value in headers]


def headers_json_for_append(events: Sequence[tuple[uuid.UUID, str]], *, time: datetime, key: str,
                            source: str) -> list[str]:
    """The outbox headers (JSON text) of each (event id, type) of one append.

    One append shares time, key and source: the envelope is built once and only ce_id and ce_type
    change per event (a hot path: 100-event appends).
    """
    template = cloudevent_headers(event_id=uuid.UUID(int=0), type="-", time=time, key=key, source=source)
    per_event = {"ce_id", "ce_type"}
    fixed = [(name, value) for name, value in template if name not in per_event]
    return [json.dumps([["ce_id", str(event_id)], ["ce_type", type], *fixed], ensure_ascii=False)
            for event_id, type in events]


async def mark_processed(conn: asyncpg.Connection, consumer: str, message_id: str) -> bool:
    """True the first time ``consumer`` sees ``message_id``; False for a redelivery (skip the effects).

    Runs inside the caller's transaction so the mark and the effects commit or roll back together.
    A concurrent duplicate waits on the primary key until the first commits, then gets False.
    """
    if not conn.is_in_transaction():
        raise RuntimeError(f"mark_processed({consumer!r}, {message_id!r}) must run inside the transaction "
                           "that holds the consumer's effects")
    inserted = await conn.fetchval(
        "INSERT INTO processed_message (consumer, message_id, processed_at) VALUES ($1, $2, now()) "
        "ON CONFLICT (consumer, message_id) DO NOTHING RETURNING true", consumer, message_id)
    return bool(inserted)


class RelayError(RuntimeError):
    """The broker refused an outbox row; the row stays unpublished and is retried."""


class OutboxRelay:
    """Publishes the outbox to Kafka; run one or more per database, only the leader sends.

    ``after_ack`` is awaited with the acknowledged row ids before they are marked: the window in
    which a crash produces duplicates (tests use it to kill the relay there).
    """

    def __init__(self, pool: asyncpg.Pool, bootstrap_servers: str, *, batch_size: int = 500,
                 poll_interval: float = 2.0, retry_delay: float = 1.0,
                 after_ack: Callable[[list[int]], Awaitable[None]] | None = None,
                 producer_options: dict[str, Any] | None = None, logger: Any = None) -> None:
        self._pool = pool
        self._bootstrap_servers = bootstrap_servers
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._retry_delay = retry_delay
        self._after_ack = after_ack
        self._producer_options = producer_options or {}
        self._log = logger or structlog.get_logger("services.runtime.outbox")
        self.is_leader = False
        self.published = 0  # rows marked published by this relay

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Waits for leadership, then publishes until ``stop`` is set (or the task is cancelled)."""
        stop = stop or asyncio.Event()
        async with self._pool.acquire() as conn:  # holds the leader lock for the relay's lifetime
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK_KEY):
                with suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._poll_interval)
                if stop.is_set():
                    return
            self.is_leader = True
            wake = asyncio.Event()

            def on_notify(*_: object) -> None:
                wake.set()

            await conn.add_listener(NOTIFY_CHANNEL, on_notify)
            producer = AIOKafkaProducer(bootstrap_servers=self._bootstrap_servers, enable_idempotence=True,
                                        acks="all", **self._producer_options)
            try:
                await producer.start()
                while not stop.is_set():
                    wake.clear()  # before reading: a NOTIFY during the pass triggers another one
                    try:
                        sent = await self._publish_batch(conn, producer)
                    except RelayError as exc:
                        self._log.error("outbox relay: publish failed, will retry", error=str(exc))
                        sent = 0
                        await asyncio.sleep(self._retry_delay)
                    if sent == self._batch_size:
                        continue  # more may be waiting: no sleep
                    waiter = asyncio.create_task(wake.wait())
                    stopper = asyncio.create_task(stop.wait())
                    try:
                        await asyncio.wait({waiter, stopper}, timeout=self._poll_interval,
                                           return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        waiter.cancel()
                        stopper.cancel()
            finally:
                self.is_leader = False
                await producer.stop()
                with suppress(asyncpg.PostgresError, asyncpg.InterfaceError):
                    await conn.remove_listener(NOTIFY_CHANNEL, on_notify)
                    await conn.execute("SELECT pg_advisory_unlock($1)", RELAY_LOCK_KEY)

    async def _publish_batch(self, conn: asyncpg.Connection, producer: AIOKafkaProducer) -> int:
        rows = await conn.fetch(_PENDING, self._batch_size)
        if not rows:
            return 0
        # send() only enqueues (in order); the futures resolve when the broker acknowledged.
        acks = [await producer.send(row["topic"], key=row["key"].encode(),
                                    value=json.dumps(row["payload"], ensure_ascii=False).encode(),
                                    headers=[(name, value.encode()) for name, value in row["headers"]])
                for row in rows]
        results = await asyncio.gather(*acks, return_exceptions=True)
        acked: list[int] = []
        failure: tuple[asyncpg.Record, BaseException] | None = None
        for row, result in zip(rows, results, strict=True):
            if isinstance(result, BaseException):
                failure = (row, result)
                break  # mark only the prefix: later rows are resent after the failed one
            acked.append(row["id"])
        if acked:
            if self._after_ack is not None:
                await self._after_ack(acked)
            await conn.execute("UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])", acked)
            self.published += len(acked)
        if failure is not None:
            row, exc = failure
            raise RelayError(f"outbox row {row['id']} (event {row['event_id']}, topic {row['topic']}, "
                             f"key {row['key']}): {exc!r}") from exc
        return len(acked)
