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

Parked rows. A row the broker refuses for a permanent reason (too large for its topic, an invalid topic name, a
topic the cluster lacks and the registry does not know) is parked: it stays unpublished with ``parked_at`` and
``parked_reason``, the relay logs ``outbox relay: row parked`` and goes on with every other stream, while its own
stream's later rows wait behind it. An operator lists them (``flows outbox parked``, ``parked_rows``; the audit
service's ``flows_outbox_parked``), fixes the cause, then retries the row (``retry_parked``) or gives up on it
(``skip_parked``); each decision is an event of the row's stream ``outbox-row-<id>`` in the event store (who, when,
why), and NOTIFYs the relay, which reads the parked rows again.

The leader's connection (its lock, its LISTEN) goes back to the pool clean, or is terminated when it cannot be
cleaned (PostgreSQL down): see ``OutboxRelay._let_go``.

Consumer side. ``mark_processed`` records (consumer, ce_id) in the consumer's own transaction, the
one that holds its effects: a redelivered message finds its id and the consumer skips its effects.
Kafka delivers at least once; with this the system behaves exactly once.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    CorruptRecordException,
    InvalidTopicError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
    UnsupportedForMessageFormatError,
)

from contracts.audit import OutboxRowRetried, OutboxRowSkipped
from contracts.envelope import ce_time, to_kafka_headers
from services.runtime import tracing
from services.runtime.eventstore import (  # NOTIFY_CHANNEL: the appends' NOTIFY, the relay's LISTEN
    NOTIFY_CHANNEL,
    EventStore,
    NewEvent,
    StoredEvent,
)
from services.runtime.locks import RELAY_LOCK_KEY

# Unpublished rows in id order, except parked ones and the rows of a stream (key) behind a parked one; {also}: more
# rows to leave out.
# The rows the relay sends in their turn (alias o): unpublished, not parked, not behind a parked row of their stream
# (key). The ops figures' pending age (services.runtime.opsmetrics) reads the same set.
PENDING_WHERE = """o.published_at IS NULL AND o.parked_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.key = o.key AND p.parked_at IS NOT NULL
                  AND p.published_at IS NULL AND p.id < o.id)"""
_PENDING_ROWS = """
SELECT id, event_id, topic, key, headers, payload FROM outbox o
WHERE """ + PENDING_WHERE + """{also}
ORDER BY id LIMIT $1
"""
_PENDING = _PENDING_ROWS.format(also="")

# The acknowledged rows marked published. Its transaction commits without waiting for the WAL flush
# (set_config(..., true): that transaction only, never the session): a mark lost to a PostgreSQL crash only sends its
# rows again, which the relay already allows for (a crash between the ack and the mark; the consumers skip a
# redelivered ce_id), and every event the marks name was made durable by its own append's synchronous commit. A
# flushed mark was one more fsync per batch, two a small load (its Running and its Checked), taken on the same WAL
# as the load's own commits.
_MARK = ("UPDATE outbox SET published_at = now() "
         "FROM (SELECT set_config('synchronous_commit', 'off', true)) AS transaction_settings "
         "WHERE id = ANY({ids}::bigint[])")
_MARK_PUBLISHED = _MARK.format(ids="$1")
# The rows the previous pass sent ($2) marked in the statement that reads the next ones: a relay that keeps sending
# marks what it sent with its next read, one round trip a pass instead of two (see OutboxRelay.MARK_DELAY_S). The
# read does not see the mark (one snapshot): the marked rows are left out by id.
_MARK_AND_PENDING = (f"WITH marked AS ({_MARK.format(ids='$2')})"
                     + _PENDING_ROWS.format(also=" AND o.id <> ALL($2::bigint[])"))

# The streams (keys) with a parked row: their rows wait (see _PENDING_ROWS); a rare set, read when a relay takes the
# lead and when a parked row is retried or skipped.
_PARKED_KEYS = "SELECT DISTINCT key FROM outbox WHERE parked_at IS NOT NULL AND published_at IS NULL"
# What retry_parked and skip_parked NOTIFY: the relay reads the parked keys again.
PARKED_CHANGED = "parked"


# A row with one of these will fail the same way at every try: park it.
_PERMANENT = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError, InvalidTopicError,
              TopicAuthorizationFailedError, UnsupportedForMessageFormatError, CorruptRecordException,
              TypeError, ValueError)  # TypeError/ValueError: the row cannot be serialised
