"""Consuming a topic in batches, with the guarantees of `services.runtime.broker.consume`.

For volume (source intake: millions of records a month) one transaction per message is the cost to
avoid. `consume_batches` polls with aiokafka `getmany` (no auto-commit), parses every record with the
same verdict as the `broker.parse` a single-message consumer uses (`broker.parse_checked`: the
same checks and contract, the body validated from its bytes), and hands the batch to a sink that stores it in
ONE transaction; the offsets are committed only after that transaction, so a process killed between
the two gets the batch again, and the sink's dedup (`Batch.claim`, the ce_ids in processed_message in
the same transaction) makes the redelivery change nothing.

The guarantees of issue 10, kept:
- malformed (key, headers, body, size, depth, types, ce_type): to `<topic>.dlq` with the original bytes
  and a bounded reason, BEFORE the transaction that records it (`Malformed.key` in processed_message):
  a crash in between dead-letters it again (at least once, never lost); a redelivery after the
  transaction does not (its key is known).
- an outage (PostgreSQL, Kafka) is waited out with capped exponential backoff and a probe
  (`broker.Outage`); nothing is dead-lettered for it. A wait past OUTAGE_WAIT_PER_DELIVERY_S seeks back
  to the batch's first offsets and polls again, so the consumer keeps its group membership.
- a batch that fails for a reason that is not an outage is split: its messages are stored one by one,
  each with `max_attempts`, and only the one that keeps failing is dead-lettered. One bad message never
  blocks a partition.

`FLOWS_BATCH_PAUSE_BEFORE_COMMIT_S` (tests only): sleep that long between the transaction and the
commit, after logging `batch.stored`: the window a kill -9 test aims at.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import gc
import hashlib
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from contracts.envelope import envelope_from_text
from contracts.topics import Topic
from services.runtime.broker import (
    LOG_REASON_MAX,
    Decoder,
    Incoming,
    Outage,
    Poison,
    Probe,
    _SeekBack,
    bounded,
    dead_letter_headers,
    dead_letter_producer,
    parse_checked,
    wait_out,
)
from services.runtime.kafkarecords import ISOLATION_LEVEL
from services.runtime.logging import get_logger

PAUSE_ENV = "FLOWS_BATCH_PAUSE_BEFORE_COMMIT_S"
DEFAULT_MAX_RECORDS = 5000
# Parsing a batch is CPU work on the event loop that also sends the group heartbeats: it yields every
# YIELD_EVERY records, and the session allows a slow (shared, loaded) machine 30 s, so a busy consumer
# is not taken for a dead one (its uncommitted batch would then be fetched again).
YIELD_EVERY = 100
SESSION_TIMEOUT_MS = 30_000
# While a batch is being stored, the next poll waits at most this long for records: an idle topic does not
# hold back the commit of what is stored.
PIPELINED_POLL_MS = 20


GC_THRESHOLDS = (50_000, 20, 100)  # the young generation's is the least: see gc_young_threshold
# Objects the collector tracks that a polled, parsed or storing batch keeps alive, per record: ~33 at the generator's
# mix (records, their header lists, Valid tuples, rows until the collector untracks them); twice that, for margin.
GC_TRACKED_PER_RECORD = 70


def gc_young_threshold(max_records: int) -> int:
    """Allocations between young collections: more than the batches in flight keep alive (up to three: polled,
    parsed, being stored; bench/intake.py at 5,000 a batch: a steady ~167,000 tracked objects), so that a young
    collection does not walk them batch after batch. At 50,000 one came at every batch and walked them: 39
    collections of ~14 ms in a bench run of 200,000 messages (gc.callbacks), none at 350,000."""
    return max(GC_THRESHOLDS[0], GC_TRACKED_PER_RECORD * max_records)


def tune_gc(max_records: int = DEFAULT_MAX_RECORDS) -> None:
    """For a process that consumes in batches. A batch is some 100,000 small objects (records, envelopes,
    payload models) that live until it is stored, none of them in a cycle: reference counting frees them. With
    the default thresholds the cyclic collector walked them again every 700 allocations, and each batch
    promoted into the old generation set off full collections (bench/intake.py: ~10 us a message, an eighth
    of the Python work). What the process holds by now (modules, contract schemas) is frozen: never walked
    again; young collections come after `gc_young_threshold(max_records)` allocations. Cycles are still
    collected, later (at most that many objects' worth of cyclic garbage waits for it). The memory a batch frees is
    kept for the next (`keep_freed_memory`)."""
    gc.freeze()
    gc.set_threshold(gc_young_threshold(max_records), *GC_THRESHOLDS[1:])
    keep_freed_memory()


# glibc's mallopt parameters (malloc.h) and the sizes set: see keep_freed_memory.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
MALLOC_KEEP_BYTES = 128 * 1024 * 1024
MALLOC_TOP_PAD_BYTES = 64 * 1024 * 1024
MALLOC_MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024


def keep_freed_memory() -> bool:
    """glibc's malloc keeps what a batch freed for the next one instead of giving it back to the system at once.

    A process that consumes in batches frees megabytes at every batch (the fetched record batches, the values,
    the COPY buffers) and allocates them again for the next one. By default glibc gives a freed block of more than
    128 KB back (munmap), and trims the heap's top past 128 KB free: the next batch's memory is then new to the
    process, and the first touch of each new 4 KB page is a page fault: ~4 us of CPU each on the virtual
    machines measured (a loader of 200,000 messages: 86,000-117,000 faults, 44,500-56,000 with this). Here
    blocks up to 32 MB come from the heap, which grows 64 MB at a time and is trimmed only past 128 MB free: the
    process keeps at most that much it does not use. Nothing outside glibc (musl, macOS): False, no change."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all([mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD_BYTES), mallopt(_M_TOP_PAD, MALLOC_TOP_PAD_BYTES),
                mallopt(_M_TRIM_THRESHOLD, MALLOC_KEEP_BYTES)])


