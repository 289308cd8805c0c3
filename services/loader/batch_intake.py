"""Batched source intake: the `sources.*` topics consumed in batches, one transaction per batch.

Per batch (services.runtime.batch.BatchConsumer polls, parses and commits the offsets afterwards):
one transaction records the batch's message ids in processed_message (a redelivered message is
skipped), COPYs each kind's valid records into a staging table and upserts them with ONE statement,
appends a `sources.record-rejected` event for each malformed message (the outbox publishes it) and
one `sources.stored` watermark per topic partition (the highest offset of the batch).

Validation is the contract itself: `broker.parse` validates every body against the topic's model
(contracts.sources), exactly as the per-message consumer did; nothing here is weaker.

Meaning kept from the per-message intake (one message = one `intake.store` of one record):
- a record whose content is already stored is a duplicate (counted, nothing changes);
- new content under a known source_id is a correction: the row is replaced, `revision` + 1;
- the same source_id several times in one batch: applied in offset order, the later wins, and
  each change of content along the way counts as one revision (A, A', A again = revision 3), the
  same count the messages would have given one by one.
"""

from __future__ import annotations

import functools
import operator
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from pydantic import BaseModel

from contracts.sources import SourceRecordRejected, SourcesStored
from contracts.topic import Topic
from contracts.topics import INTAKE_TOPICS
from services.loader.intake import (
    KINDS,
    IntakeResult,
    body_row_maker,
    content_hash,
    row_maker,
    stage_rows,
    staging,
    upsert_sql,
)
from services.runtime.batch import Batch, BatchConsumer, Malformed, per_partition
from services.runtime.broker import Decoder, is_transient
from services.runtime.eventstore import EventStore, NewEvent
from services.runtime.logging import get_logger

log = get_logger("loader.intake")

# Longer than any id a regional system gives; a longer "source_id" is not used to name a stream.
SOURCE_ID_MAX = 200
GROUP = "loader-sources"
_KIND_OF_MODEL: dict[type[BaseModel], str] = {spec.model: kind for kind, spec in KINDS.items()}
_SOURCE_ID = {kind: operator.itemgetter(spec.columns.index("source_id")) for kind, spec in KINDS.items()}


@functools.cache
def _decoder(kind: str) -> Decoder:
    return Decoder(body_row_maker(kind), row_maker(kind))


@functools.cache
def sequence_sql(kind: str) -> str:
    """The one statement that applies a staged SEQUENCE (source_ids may repeat) as if each record had
    come alone, in `ordinal` order: see the module doc. Returns (stored, corrected, written)."""
    spec = KINDS[kind]
    _, temp = staging(kind)
    cols = spec.columns
    col_list = ", ".join(cols)
    insert_cols = [f"j.{c}::jsonb" if c in spec.json_columns else f"j.{c}" for c in cols]
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in cols if c != "source_id")
    return f"""
        WITH seq AS (
            SELECT ordinal, {col_list}, {content_hash(kind)} AS content_hash
            FROM {temp}
        ), looked_up AS MATERIALIZED (
            -- one primary-key lookup per staged record (a subplan): a join could scan the whole table
            SELECT seq.*, (SELECT cur.content_hash FROM {spec.table} cur WHERE cur.source_id = seq.source_id)
                          AS stored_hash
            FROM seq
        ), steps AS (
            SELECT looked_up.*, stored_hash IS NULL AS unknown,  -- content_hash is NOT NULL in the table
                   lag(content_hash) OVER w AS before,
                   lead(ordinal) OVER w IS NULL AS is_last
            FROM looked_up
            WINDOW w AS (PARTITION BY source_id ORDER BY ordinal)
        ), judged AS (
            SELECT steps.*, (before IS NULL AND unknown) AS is_new,
                   NOT (before IS NULL AND unknown) AND content_hash <> coalesce(before, stored_hash) AS is_change
            FROM steps
        ), per_id AS (
            SELECT source_id, bool_or(is_new) AS is_new, count(*) FILTER (WHERE is_change) AS changes
            FROM judged GROUP BY source_id
        ), upserted AS (
            INSERT INTO {spec.table} AS s ({col_list}, revision, content_hash, received_at)
            SELECT {", ".join(insert_cols)}, CASE WHEN p.is_new THEN 1 + p.changes
                   ELSE p.changes END, j.content_hash, now()
            FROM judged j JOIN per_id p USING (source_id)
            WHERE j.is_last AND (p.is_new OR p.changes > 0)
            ON CONFLICT (source_id) DO UPDATE
               SET {updates}, revision = s.revision + EXCLUDED.revision, content_hash = EXCLUDED.content_hash,
                   received_at = EXCLUDED.received_at
            RETURNING 1
        )
        SELECT count(*) FILTER (WHERE is_new) AS stored, count(*) FILTER (WHERE is_change) AS corrected,
               (SELECT count(*) FROM upserted) AS written
        FROM judged"""