# What the broker answers for a record batch with a record over the topic's max.message.bytes (OutboxRelay._one_by_one)
_TOO_LARGE = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)
RETRY_CAP_S = 30.0
# aiokafka's default max_request_size, the relay's unless its producer_options say otherwise; and how long a parked
# row's reason waits for the topic's own limit (OutboxRelay._limits)
PRODUCER_MAX_REQUEST_SIZE = 1048576
LIMITS_TIMEOUT_S = 5.0
# Kafka's rule for topic names; aiokafka would wait for metadata of an invalid one until it times out.
_TOPIC_NAME = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")


def cloudevent_headers(*, event_id: uuid.UUID, type: str, time: datetime, key: str,
                       source: str) -> list[list[str]]:
    """The ce_* headers of one event, as JSON-friendly [name, value] pairs for its outbox row.

    The outbox rows themselves are written by ``EventStore.append`` in the statement that appends
    the events (one round trip, one transaction).
    """
    headers = to_kafka_headers(id=str(event_id), type=type, source=source, time=time, subject=key)
    return [[name, value.decode()] for name, value in headers]


def headers_json_for_append(events: Sequence[tuple[uuid.UUID, str]], *, time: datetime, key: str,
                            source: str, trace: Mapping[str, str] | None = None) -> list[str]:
    """The outbox headers (JSON text) of each (event id, type) of one append: ce_id and ce_type, then
    ``headers_tail``. The event store writes the same text in its statement (services.runtime.eventstore,
    ``_HEADERS``): an event type needs no JSON escaping (``EVENT_TYPE``), nor does a UUID."""
    tail = headers_tail(time=time, key=key, source=source, trace=trace)
    return [headers_text(event_id, type, tail) for event_id, type in events]


def headers_text(event_id: uuid.UUID, type: str, tail: str) -> str:
    """One outbox row's headers (JSON text): its ce_id and ce_type, then `tail` (``headers_tail``)."""
    return f'[["ce_id", "{event_id}"], ["ce_type", {json.dumps(type, ensure_ascii=False)}], {tail}'


def headers_tail(*, time: datetime, key: str, source: str, trace: Mapping[str, str] | None = None) -> str:
    """What the outbox headers of every event of one append share, as the end of their JSON text: every header but
    ce_id and ce_type, and the closing bracket.

    One append shares time, key, source and trace context (`trace`: traceparent/tracestate, sent as the
    CloudEvents distributed-tracing extension ce_traceparent/ce_tracestate): the envelope is built once per
    source (``_envelope_text``), and per append only its time, key and trace context are written into it (a hot
    path: every append, of one event or of a hundred).
    """
    before_time, before_key, after_key = _envelope_text(source)
    traced = "".join(f', {json.dumps([f"ce_{name}", value], ensure_ascii=False)}'
                     for name, value in (trace or {}).items())
    return (f'{before_time}["ce_time", "{ce_time(time)}"]{before_key}{json.dumps(key, ensure_ascii=False)}'
            f'{after_key}{traced}]')


_TIME_MARK = datetime(1, 1, 1, tzinfo=UTC)  # a time no event has: where the append's time goes
_KEY_MARK = "key-mark-8f0c2d6a"  # a key whose JSON is itself in quotes: where the append's key goes


@functools.lru_cache(maxsize=64)
def _envelope_text(source: str) -> tuple[str, str, str]:
    """The JSON of the headers every event from `source` shares (all but ce_id and ce_type), without its
    brackets, cut where the ce_time pair and the key (ce_subject's value) go: the envelope of
    ``cloudevent_headers``, built once per source. It was once per (key, source): every new aggregate (each load's
    new instance) missed that cache and built the envelope again, on every append of a load."""
    template = cloudevent_headers(event_id=uuid.UUID(int=0), type="-", time=_TIME_MARK, key=_KEY_MARK, source=source)
    shared = json.dumps([(name, value) for name, value in template if name not in ("ce_id", "ce_type")],
                        ensure_ascii=False)[1:-1]
    # Inside a JSON string a quote is escaped: this pair's text can only be the pair itself.
    before, mark, after = shared.partition(f'["ce_time", "{ce_time(_TIME_MARK)}"]')
    between, key_mark, after_key = after.partition(json.dumps(_KEY_MARK))
    if not mark or not key_mark or _KEY_MARK in before + between + after_key:
        raise AssertionError(f"the envelope of {source} has no ce_time or no single subject: {shared}")
    return before, between, after_key


# The dedup record of a message (true when it is new), with the parameters' places to fill: mark_processed's
# statement, also the first part of statements that do more in one round trip (services.loader.handlers._NEW_INSTANCE).
MARK_PROCESSED = ("INSERT INTO processed_message (consumer, message_id, processed_at) "
                  "VALUES ({consumer}, {message_id}, now()) "
                  "ON CONFLICT (consumer, message_id) DO NOTHING RETURNING true")