class Valid(NamedTuple):
    """A message that parsed: its payload (the model, or the sink's decoder's value) and what a handler knows
    about it (`incoming`). A tuple with the envelope checked but built only when asked for: a batch holds
    thousands, and a sink mostly reads `message_id`.

    What the record itself holds is not kept a second time: the key and the headers as text are read again from
    `raw` when asked for (the record is kept anyway, for a dead letter). A batch's messages live until it is
    stored, a batch later: the fewer objects each keeps, the fewer the process touches again (memory that left
    the CPU's caches) to store and free them. The decoded headers were 8 of a message's ~33 objects."""

    topic: Topic
    raw: Any
    message_id: str  # the envelope's ce_id
    time: datetime  # the envelope's time
    payload: Any

    @property
    def key(self) -> str | None:
        return None if self.raw.key is None else self.raw.key.decode()

    @property
    def headers(self) -> dict[str, str]:
        """The envelope's headers as text, checked (broker.parse_checked read them so)."""
        return {name: value.decode() if value else "" for name, value in self.raw.headers or ()}

    @property
    def incoming(self) -> Incoming:
        return Incoming(envelope_from_text(self.headers, self.time), self.key, self.topic.name, self.raw.partition,
                        self.raw.offset)


@dataclass(frozen=True)
class Malformed:
    """A message that did not parse; `data` is its JSON body when it had one (for a rejection event)."""

    topic: Topic
    raw: Any
    reason: str
    data: Any
    record_id: str | None

    @property
    def key(self) -> str:
        """Its dedup key: it may have no ce_id, so where it was and a digest of its bytes."""
        digest = hashlib.sha256(self.raw.value or b"").hexdigest()[:16]
        return f"dlq:{self.raw.topic}/{self.raw.partition}/{self.raw.offset}/{digest}"


