"""Housekeeping: the rows the platform keeps only for a while, deleted once nothing can need them.

- ``processed_message``: a consumer's record of a message it handled (``outbox.mark_processed``, ``Batch.claim``)
  matters only while Kafka can deliver that message again, i.e. while the message is still in its topic. A topic
  keeps a message for its ``retention.ms`` (the registry, contracts.topics; ``flows topics apply`` sets it), but
  Kafka deletes whole segments, a segment once its newest message is past retention: a message can outlive its
  retention by a segment's span (``log.roll.hours``, 7 days by default). So a record older than the longest
  retention of the registry plus that span plus a day (38 days today) can never stop a redelivery: deleted. (A
  dead letter redriven by ``flows dlq`` goes out with a new ce_id: the DLQs' retention does not count.) Intake
  records every source message there: 6.5 M rows a month today, 650 M at 100x (docs/scaling.md), kept forever
  before this.
- ``outbox``: a row published to Kafka is a copy of its event, which the event store keeps. It is kept
  ``OUTBOX_KEEP`` after publication (an operator may look at what went out lately), then deleted. A row not
  published (Kafka down, or parked) is never deleted, however old.

The audit service runs ``prune`` every ``housekeeping_interval_s`` (one process at a time: an advisory lock). It
deletes by chunks of ``CHUNK`` rows, each its own short transaction, found through the tables' BRIN indexes on their
age (migration 0005): no long lock, no long transaction holding back vacuum, and a stop between two chunks loses
nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import asyncpg

from contracts.topics import all_topics
from services.runtime.locks import HOUSEKEEPING_LOCK_KEY, platform_lock

SEGMENT_SPAN = timedelta(days=7)  # Kafka's log.roll.hours default: how long a message may outlive its retention
MARGIN = timedelta(days=1)
OUTBOX_KEEP = timedelta(days=7)
CHUNK = 10_000

_PRUNE_PROCESSED = """
DELETE FROM processed_message WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM processed_message WHERE processed_at < now() - $1::interval LIMIT $2))"""
_PRUNE_OUTBOX = """
DELETE FROM outbox WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM outbox WHERE created_at < now() - $1::interval AND published_at < now() - $1::interval
    LIMIT $2))"""


def dedup_horizon() -> timedelta:
    """How long a consumer's dedup record is kept: the longest topic retention of the registry, a segment's span
    and a day."""
    return timedelta(milliseconds=max(t.retention_ms for t in all_topics())) + SEGMENT_SPAN + MARGIN


@dataclass(frozen=True)
class Pruned:
    processed: int  # dedup records deleted
    outbox: int  # published outbox rows deleted
    ran: bool  # False: another process held the housekeeping lock, nothing was done


async def prune(pool: asyncpg.Pool, *, dedup_keep: timedelta | None = None, outbox_keep: timedelta = OUTBOX_KEEP,
                chunk: int = CHUNK) -> Pruned:
    """Deletes the dedup records older than `dedup_keep` (default ``dedup_horizon()``) and the outbox rows
    published more than `outbox_keep` ago, chunk by chunk; does nothing when another process is at it."""
    keep = dedup_horizon() if dedup_keep is None else dedup_keep
    async with platform_lock(pool, HOUSEKEEPING_LOCK_KEY) as conn:
        if conn is None:
            return Pruned(0, 0, ran=False)
        processed = await _by_chunks(conn, _PRUNE_PROCESSED, keep, chunk)
        outbox = await _by_chunks(conn, _PRUNE_OUTBOX, outbox_keep, chunk)
    return Pruned(processed, outbox, ran=True)


async def _by_chunks(conn: asyncpg.Connection, statement: str, keep: timedelta, chunk: int) -> int:
    total = 0
    while True:
        deleted = int((await conn.execute(statement, keep, chunk)).split()[-1])
        total += deleted
        if deleted < chunk:
            return total