async def mark_processed(conn: asyncpg.Connection, consumer: str, message_id: str) -> bool:
    """True the first time ``consumer`` sees ``message_id``; False for a redelivery (skip the effects).

    Runs inside the caller's transaction so the mark and the effects commit or roll back together.
    A concurrent duplicate waits on the primary key until the first commits, then gets False.
    """
    if not conn.is_in_transaction():
        raise RuntimeError(f"mark_processed({consumer!r}, {message_id!r}) must run inside the transaction "
                           "that holds the consumer's effects")
    inserted = await conn.fetchval(MARK_PROCESSED.format(consumer="$1", message_id="$2"), consumer, message_id)
    return bool(inserted)


class RelayError(RuntimeError):
    """The broker refused an outbox row for a transient reason; the row stays unpublished and is retried."""

    def __init__(self, message: str, row: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.row = row  # the row that was not sent


# What aiokafka raises for a row whose topic the cluster does not have (the brokers never create one: deleted by hand):
# no metadata for it within its request timeout, or the broker's answer to a send on a topic gone meanwhile. Transient
# as far as aiokafka knows; the relay asks the cluster (OutboxRelay._topic_gone).
_TOPIC_UNKNOWN = (UnknownTopicOrPartitionError, KafkaTimeoutError)


def is_permanent(exc: BaseException) -> bool:
    """True when sending the row again cannot succeed: it is parked instead of retried."""
    return isinstance(exc, _PERMANENT)


async def parked_rows(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    """The parked rows, oldest first: id, event, topic, key, reason, when, and how many rows wait behind."""
    rows = await pool.fetch("""
        SELECT p.id, p.event_id, p.topic, p.key, p.parked_reason, p.parked_at,
               (SELECT count(*) FROM outbox w WHERE w.key = p.key AND w.id > p.id AND w.published_at IS NULL)
                   AS waiting
        FROM outbox p WHERE p.parked_at IS NOT NULL AND p.published_at IS NULL ORDER BY p.id""")
    return [dict(row) for row in rows]


# An operator's decision about a parked row (`flows outbox retry|skip`) is an event of the row's own stream in the event
# store, appended in the transaction that changes the row (hash-chained, covered by the checkpoints): who, when, why.
# The row itself goes 7 days after it was published or skipped (services.runtime.housekeeping); the record stays.
DECISION_STREAM_PREFIX = "outbox-row-"
RETRIED, SKIPPED = "ops.outbox-row-retried", "ops.outbox-row-skipped"


class NotParked(ValueError):
    """The row named is not parked (unknown, already published, skipped, or waiting to be sent): nothing was done."""


def decision_stream(row_id: int) -> str:
    return f"{DECISION_STREAM_PREFIX}{row_id}"


async def retry_parked(pool: asyncpg.Pool, row_id: int, *, by: str, source: str = "/flows/cli") -> OutboxRowRetried:
    """Unparks a row (after its cause was fixed, e.g. the topic's limit raised): the relay sends it again, first of its
    stream. Records who did it (an ``ops.outbox-row-retried`` event); NotParked when the row is not parked."""
    async with pool.acquire() as conn, conn.transaction():
        row = await _parked_for_update(conn, row_id)
        fact = OutboxRowRetried(row=row_id, event_id=str(row["event_id"]), topic=row["topic"], key=row["key"],
                                parked_at=row["parked_at"], parked_reason=row["parked_reason"], by=by)
        await conn.execute("UPDATE outbox SET parked_at = NULL, parked_reason = NULL WHERE id = $1", row_id)
        await _record(conn, pool, source, RETRIED, fact.model_dump(mode="json"), row_id, by)
        await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, PARKED_CHANGED)  # delivered at the commit
    return fact


async def skip_parked(pool: asyncpg.Pool, row_id: int, *, reason: str, by: str,
                      source: str = "/flows/cli") -> OutboxRowSkipped:
    """Gives up on a parked row: it is never published (the event stays in the store), its stream goes on. Records who
    did it and why (an ``ops.outbox-row-skipped`` event); ValueError for an empty reason, NotParked when the row is not
    parked. The row keeps its parked_at/parked_reason and gets skipped_at."""
    if not reason.strip():
        raise ValueError("skip: --reason is empty; say why the row is given up on (it will never be published)")
    async with pool.acquire() as conn, conn.transaction():
        row = await _parked_for_update(conn, row_id)
        fact = OutboxRowSkipped(row=row_id, event_id=str(row["event_id"]), topic=row["topic"], key=row["key"],
                                parked_at=row["parked_at"], parked_reason=row["parked_reason"], reason=reason, by=by)
        await conn.execute("UPDATE outbox SET published_at = now(), skipped_at = now() WHERE id = $1", row_id)
        await _record(conn, pool, source, SKIPPED, fact.model_dump(mode="json"), row_id, by)
        await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, PARKED_CHANGED)
    return fact