@dataclass
class Batch:
    consumer: str  # the processed_message consumer name: the group id
    valid: list[Valid] = field(default_factory=list)
    malformed: list[Malformed] = field(default_factory=list)
    # (topic, partition) -> the highest offset in this batch
    last_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    # (topic, partition) -> how many of this batch's messages it holds, counted by the parse (`per_partition`)
    counts: dict[tuple[str, int], int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.valid) + len(self.malformed)

    def per_partition(self) -> dict[tuple[str, int], int]:
        """(topic, partition) -> how many of this batch's messages it holds. Counted once a message by the parse
        (a dict update beside the offset's), not by a pass over the batch's thousands of messages again (~1 us a
        message); counted here for a batch made otherwise."""
        if sum(self.counts.values()) != len(self):
            self.counts = dict(per_partition(self.valid, self.malformed))
        return self.counts

    async def claim(self, conn: asyncpg.Connection) -> tuple[list[Valid], list[Malformed]]:
        """Records every message of the batch as processed (inside the caller's transaction) and returns those
        seen for the first time: the others are redeliveries."""
        if not conn.is_in_transaction():
            raise RuntimeError("Batch.claim must run inside the transaction that holds the batch's effects")
        keys = [v.message_id for v in self.valid] + [m.key for m in self.malformed]
        consumer = self.consumer
        if len(set(keys)) == len(keys):
            # The common batch (every key new, none twice) is recorded by a COPY: a plain insertion, where the
            # statement below inserts each key speculatively (ON CONFLICT) and aggregates what it inserted, nearly
            # twice the time (5,000 keys: 37-44 ms against 73, with the commit). A key recorded before fails the
            # COPY, in a savepoint of its own: the statement then says which keys are new, as for any batch.
            try:
                async with conn.transaction():
                    await conn.copy_records_to_table("processed_message", columns=["consumer", "message_id"],
                                                     records=[(consumer, k) for k in keys])
                return list(self.valid), list(self.malformed)
            except asyncpg.UniqueViolationError:
                pass
        # One row: NULL when every key was recorded now (none seen before, none twice); else the keys recorded now.
        claimed = await conn.fetchval(
            "WITH claimed AS (INSERT INTO processed_message (consumer, message_id, processed_at) "
            "SELECT $1, k, now() FROM unnest($2::text[]) AS k "  # a key twice: DO NOTHING skips the second
            "ON CONFLICT (consumer, message_id) DO NOTHING RETURNING message_id) "
            "SELECT CASE WHEN count(*) = $3 THEN NULL ELSE coalesce(array_agg(message_id), '{}') END FROM claimed",
            self.consumer, keys, len(keys))
        if claimed is None:
            return list(self.valid), list(self.malformed)
        fresh = set(claimed)
        valid: list[Valid] = []
        for v in self.valid:  # the same ce_id twice in one batch: the first is the message, the rest copies
            if v.message_id in fresh:
                fresh.discard(v.message_id)
                valid.append(v)
        return valid, [m for m in self.malformed if m.key in fresh]


def per_partition(valid: Sequence[Valid], malformed: Sequence[Malformed]) -> collections.Counter[tuple[str, int]]:
    """How many of these messages each (topic, partition) holds."""
    counts = collections.Counter((v.topic.name, v.raw.partition) for v in valid)
    counts.update((m.topic.name, m.raw.partition) for m in malformed)
    return counts


def split(batch: Batch) -> list[Batch]:
    """`batch` as one batch per message, in offset order within each partition (a source record's messages share
    its key, hence its partition: the later still comes later), each naming its own offset in `last_offsets`."""
    singles = [((v.topic.name, v.raw.partition, v.raw.offset), Batch(batch.consumer, valid=[v])) for v in batch.valid]
    singles += [((m.topic.name, m.raw.partition, m.raw.offset), Batch(batch.consumer, malformed=[m]))
                for m in batch.malformed]
    singles.sort(key=lambda s: s[0])
    for (topic, partition, offset), single in singles:
        single.last_offsets[(topic, partition)] = offset
    return [single for _, single in singles]


Sink = Callable[[Batch], Awaitable[None]]
# A sink may also have a method `decoder(topic) -> broker.Decoder | None`: how it wants that topic's valid
# bodies (a row, say) instead of the payload model; `Valid.payload` is then the decoder's value.