async def store_sequence(conn: asyncpg.Connection, kind: str, records: Sequence[tuple[Any, ...]]) -> IntakeResult:
    """Stores `records` (rows of one kind as `intake.row_maker` makes them, in offset order) as if each had come
    alone: see the module doc.

    Must run inside the caller's transaction (the batch's). The common batch names each source_id once:
    then the plain upsert says the same (new, correction or duplicate, record by record) without the
    window over the sequence."""
    if not records:
        return IntakeResult()
    once_each = len(set(map(_SOURCE_ID[kind], records))) == len(records)
    await stage_rows(conn, kind, records, ordered=not once_each)
    row = await conn.fetchrow(upsert_sql(kind, latest_only=False) if once_each else sequence_sql(kind))
    stored, corrected = int(row["stored"]), int(row["corrected"])
    return IntakeResult(stored=stored, duplicates=len(records) - stored - corrected, corrected=corrected)


def rejection(record_id: str | None, body: Any, reason: str, kind: str) -> tuple[str, NewEvent, str]:
    """(stream, `sources.record-rejected` event, key) naming the record and the fields.

    A `source_id` that is not a short string (a list, a megabyte) is not an id: the event names the
    record unidentified."""
    source_id = body.get("source_id") if isinstance(body, dict) else None
    if not (isinstance(source_id, str) and 0 < len(source_id) <= SOURCE_ID_MAX):
        source_id = None
    payload = SourceRecordRejected(kind=kind, source_id=source_id,
                                   errors=[{"record": record_id or "?", "reason": reason}])
    stream = f"source-{source_id}" if source_id else f"source-unidentified-{uuid.uuid4()}"
    event = NewEvent(type="sources.record-rejected", data=payload.model_dump(mode="json"), actor="loader")
    return stream, event, source_id or stream


@dataclass
class BatchIntake:
    store: EventStore
    pool: asyncpg.Pool
    # what this process stored, corrected and counted as duplicates, over all its batches
    totals: IntakeResult = field(default_factory=IntakeResult)
    rejected: int = 0

    @staticmethod
    def decoder(topic: Topic) -> Decoder:
        """A valid body reaches this sink as its row (`intake.body_row_maker`): no model is built for it."""
        kind = _KIND_OF_MODEL.get(topic.payload)
        if kind is None:
            raise TypeError(f"{topic.name} carries {topic.payload.__name__}, not a source record")
        return _decoder(kind)

    async def __call__(self, batch: Batch) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            valid, malformed = await batch.claim(conn)
            by_kind: dict[str, list[tuple[Any, ...]]] = {}
            for v in valid:  # in poll order: offsets ascending within each partition; the payload is the row
                by_kind.setdefault(_KIND_OF_MODEL[v.topic.payload], []).append(v.payload)
            total = IntakeResult()
            for kind, records in by_kind.items():
                total += await store_sequence(conn, kind, records)
            for m in malformed:
                await self._reject(conn, m)
            await self._watermarks(conn, batch, valid, malformed)
        self.totals += total
        self.rejected += len(malformed)
        log.info("intake.batch", messages=len(batch), stored=total.stored, corrected=total.corrected,
                 duplicates=total.duplicates, rejected=len(malformed),
                 redelivered=len(batch) - len(valid) - len(malformed))

    async def _reject(self, conn: asyncpg.Connection, m: Malformed) -> None:
        stream, event, key = rejection(m.record_id, m.data, m.reason, m.topic.name)
        try:
            await self.store.append(stream, [event], expected_version=None, key=key, conn=conn)
        except Exception as exc:  # its savepoint is rolled back: the dead letter (already sent) says it all
            if is_transient(exc):
                raise
            log.warning("intake.rejection_failed", error=f"{type(exc).__name__}: {exc}"[:300],
                        offset=m.raw.offset, partition=m.raw.partition, topic=m.topic.name)

    async def _watermarks(self, conn: asyncpg.Connection, batch: Batch, valid: Sequence[Any],
                          malformed: Sequence[Malformed]) -> None:
        """One `sources.stored` per topic partition of the batch that held anything new: a redelivered
        batch appends nothing.

        Appended without a savepoint each: any error of an append leaves this method and the sink, so the
        batch's transaction is rolled back whether or not a savepoint had kept it usable."""
        counts = batch.per_partition()
        fresh = counts if len(valid) + len(malformed) == len(batch) else per_partition(valid, malformed)
        for (topic, partition), offset in sorted(batch.last_offsets.items()):
            if not fresh.get((topic, partition)):
                continue
            payload = SourcesStored(topic=topic, partition=partition, offset=offset,
                                    messages=counts.get((topic, partition), 0))
            key = f"{topic}/{partition}"
            await self.store.append(f"intake-{key}", [NewEvent(type="sources.stored",
                                                               data=payload.model_dump(mode="json"),
                                                               actor="loader")],
                                    expected_version=None, key=key, conn=conn, savepoint=False)


def batch_consumer(store: EventStore, pool: asyncpg.Pool, bootstrap: list[str], *, group_id: str = GROUP,
                   probe: Any = None, max_attempts: int = 3, max_records: int = 5000) -> BatchConsumer:
    """The loader's intake of the source topics: run it as a service loop (`.run(stop)`)."""
    return BatchConsumer(bootstrap, INTAKE_TOPICS, group_id, BatchIntake(store, pool), pool, probe=probe,
                         max_attempts=max_attempts, max_records=max_records, dedup_as=GROUP)