async def _parked_for_update(conn: asyncpg.Connection, row_id: int) -> asyncpg.Record:
    """The parked row `row_id`, locked until the caller's transaction ends (a second operator's retry or skip waits,
    then finds it no longer parked); NotParked, saying what the row is, when it is not parked."""
    row = await conn.fetchrow("SELECT id, event_id, topic, key, parked_at, parked_reason, published_at, skipped_at "
                              "FROM outbox WHERE id = $1 FOR UPDATE", row_id)
    if row is None:
        raise NotParked(f"there is no outbox row {row_id}: `flows outbox parked` lists the parked rows (a row is "
                        "deleted 7 days after it was published or skipped; `flows outbox show` still shows the "
                        "decisions about it)")
    if row["skipped_at"] is not None:
        raise NotParked(f"outbox row {row_id} is not parked: it was skipped at {_utc(row['skipped_at'])} "
                        f"(`flows outbox show {row_id}` says by whom and why)")
    if row["published_at"] is not None:
        raise NotParked(f"outbox row {row_id} is not parked: it was published at {_utc(row['published_at'])}")
    if row["parked_at"] is None:
        raise NotParked(f"outbox row {row_id} is not parked: it waits for the relay, which sends it in its turn "
                        "(`flows outbox parked` lists the parked rows)")
    return row


async def _record(conn: asyncpg.Connection, pool: asyncpg.Pool, source: str, type: str, data: dict[str, Any],
                  row_id: int, by: str) -> None:
    stream = decision_stream(row_id)
    await EventStore(pool, source=source).append(stream, [NewEvent(type, data, actor=by)], expected_version=None,
                                                 key=stream, conn=conn, publish=False)


async def decisions(pool: asyncpg.Pool, row_id: int) -> list[StoredEvent]:
    """The operators' decisions about one outbox row (retries, a skip), oldest first; they outlive the row."""
    return await EventStore(pool, source="/flows/cli").read_stream(decision_stream(row_id))


async def outbox_row(pool: asyncpg.Pool, row_id: int) -> dict[str, Any] | None:
    """One outbox row as an operator reads it (no payload: its size), with how many rows of its stream wait behind
    it; None when there is no such row (never written, or deleted once published or skipped)."""
    row = await pool.fetchrow("""
        SELECT o.id, o.event_id, o.topic, o.key, o.created_at, o.parked_at, o.parked_reason, o.published_at,
               o.skipped_at, octet_length(o.payload) AS payload_bytes,
               (SELECT count(*) FROM outbox w WHERE w.key = o.key AND w.id > o.id AND w.published_at IS NULL)
                   AS waiting
        FROM outbox o WHERE o.id = $1""", row_id)
    return None if row is None else dict(row)