@dataclass
class BatchConsumer:
    """`run(stop)` is a service loop (services.runtime.host.serve)."""

    bootstrap: list[str]
    topics: Sequence[Topic]
    group_id: str
    sink: Sink
    pool: asyncpg.Pool
    probe: Probe | None = None
    max_attempts: int = 3
    max_records: int = DEFAULT_MAX_RECORDS
    retry_delay: float = 0.2
    # The name its messages are recorded under in processed_message (default: the group id). A service's
    # fixed name, so that a consumer in another group (a test's) still knows what was processed.
    dedup_as: str | None = None

    def __post_init__(self) -> None:
        self.log = get_logger(self.group_id)
        self.outage = Outage(self.log, f"dependencies of {self.group_id}", self.probe)
        self._by_name = {t.name: t for t in self.topics}
        decoder = getattr(self.sink, "decoder", None)
        self._decoders: dict[str, Decoder | None] = {t.name: decoder(t) if decoder else None for t in self.topics}
        self._dedup_as = self.dedup_as or self.group_id
        pause = os.environ.get(PAUSE_ENV)
        self._pause_s = float(pause) if pause else 0.0

    async def run(self, stop: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(
            *self._by_name, bootstrap_servers=self.bootstrap, group_id=self.group_id,
            enable_auto_commit=False, auto_offset_reset="earliest", max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024, session_timeout_ms=SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=SESSION_TIMEOUT_MS // 10, isolation_level=ISOLATION_LEVEL)
        producer = dead_letter_producer(self.bootstrap)
        tune_gc(self.max_records)
        await consumer.start()
        await producer.start()
        self._producer = producer
        # Two stages: while batch N is being stored (PostgreSQL works, this loop mostly waits), batch N+1 is
        # polled and parsed (Python works). N's offsets are committed before N+1 is stored, so the order of
        # transactions and commits is the one a one-stage loop gives.
        pending: tuple[list[Any], asyncio.Task[None]] | None = None
        try:
            while not stop.is_set() or pending:
                records: list[Any] = []
                if not stop.is_set():
                    polled = await consumer.getmany(timeout_ms=PIPELINED_POLL_MS if pending else 500,
                                                    max_records=self.max_records)
                    records = [r for rs in polled.values() for r in rs]
                batch = await self._parse(records) if records else None
                if pending:
                    stored, task = pending
                    pending = None
                    try:
                        await task
                    except _SeekBack:
                        self._seek_back(consumer, stored + records)
                        continue
                if batch is not None:
                    pending = (records, asyncio.create_task(self._store(consumer, batch)))
        finally:
            if pending:  # leaving on an error or a cancellation: the batch is not committed, it comes again
                pending[1].cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pending[1]
            # serve() cancels its loops right after setting `stop`: a loop that saw `stop` first is closing here when
            # the cancellation comes. The consumer is stopped whatever ends the producer's stop, so it leaves its
            # group now; skipped, it stayed a member for its whole session (30 s), holding its partitions.
            try:
                await producer.stop()
            finally:
                await consumer.stop()

    def _seek_back(self, consumer: AIOKafkaConsumer, records: Sequence[Any]) -> None:
        """Back to the first offset of every partition in `records`: they are polled again."""
        firsts: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            firsts[tp] = min(firsts.get(tp, r.offset), r.offset)
        self.log.info("batch.seek_back", messages=len(records))
        for tp, offset in firsts.items():
            consumer.seek(tp, offset)

    # --- one batch ------------------------------------------------------------------------------

    async def _parse(self, records: Sequence[Any]) -> Batch:
        batch = Batch(self._dedup_as)
        last, counts, by_name, decoders = batch.last_offsets, batch.counts, self._by_name, self._decoders
        new_valid, append = tuple.__new__, batch.valid.append  # Valid(...) without its Python-level __new__
        for start in range(0, len(records), YIELD_EVERY):
            if start:
                await asyncio.sleep(0)  # the consumer's heartbeats run on this loop too
            for raw in records[start:start + YIELD_EVERY]:
                name, offset = raw.topic, raw.offset
                topic = by_name[name]
                tp = (name, raw.partition)
                if offset > last.get(tp, -1):
                    last[tp] = offset
                counts[tp] = counts.get(tp, 0) + 1
                try:
                    _, headers, time, payload = parse_checked(raw, topic, decoders[name])
                except Poison as poison:
                    batch.malformed.append(self._malformed(topic, raw, poison))
                    continue
                except Exception as exc:  # whatever else the bytes can do to a parser is the message's fault
                    unreadable = Poison(f"unreadable message: {type(exc).__name__}: {bounded(str(exc), 300)}")
                    batch.malformed.append(self._malformed(topic, raw, unreadable))
                    continue
                append(new_valid(Valid, (topic, raw, headers["ce_id"], time, payload)))
        return batch

    def _malformed(self, topic: Topic, raw: Any, poison: Poison) -> Malformed:
        from services.runtime.broker import _record_id

        key = raw.key.decode(errors="replace") if raw.key else None
        self.log.warning("message.rejected", reason=bounded(poison.reason, LOG_REASON_MAX), offset=raw.offset,
                         partition=raw.partition, topic=topic.name)
        return Malformed(topic, raw, poison.reason, poison.data, _record_id(poison.data, key))

    async def _store(self, consumer: AIOKafkaConsumer, batch: Batch) -> None:
        """Dead letters, the sink's transaction, then the offsets' commit. An outage is waited out from the
        moment the store starts (not from the parse: the batch before may have waited out one already)."""
        started = time.monotonic()
        await self._dead_letter_malformed(batch, started)
        try:
            await self._patiently(lambda: self.sink(batch), started)
        except _SeekBack:
            raise
        except Exception as exc:
            self.log.warning("batch.failed", messages=len(batch),
                             error=bounded(f"{type(exc).__name__}: {exc}", LOG_REASON_MAX))
            await self._one_by_one(batch, started)
        self.log.info("batch.stored", messages=len(batch), valid=len(batch.valid), malformed=len(batch.malformed),
                      offsets={f"{t}/{p}": o for (t, p), o in batch.last_offsets.items()})
        if self._pause_s:
            await asyncio.sleep(self._pause_s)
        offsets = {TopicPartition(t, p): o + 1 for (t, p), o in batch.last_offsets.items()}
        try:
            await self._patiently(lambda: consumer.commit(offsets), started)
        except (CommitFailedError, IllegalStateError) as exc:
            # The partitions went to another member meanwhile (a rebalance): it gets the batch again and
            # the dedup makes that a no-op. Not a reason to stop consuming.
            self.log.warning("batch.commit_failed", error=bounded(f"{type(exc).__name__}: {exc}", LOG_REASON_MAX),
                             messages=len(batch))

    async def _dead_letter_malformed(self, batch: Batch, started: float) -> None:
        if not batch.malformed:
            return
        keys = [m.key for m in batch.malformed]

        async def known() -> set[str]:
            rows = await self.pool.fetch("SELECT message_id FROM processed_message WHERE consumer = $1 "
                                         "AND message_id = ANY($2::text[])", self._dedup_as, keys)
            return {r["message_id"] for r in rows}

        done: set[str] = set()

        async def look() -> None:
            done.update(await known())
        await self._patiently(look, started)
        for m in batch.malformed:
            if m.key not in done:
                await self._dead_letter(m.topic, m.raw, m.reason, 0, started)

    async def _dead_letter(self, topic: Topic, raw: Any, reason: str, attempts: int, started: float) -> None:
        headers = dead_letter_headers(topic, raw, reason, attempts, self.group_id)

        async def send() -> None:
            await self._producer.send_and_wait(topic.dlq, raw.value, key=raw.key, headers=headers)
        await self._patiently(send, started)

    async def _one_by_one(self, batch: Batch, started: float) -> None:
        """After a batch failed for a reason that is not an outage: each message alone, `max_attempts`
        each; the one that keeps failing goes to its DLQ, the others are stored. Each goes in offset order within
        its partition, as a batch of its own that names its offset (`last_offsets`): what a sink does per stored
        partition (the loader's `sources.stored` watermarks) it does for each of them, never past a message that
        went to the DLQ unstored."""
        for single in split(batch):
            attempt = 0
            while True:
                try:
                    await self._patiently(lambda s=single: self.sink(s), started)  # type: ignore[misc]
                    break
                except _SeekBack:
                    raise
                except Exception as exc:
                    attempt += 1
                    self.log.warning("message.failed", attempt=attempt,
                                     error=bounded(f"{type(exc).__name__}: {exc}", LOG_REASON_MAX))
                    if attempt < self.max_attempts:
                        await asyncio.sleep(self.retry_delay * 2 ** (attempt - 1))
                        continue
                    reason = bounded(f"processing failed {attempt} times: {type(exc).__name__}: {exc}")
                    if single.valid:
                        v = single.valid[0]
                        await self._dead_letter(v.topic, v.raw, reason, attempt, started)
                    else:
                        m = single.malformed[0]
                        await self._dead_letter(m.topic, m.raw, reason, attempt, started)
                    self.log.error("message.dead_lettered", reason=bounded(reason, LOG_REASON_MAX))
                    break

    async def _patiently(self, step: Callable[[], Awaitable[Any]], started: float) -> None:
        """Runs `step` until it does not fail for a transient reason (an outage is waited out)."""
        await wait_out(self.outage, step, started)
