"""The consumer's guard without a broker: what is poison (and its bounded reason), what is an outage."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import pytest
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError, NotLeaderForPartitionError
from aiokafka.structs import ConsumerRecord
from pydantic import BaseModel

from contracts.envelope import Envelope
from contracts.topics import DLQ_REASON_MAX, Topic
from services.runtime.batch import BatchConsumer
from services.runtime.broker import Incoming, Poison, bounded, is_transient, parse, parse_valid


class Item(BaseModel):
    source_id: str
    words: int


TOPIC = Topic("test.items", Item, "source_id", "probe", ("test",), max_message_bytes=500_000)


def record(value: bytes, key: bytes | None = b"k", headers: list[tuple[str, bytes]] | None = None,
           ce_type: str = "test.items") -> ConsumerRecord:
    return ConsumerRecord(topic=TOPIC.name, partition=0, offset=7, timestamp=0, timestamp_type=0, key=key,
                          value=value, checksum=None, serialized_key_size=0, serialized_value_size=0,
                          headers=headers if headers is not None else Envelope.new(ce_type, "/t").to_headers())


def poison_reason(raw: ConsumerRecord) -> str:
    with pytest.raises(Poison) as caught:
        parse(raw, TOPIC)
    assert len(caught.value.reason) <= DLQ_REASON_MAX
    return caught.value.reason


def test_a_valid_record_parses() -> None:
    key, envelope, data, payload = parse(record(b'{"source_id": "a", "words": 2}'), TOPIC)
    assert (key, envelope.type, data, payload) == ("k", "test.items", {"source_id": "a", "words": 2},
                                                   Item(source_id="a", words=2))


def test_each_malformation_is_poison_with_a_reason_that_names_it() -> None:
    good = b'{"source_id": "a", "words": 2}'
    assert "key is not UTF-8" in poison_reason(record(good, key=b"\xff"))
    bad_header = [*Envelope.new("test.items", "/t").to_headers(), ("x", b"\xff\xfe")]
    assert "header 'x' is not UTF-8" in poison_reason(record(good, headers=bad_header))
    assert "nested too deeply" in poison_reason(record(b"[" * 100_000 + b"]" * 100_000))
    assert "not JSON" in poison_reason(record(b"\xff{"))
    assert "over the limit of 500000 bytes" in poison_reason(record(b" " * 500_001))
    assert "not a known event type" in poison_reason(record(good, ce_type="test.nothing"))
    assert "another topic" in poison_reason(record(good, ce_type="flows.load-checked"))
    assert "ce_specversion" in poison_reason(record(good, headers=[]))


def test_a_rejection_never_quotes_a_whole_value() -> None:
    huge = json.dumps({"source_id": "a", "words": "9" * 400_000}).encode()
    reason = poison_reason(record(huge))
    assert "words" in reason and len(reason) < 400


def test_bounded_says_what_it_cut() -> None:
    text = bounded("x" * 5000, 100)
    assert len(text) == 100 and text.endswith("... [cut: 5000 characters in all]")
    assert bounded("short") == "short"


@pytest.mark.parametrize("exc", [ConnectionRefusedError(111, "refused"), asyncpg.CannotConnectNowError("starting"),
                                 asyncpg.exceptions.AdminShutdownError("terminating"), KafkaConnectionError(),
                                 NotLeaderForPartitionError(), TimeoutError()])
def test_an_unreachable_dependency_is_transient(exc: BaseException) -> None:
    assert is_transient(exc)
    try:
        raise RuntimeError("wrapped") from exc
    except RuntimeError as wrapped:
        assert is_transient(wrapped)


@pytest.mark.parametrize("exc", [ValueError("bad amount"), FileNotFoundError("/x"), MessageSizeTooLargeError(),
                                 asyncpg.UniqueViolationError("dup"), KeyError("x")])
def test_what_is_wrong_with_the_message_is_not_transient(exc: BaseException) -> None:
    assert not is_transient(exc)


def test_the_batch_parser_gives_parses_verdict_for_every_malformation_and_the_same_payloads() -> None:
    """`parse_valid` (volume intake) validates from the bytes and hands anything unusual to `parse`: the same
    payload for what both accept, the same Poison and reason for what `parse` refuses."""
    good = b'{"source_id": "a", "words": 2}'
    bad_header = [*Envelope.new("test.items", "/t").to_headers(), ("x", b"\xff\xfe")]
    repeated = [*Envelope.new("test.items", "/t").to_headers(), ("ce_type", b"test.nothing")]
    malformed = [record(good, key=b"\xff"), record(good, headers=bad_header), record(good, headers=repeated),
                 record(b"[" * 100_000 + b"]" * 100_000), record(b"\xff{"), record(good + b" " * 500_001),
                 record(good, ce_type="test.nothing"), record(good, ce_type="flows.load-checked"),
                 record(good, headers=[]), record(b'{"source_id": "a", "words": "two"}'), record(b""),
                 record(b'{"source_id": "a", "words": 2, "words": "x"}'), record(b"null")]
    for raw in malformed:
        reason = poison_reason(raw)
        with pytest.raises(Poison) as caught:
            parse_valid(raw, TOPIC)
        assert caught.value.reason == reason
    accepted = [record(good), record(good, key=None), record("\ufeff".encode() + good),
                record(b'{"source_id": "a", "words": "2"}'),  # a lax int, as the test model says
                record(b'{"source_id": "\\u00e8", "words": 2.0, "words": 3}')]
    for raw in accepted:
        key, envelope, _, payload = parse(raw, TOPIC)
        assert parse_valid(raw, TOPIC) == (key, envelope, payload)


def test_the_batch_parser_checks_each_envelope_and_builds_the_one_parse_builds_on_demand() -> None:
    """`BatchConsumer._parse` checks every envelope as `parse` does (a bad one is Malformed with `parse`'s reason)
    but builds it only when a sink asks `Valid.incoming`: then it is the envelope `parse` gives."""
    good = b'{"source_id": "a", "words": 2}'
    headers = Envelope.new("test.items", "/t", subject="a", trace="x").to_headers()
    bad_time = [(k, b"yesterday" if k == "ce_time" else v) for k, v in headers]
    no_id = [(k, v) for k, v in headers if k != "ce_id"]
    records = [record(good, headers=headers), record(good, headers=bad_time), record(good, headers=no_id),
               record(b'{"source_id": "b", "words": 3}', headers=[(k, v) for k, v in headers if k != "ce_time"])]
    batch = asyncio.run(BatchConsumer([], [TOPIC], "g", _no_sink, None)._parse(records))  # type: ignore[arg-type]
    assert [m.reason for m in batch.malformed] == [poison_reason(records[1]), poison_reason(records[2])]
    assert len(batch.valid) == 2
    for valid, raw in zip(batch.valid, (records[0], records[3]), strict=True):
        key, envelope, _, payload = parse(raw, TOPIC)
        assert valid.payload == payload and valid.message_id == envelope.id
        if raw is records[0]:  # with a ce_time: the very envelope (without one, parse stamps its own "now")
            assert valid.incoming == Incoming(envelope, key, TOPIC.name, raw.partition, raw.offset)
        assert valid.incoming == valid.incoming, "built again, the same envelope"


async def _no_sink(batch: Any) -> None:
    raise AssertionError("not stored here")