def _utc(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


class OutboxRelay:
    """Publishes the outbox to Kafka; run one or more per database, only the leader sends.

    ``after_ack`` is awaited with the acknowledged row ids before they are marked: the window in
    which a crash produces duplicates (tests use it to kill the relay there).

    The acknowledged rows are marked by the next pass's read of the outbox (one statement), which comes with the
    next NOTIFY or at most ``MARK_DELAY_S`` later; at a stop they are marked before the relay lets go. The window
    in which a crash resends rows is that much longer; nothing else changes (every event was made durable by its
    own append, and the consumers skip a redelivered ce_id).

    Offered rows. A one-event append offers its outbox row to the relay of its process (`offer`, wired by
    services.runtime.host.serve) and its statement NOTIFYs the row's id, which PostgreSQL delivers once it committed,
    in commit order. A pass sends the rows of the notifications since the last one as offered, without reading the
    outbox, when every notification names a row offered here, from the connection that wrote it (a NOTIFY, which any
    session can send, only names a row; what is sent is what the append offered), the relay is caught up (its last
    read found fewer rows than a batch and no send failed since), no row's stream has a parked row, and the marks are
    not due. A stream's rows then go in their order as they did (they commit in it, and an earlier row is either
    named by an earlier notification or was committed before the last read, which found and sent it). Anything else
    (an append of several events, one from another process, too many notifications waiting) and the pass reads the
    outbox as before, which also covers every row those notifications named.
    """

    MARK_DELAY_S = 0.1
    OFFERS_KEPT = 10_000  # offered rows awaiting their NOTIFY (a rolled-back append's never comes): the oldest go first
    WAKES_KEPT = 10_000  # notifications kept between two passes (Kafka down: none is sent); past that, the pass reads

    def __init__(self, pool: asyncpg.Pool, bootstrap_servers: str, *, batch_size: int = 500,
                 poll_interval: float = 2.0, retry_delay: float = 1.0,
                 after_ack: Callable[[list[int]], Awaitable[None]] | None = None,
                 producer_options: dict[str, Any] | None = None, logger: Any = None,
                 provision: Callable[[str], Awaitable[bool]] | None = None) -> None:
        self._pool = pool
        self._provision = provision  # a topic the cluster lacks -> provisioned? (see _topic_gone)
        self._bootstrap_servers = bootstrap_servers
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._retry_delay = retry_delay
        self._after_ack = after_ack
        self._producer_options = producer_options or {}
        self._log = logger or structlog.get_logger("services.runtime.outbox")
        self.is_leader = False
        self.published = 0  # rows marked published by this relay
        self.parked = 0  # rows parked by this relay
        self._unmarked: list[int] = []  # acknowledged, to be marked by the next read (or at the stop)
        self._unmarked_since = 0.0  # monotonic time of the oldest of them
        self._offers: OrderedDict[str, tuple[int, dict[str, Any]]] = OrderedDict()  # event id -> (backend pid, row)
        self._wakes: list[tuple[int, str]] = []  # (sender's backend pid, payload) of the NOTIFYs since the last pass
        self._wakes_dropped = False
        self._parked_changed = False
        self._caught_up = False
        self._read_ids: tuple[frozenset[int], frozenset[int]] = (frozenset(), frozenset())  # the last two reads'
        self._parked_keys: set[str] = set()
        self.sent_offered = 0  # rows sent as offered, without a read
        self.reads = 0  # passes that read the outbox

    def offer(self, event_id: str, backend_pid: int, row: dict[str, Any]) -> None:
        """A one-event append's outbox row but its id (EventStore.offers), to send as is once its NOTIFY comes."""
        if not self.is_leader:
            return
        self._offers[event_id] = (backend_pid, row)
        if len(self._offers) > self.OFFERS_KEPT:
            self._offers.popitem(last=False)

    def _offered_rows(self) -> list[dict[str, Any]] | None:
        """The rows the notifications since the last pass named, as offered; None: this pass reads the outbox."""
        wakes, self._wakes = self._wakes, []
        dropped, self._wakes_dropped = self._wakes_dropped, False
        rows: list[dict[str, Any]] | None = [] if wakes and self._caught_up and not dropped else None
        if self._unmarked and (len(self._unmarked) >= self._batch_size
                               or time.monotonic() - self._unmarked_since >= self.MARK_DELAY_S):
            rows = None  # the marks are due: the read marks them
        for pid, payload in wakes:  # every offer named goes, whatever this pass does
            number, _, event_id = payload.partition(" ")  # "<row id> <event id>" (eventstore._NAMED_WAKE)
            row_id = int(number) if number.isascii() and number.isdigit() else None
            offered = self._offers.pop(event_id, None) if row_id is not None else None
            if rows is None or (row_id is not None and (row_id in self._read_ids[0] or row_id in self._read_ids[1])):
                continue  # reading anyway, or read (and sent) already
            if offered is None or offered[0] != pid or offered[1]["key"] in self._parked_keys:
                rows = None
                continue
            rows.append({**offered[1], "id": row_id})
        return rows

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
            self._wakes, self._wakes_dropped, self._caught_up = [], False, False
            self._offers.clear()

            def on_notify(_conn: object, pid: int, _channel: str, payload: str) -> None:
                if len(self._wakes) < self.WAKES_KEPT:
                    self._wakes.append((pid, payload))
                else:
                    self._wakes_dropped = True
                if payload == PARKED_CHANGED:
                    self._parked_changed = True
                wake.set()

            await conn.add_listener(NOTIFY_CHANNEL, on_notify)
            await self._read_parked_keys(conn)

            async def stop_wakes() -> None:  # a stop ends the wait for a NOTIFY: the loop then sees it
                await stop.wait()
                wake.set()

            # One task for the relay's lifetime: a wait for a NOTIFY (two a small load, its Running and its Checked)
            # was two tasks made, raced by asyncio.wait and cancelled (more loop passes than the wait itself).
            producer = AIOKafkaProducer(bootstrap_servers=self._bootstrap_servers, enable_idempotence=True,
                                        acks="all", **self._producer_options)
            failures = 0
            stopper = asyncio.create_task(stop_wakes())
            try:
                await producer.start()
                while not stop.is_set():
                    wake.clear()  # before reading: a NOTIFY during the pass triggers another one
                    try:
                        if self._parked_changed:
                            self._parked_changed = False
                            await self._read_parked_keys(conn)
                        sent = await self._publish_batch(conn, producer, self._offered_rows())
                        failures = 0
                    except RelayError as exc:
                        self._caught_up = False  # a row not sent: the next pass reads
                        if isinstance(exc.__cause__, _TOPIC_UNKNOWN) and await self._topic_gone(conn, exc.row):
                            # provisioned again or the row parked: a new producer, whose metadata and idempotence
                            # state know nothing of the topic that went away
                            await producer.stop()
                            producer = AIOKafkaProducer(bootstrap_servers=self._bootstrap_servers,
                                                        enable_idempotence=True, acks="all", **self._producer_options)
                            await producer.start()
                            failures = 0
                            continue
                        # Transient (broker unreachable, leader moving): capped exponential backoff,
                        # one log line per try.
                        delay = min(self._retry_delay * 2 ** failures, RETRY_CAP_S)
                        failures += 1
                        self._log.error("outbox relay: publish failed, will retry", error=str(exc)[:500],
                                        retry_in_s=delay)
                        sent = 0
                        with suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), delay)
                    if sent == self._batch_size:
                        continue  # more may be waiting: no sleep
                    # a NOTIFY, the stop (stop_wakes), the poll interval, or the mark of what the pass sent
                    wait = min(self.MARK_DELAY_S, self._poll_interval) if self._unmarked else self._poll_interval
                    with suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await wake.wait()
            finally:
                self.is_leader = False
                stopper.cancel()
                try:
                    await self._mark_sent(conn)
                finally:  # also when cancelled while marking: the connection is never given back half cleaned
                    try:
                        await producer.stop()
                    finally:
                        await self._let_go(conn, on_notify)

    async def _let_go(self, conn: asyncpg.Connection, on_notify: Callable[..., None]) -> None:
        """Gives the leader's connection back clean: no listener, no leader lock. When that cannot be done (the
        connection lost or aborted with PostgreSQL down, the clean-up failing or cancelled), the connection is
        terminated instead, so the pool replaces it: released as it is, it would keep the listener (asyncpg warns
        "... released to the pool but has 1 active notification listener") and maybe the session's leader lock.
        A connection that asyncpg aborted by itself is closed but still holds the listener: remove_listener does
        nothing on it, which is why a closed connection is never taken for a clean one."""
        problem = "the connection was lost"
        try:
            if not conn.is_closed():
                await conn.remove_listener(NOTIFY_CHANNEL, on_notify)
                await conn.execute("SELECT pg_advisory_unlock($1)", RELAY_LOCK_KEY)
                if not conn.is_closed():
                    problem = ""
        except Exception as exc:  # PostgresError, InterfaceError, InternalClientError, OSError, TimeoutError
            problem = f"{type(exc).__name__}: {exc}"[:500]
        finally:
            if problem:  # also when cancelled mid-way (problem still set): never released half cleaned
                conn.terminate()
                self._log.warning("outbox relay: its connection could not be cleaned up; terminated, the pool "
                                  "replaces it", error=problem)

    async def _read_parked_keys(self, conn: asyncpg.Connection) -> None:
        self._parked_keys = {row["key"] for row in await conn.fetch(_PARKED_KEYS)}

    async def _mark_sent(self, conn: asyncpg.Connection) -> None:
        """Marks what was sent since the last read, as the relay stops; when that cannot be done, it is sent again."""
        if not self._unmarked:
            return
        try:
            if not conn.is_closed():
                await conn.execute(_MARK_PUBLISHED, self._unmarked)
                self.published += len(self._unmarked)
        except Exception as exc:  # PostgresError, InterfaceError, OSError, TimeoutError: the rows go again
            self._log.warning("outbox relay: rows sent but not marked; they are sent again", rows=len(self._unmarked),
                              error=f"{type(exc).__name__}: {exc}"[:500])
        self._unmarked = []

    async def _publish_batch(self, conn: asyncpg.Connection, producer: AIOKafkaProducer,
                             offered: list[dict[str, Any]] | None = None) -> int:
        """Sends one batch, `offered` or else what a read of the outbox finds; returns how many rows it sent (to be
        marked by a later pass) or parked (0: nothing to do). A read marks what earlier passes sent."""
        rows: Sequence[Mapping[str, Any]]
        if offered is not None:
            rows = offered
        else:
            if self._unmarked:
                rows = await conn.fetch(_MARK_AND_PENDING, self._batch_size, self._unmarked)
                self.published += len(self._unmarked)
                self._unmarked = []
            else:
                rows = await conn.fetch(_PENDING, self._batch_size)
            self.reads += 1
            self._read_ids = (self._read_ids[1], frozenset(row["id"] for row in rows))
            self._caught_up = len(rows) < self._batch_size  # every pending row is in this read (or was sent)
        if not rows:
            return 0
        # send() only enqueues (in order); the futures resolve when the broker acknowledged. A row that
        # fails at send() (too large for the producer, not serialisable) is parked at once, and the
        # rows of its stream behind it in this batch are not sent.
        sent: list[tuple[Mapping[str, Any], Any]] = []
        messages: dict[int, dict[str, Any]] = {}  # row id -> what was sent (key, value, headers)
        parked: dict[int, BaseException] = {}
        blocked: set[str] = set()
        spans: dict[int, Any] = {}  # row id -> its relay span (rows that carry a trace context)
        for row in rows:
            if row["key"] in blocked:
                continue
            try:
                if not _TOPIC_NAME.match(row["topic"]):
                    raise InvalidTopicError(f"{row['topic'][:300]!r} is not a valid Kafka topic name")
                headers = orjson.loads(row["headers"])  # [[name, value], ...]: strings only
                incoming = {name[3:]: value for name, value in headers if name in ("ce_traceparent", "ce_tracestate")}
                if incoming:  # the relay's own span, child of the append's, whose context goes on in the headers
                    span = tracing.tracer().start_span(
                        f"outbox publish {row['topic']}", context=tracing.extract(incoming),
                        kind=tracing.trace.SpanKind.PRODUCER,
                        attributes={"messaging.system": "kafka", "messaging.destination.name": row["topic"],
                                    "messaging.message.id": str(row["event_id"]), "outbox.row": row["id"],
                                    "messaging.kafka.message.key": row["key"]})
                    spans[row["id"]] = span
                    headers = tracing.trace_headers(headers, span.get_span_context())
                message = {"key": row["key"].encode(), "value": row["payload"].encode(),
                           "headers": [(name, value.encode()) for name, value in headers]}
                messages[row["id"]] = message
                ack = await producer.send(row["topic"], **message)
            except Exception as exc:
                if not is_permanent(exc):
                    raise RelayError(f"outbox row {row['id']} (event {row['event_id']}, topic {row['topic']}, "
                                     f"key {row['key']}): {exc!r}"[:2000], row) from exc
                parked[row["id"]] = exc
                blocked.add(row["key"])
                continue
            sent.append((row, ack))
        try:
            results = await asyncio.gather(*(ack for _, ack in sent), return_exceptions=True)
            results = await self._one_by_one(producer, sent, messages, results)
        finally:
            for row_id, span in spans.items():
                error = parked.get(row_id)
                if error is not None:
                    span.set_status(tracing.trace.StatusCode.ERROR, f"parked: {type(error).__name__}")
                span.end()
        acked: list[int] = []
        failure: tuple[Mapping[str, Any], BaseException] | None = None
        for (row, _), result in zip(sent, results, strict=True):
            if isinstance(result, BaseException):
                if is_permanent(result) and row["key"] not in blocked:
                    parked[row["id"]] = result
                    blocked.add(row["key"])
                    continue
                if row["key"] in blocked:
                    continue  # behind a parked row of its stream: it waits
                failure = (row, result)
                break  # mark only the prefix: later rows are resent after the failed one
            acked.append(row["id"])
        if acked and self._after_ack is not None:
            await self._after_ack(acked)
        if parked:
            # With a parked row, the batch's outcome at once and in one transaction: nobody sees the acked rows
            # published before the bad row of the same batch is parked (it would look neither published nor parked).
            async with conn.transaction():
                if acked:
                    await conn.execute(_MARK_PUBLISHED, acked)
                for row in rows:
                    if row["id"] in parked:
                        await self._park(conn, row, parked[row["id"]])
            self.published += len(acked)
        else:
            if acked and not self._unmarked:
                self._unmarked_since = time.monotonic()
            self._unmarked += acked  # marked by a later pass's read (or at the stop)
        if offered is not None:
            self.sent_offered += len(acked)
        if failure is not None:
            failed, error = failure
            raise RelayError(f"outbox row {failed['id']} (event {failed['event_id']}, topic {failed['topic']}, "
                             f"key {failed['key']}): {error!r}"[:2000], failed) from error
        return len(acked) + len(parked)

    @staticmethod
    async def _one_by_one(producer: AIOKafkaProducer, sent: list[tuple[Mapping[str, Any], Any]],
                          messages: dict[int, dict[str, Any]], results: list[Any]) -> list[Any]:
        """The results of a batch, with the rows the broker refused as too large sent again one by one. The broker
        refuses a produce request's record batch whole when one record in it is over the topic's max.message.bytes,
        and aiokafka does not split it: every row of that partition's batch came back refused, and each was parked for
        another row's size, its own stream held behind it. Sent alone, in their order, only a row too large by itself
        is refused again; a stream's rows after a refused one are not sent (they wait behind it, parked)."""
        refused = [i for i, result in enumerate(results) if isinstance(result, _TOO_LARGE)]
        if len(refused) < 2:
            return results
        results = list(results)
        held: set[str] = set()
        for i in refused:
            row = sent[i][0]
            if row["key"] in held:
                continue
            try:
                results[i] = await producer.send_and_wait(row["topic"], **messages[row["id"]])
            except Exception as exc:
                results[i] = exc
                held.add(row["key"])
        return results

    async def _topic_gone(self, conn: asyncpg.Connection, row: Mapping[str, Any]) -> bool:
        """A row was not sent for want of its topic's metadata: when the cluster has no such topic (deleted by hand),
        a registry topic is provisioned again (`provision`, services.runtime.topics_admin) and any other has the row
        parked; True then. False when the topic exists (the broker is slow, a leader moves: the backoff retries), when
        the cluster cannot say, and without `provision`."""
        topic = row["topic"]
        if self._provision is None:
            return False
        from services.runtime.topics_admin import topic_exists

        try:
            if await topic_exists(self._bootstrap_servers, topic):
                return False
            provisioned = await self._provision(topic)
        except Exception as exc:  # Kafka unreachable, the admin request refused: the backoff retries the row
            self._log.error("outbox relay: could not check or provision a topic", topic=topic, error=repr(exc)[:500])
            return False
        if provisioned:
            self._log.error("outbox relay: topic missing on the cluster, provisioned again from the registry",
                            topic=topic, row=row["id"])
            return True
        await self._park(conn, row, UnknownTopicOrPartitionError(
            f"the topic {topic!r} does not exist on the cluster and is not in the registry"))
        return True

    async def _limits(self, row: Mapping[str, Any], exc: BaseException) -> str:
        """For a row too large: the two limits it may be over, so that the operator knows which to raise before
        retrying it (`flows outbox retry`): the topic's max.message.bytes (the broker refuses a record over it) and
        the relay producer's max_request_size (aiokafka refuses it before sending). Best effort: '' when the cluster
        does not answer within a few seconds (the reason is written without them)."""
        if not isinstance(exc, _TOO_LARGE):
            return ""
        from services.runtime.topics_admin import topic_setting

        producer = int(self._producer_options.get("max_request_size", PRODUCER_MAX_REQUEST_SIZE))
        try:
            async with asyncio.timeout(LIMITS_TIMEOUT_S):
                topic = await topic_setting(self._bootstrap_servers, row["topic"], "max.message.bytes")
        except Exception as error:  # Kafka unreachable, the request refused: said without the topic's limit
            self._log.warning("outbox relay: the topic's size limit is unknown", topic=row["topic"],
                              error=repr(error)[:300])
            topic = None
        said = f"; the topic's max.message.bytes is {topic}" if topic is not None else ""
        return f"{said}; the relay's producer sends at most {producer} bytes a request (max_request_size)"

    async def _park(self, conn: asyncpg.Connection, row: Mapping[str, Any], exc: BaseException) -> None:
        self._parked_keys.add(row["key"])
        size = len(row["payload"].encode(errors="replace"))
        reason = f"{type(exc).__name__}: {str(exc)[:500]} (payload {size} bytes{await self._limits(row, exc)})"
        await conn.execute("UPDATE outbox SET parked_at = now(), parked_reason = $2 WHERE id = $1", row["id"], reason)
        self.parked += 1
        self._log.error("outbox relay: row parked; its stream waits, the others go on", row=row["id"],
                        event_id=str(row["event_id"]), topic=row["topic"], key=row["key"][:200], reason=reason)
