"""`Batch.claim` (services.runtime.batch) on the real PostgreSQL: the batch's messages recorded in processed_message
in the caller's transaction, and only those seen for the first time handed back.

The common batch (every message new, each once) takes a short way (one row back instead of one per message):
these tests hold it to the same answer as the general way, for every mix a redelivery can bring."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from aiokafka.structs import ConsumerRecord

from contracts.sources import DeliveredService
from contracts.topics import INTAKE_TOPICS
from services.runtime.batch import Batch, Malformed, Valid
from tests.isolation import scratch_database

pytestmark = pytest.mark.integration

TOPIC = next(t for t in INTAKE_TOPICS if t.payload is DeliveredService)
CONSUMER = "claim-test"


def _raw(offset: int) -> ConsumerRecord:
    return ConsumerRecord(topic=TOPIC.name, partition=0, offset=offset, timestamp=0, timestamp_type=0, key=b"k",
                          value=b"{}", checksum=None, serialized_key_size=1, serialized_value_size=2, headers=[])


def _valid(ce_id: str, offset: int) -> Valid:
    return Valid(TOPIC, _raw(offset), ce_id, datetime.now(UTC), (ce_id,))


def _malformed(offset: int) -> Malformed:
    return Malformed(TOPIC, _raw(offset), "bad", None, None)


async def _claim(conn: asyncpg.Connection, batch: Batch) -> tuple[list[Any], list[Any]]:
    async with conn.transaction():
        valid, malformed = await batch.claim(conn)
    return [v.raw.offset for v in valid], [m.raw.offset for m in malformed]


@pytest.fixture
async def conn(stack) -> Any:  # type: ignore[no-untyped-def]
    async with scratch_database("t_claim") as url:
        connection = await asyncpg.connect(url)
        try:
            yield connection
        finally:
            await connection.close()


async def test_a_batch_of_new_messages_is_handed_back_whole_and_recorded(conn: asyncpg.Connection) -> None:
    batch = Batch(CONSUMER, valid=[_valid("a", 1), _valid("b", 2)], malformed=[_malformed(3)])
    assert await _claim(conn, batch) == ([1, 2], [3])
    recorded = {r["message_id"] for r in await conn.fetch(
        "SELECT message_id FROM processed_message WHERE consumer = $1", CONSUMER)}
    assert recorded == {"a", "b", _malformed(3).key}


async def test_a_redelivered_batch_is_handed_back_empty(conn: asyncpg.Connection) -> None:
    def batch() -> Batch:
        return Batch(CONSUMER, valid=[_valid("a", 1), _valid("b", 2)], malformed=[_malformed(3)])
    assert await _claim(conn, batch()) == ([1, 2], [3])
    assert await _claim(conn, batch()) == ([], [])


async def test_a_batch_partly_seen_before_hands_back_only_the_new(conn: asyncpg.Connection) -> None:
    assert await _claim(conn, Batch(CONSUMER, valid=[_valid("a", 1)], malformed=[_malformed(3)])) == ([1], [3])
    batch = Batch(CONSUMER, valid=[_valid("a", 1), _valid("b", 2), _valid("c", 4)],
                  malformed=[_malformed(3), _malformed(5)])
    assert await _claim(conn, batch) == ([2, 4], [5])


async def test_the_same_message_twice_in_a_new_batch_is_handed_back_once(conn: asyncpg.Connection) -> None:
    """Every key new, but one twice: fewer rows recorded than keys, so not the short way; the first is the
    message, the copy is dropped."""
    batch = Batch(CONSUMER, valid=[_valid("a", 1), _valid("b", 2), _valid("a", 3)])
    assert await _claim(conn, batch) == ([1, 2], [])


async def test_claim_refuses_to_run_outside_a_transaction(conn: asyncpg.Connection) -> None:
    with pytest.raises(RuntimeError, match="inside the transaction"):
        await Batch(CONSUMER, valid=[_valid("a", 1)]).claim(conn)
