"""services.runtime.kafkarecords: the records aiokafka's reader refuses (a header name that is not UTF-8) are read,
and every other record is read exactly as aiokafka reads it; `broker.parse` refuses such a record as Poison."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder, _DefaultRecordBatchBuilderPy
from aiokafka.record.memory_records import MemoryRecords
from pydantic import BaseModel

from contracts.envelope import Envelope
from contracts.topics import Topic
from services.runtime import kafkarecords
from services.runtime.broker import Poison, dead_letter_headers, parse, parse_checked
from services.runtime.kafkarecords import (
    TolerantMemoryRecords,
    aiokafka_reader,
    header_name_problem,
    memory_records,
    printable_name,
)
from services.runtime.ops import decode, decode_headers
from tests.raw_records import HeaderName

CODECS = [0, 1, 2, 3, 4]  # none, gzip, snappy, lz4, zstd: what an outside producer may use


def _batch(codec: int = 0, n: int = 50, odd_at: tuple[int, ...] = (), base: int = 0, compiled: bool = False) -> bytes:
    """One record batch of `n` records (offsets from `base`): keys, values and header values sometimes null; the
    records at `odd_at` with one more header named b"\\xff\\xfe-x"."""
    builder_class = DefaultRecordBatchBuilder if compiled else _DefaultRecordBatchBuilderPy
    builder = builder_class(magic=2, compression_type=codec, is_transactional=0, producer_id=-1, producer_epoch=-1,
                            base_sequence=-1, batch_size=1 << 24)
    for i in range(n):
        headers: list[tuple[str, bytes | None]] = [("ce_id", b"id-%d" % i), ("città", "è".encode()), ("none", None)]
        if i in odd_at:
            headers.append((HeaderName(b"\xff\xfe-x"), b"v"))
        builder.append(i, timestamp=1_700_000_000_000 + i, key=b"k%d" % i if i % 3 else None,
                       value=b"value %d " % i * (i % 7) if i % 5 else None, headers=headers)
    data = bytearray(builder.build())
    data[0:8] = base.to_bytes(8, "big")  # the batch's base offset (outside the CRC)
    return bytes(data)


def _read(reader: Any, data: bytes) -> list[tuple[Any, ...]]:
    records = reader(data)
    out = []
    while records.has_next():
        for r in records.next_batch():
            out.append((r.offset, r.timestamp, r.timestamp_type, r.key, r.value, list(r.headers)))
    return out


@pytest.mark.parametrize("codec", CODECS)
def test_records_aiokafka_reads_are_read_the_same(codec: int) -> None:
    data = _batch(codec) + _batch(codec, base=50, compiled=True)
    assert _read(TolerantMemoryRecords, data) == _read(MemoryRecords, data)
    assert len(_read(MemoryRecords, data)) == 100


@pytest.mark.parametrize("codec", CODECS)
def test_a_header_name_that_is_not_utf8_is_read_with_its_bytes_kept(codec: int) -> None:
    data = _batch(codec, base=100) + _batch(codec, odd_at=(0, 7, 49), base=150) + _batch(codec, base=200)
    with pytest.raises(UnicodeDecodeError):
        _read(MemoryRecords, data)
    read = _read(TolerantMemoryRecords, data)
    assert [r[0] for r in read] == list(range(100, 250)), "every record once, in order"
    plain = _read(TolerantMemoryRecords, _batch(codec, base=150))
    for got, expected in zip(read[50:100], plain, strict=True):
        odd = got[0] - 150 in (0, 7, 49)
        assert got[:5] == expected[:5]
        assert got[5][:3] == expected[5], "the other headers as aiokafka reads them"
        if odd:
            name, value = got[5][3]
            assert name.encode("utf-8", "surrogateescape") == b"\xff\xfe-x" and value == b"v"
            assert header_name_problem(name) == "a header name is not UTF-8 (b'\\xff\\xfe-x')"
            assert printable_name(name) == "\\xff\\xfe-x"
        else:
            assert len(got[5]) == 3


def test_the_reader_is_chosen_when_a_consumer_starts() -> None:
    assert isinstance(memory_records(_batch()), TolerantMemoryRecords)
    with aiokafka_reader():
        assert type(memory_records(_batch())) is MemoryRecords
    from aiokafka.consumer import fetcher

    assert fetcher.MemoryRecords is memory_records, "installed by importing services.runtime.broker"
    assert kafkarecords._AIOKAFKA_MEMORY_RECORDS is MemoryRecords


def test_valid_names_have_no_problem_and_print_as_they_are() -> None:
    for name in ("ce_id", "città", "x-€"):
        assert header_name_problem(name) is None and printable_name(name) == name


class Greeting(BaseModel):
    source_id: str


TOPIC = Topic("test.greeting", Greeting, "source_id", "probe", ("test",))


def _raw(headers: list[tuple[str, bytes | None]]) -> Any:
    return SimpleNamespace(topic=TOPIC.name, partition=0, offset=5, key=b"k", value=b'{"source_id": "a"}',
                           headers=headers)


def test_parse_refuses_a_record_with_a_header_name_that_is_not_utf8() -> None:
    odd = b"\xe8-nome".decode("utf-8", "surrogateescape")
    raw = _raw([*Envelope.new(TOPIC.name, "/test").to_headers(), (odd, b"v")])
    for reader in (lambda r: parse(r, TOPIC), lambda r: parse_checked(r, TOPIC)):
        with pytest.raises(Poison) as refused:
            reader(raw)
        assert refused.value.reason == "a header name is not UTF-8 (b'\\xe8-nome')"
    good = _raw([*Envelope.new(TOPIC.name, "/test").to_headers(), ("città", b"v")])
    assert parse_checked(good, TOPIC)[3] == Greeting(source_id="a"), "a name that is UTF-8 but not ASCII is fine"
    headers = dead_letter_headers(TOPIC, raw, "why", 0, "group")
    assert ("\\xe8-nome", b"v") in headers and all(name.encode() for name, _ in headers)
    assert decode_headers(raw.headers)["\\xe8-nome"] == "v"


def _damaged(data: bytes, at: int = -3) -> bytes:
    """The batch `data` with one byte of its last record changed (under the CRC: its records' bytes)."""
    damaged = bytearray(data)
    damaged[at] ^= 0x5A
    return bytes(damaged)


def _fetched(data: bytes, fetch_offset: int) -> tuple[list[Any], int]:
    """What aiokafka's fetcher makes of one partition's fetched bytes (its records, checking CRCs, as our consumers
    do) read from `fetch_offset`, and the offset it fetches next."""
    from aiokafka.consumer.fetcher import PartitionRecords
    from aiokafka.structs import TopicPartition

    part = PartitionRecords(TopicPartition("t", 0), memory_records(data), [], fetch_offset, None, None, True,
                            kafkarecords.ISOLATION_LEVEL)
    return list(part), part.next_fetch_offset


@pytest.mark.parametrize("codec", CODECS)
def test_a_batch_whose_crc_fails_is_read_as_one_record_saying_so_and_the_partition_moves_on(codec: int) -> None:
    """aiokafka's fetcher raised CorruptRecordException out of the poll for a batch whose CRC does not match, at
    every poll: the partition was blocked. Now the batch is one record at its last offset, its value the batch's
    bytes, its checksum the reason; the batches around it are read as before."""
    damaged = _damaged(_batch(codec, n=20, base=150))
    data = _batch(codec, base=100) + damaged + _batch(codec, base=170)
    with pytest.raises(Exception, match="Invalid CRC"):
        with aiokafka_reader():
            _fetched(data, 100)
    records, next_offset = _fetched(data, 100)
    assert [r.offset for r in records] == [*range(100, 150), 169, *range(170, 220)] and next_offset == 220
    corrupt = records[50]
    assert (corrupt.key, corrupt.value, corrupt.headers) == (None, damaged, ())
    stored, computed = int.from_bytes(damaged[17:21], "big"), kafkarecords.crc32c(damaged[21:])
    assert kafkarecords.corrupt_batch_problem(corrupt) == (
        f"record batch at offsets 150..169 is corrupt: its CRC-32C is {stored:08x}, its {len(damaged)} bytes give "
        f"{computed:08x} (damaged on a broker's disk or in memory after it was produced); its records cannot be "
        "read, the batch's bytes are this message's value")
    assert all(kafkarecords.corrupt_batch_problem(r) is None for r in records[:50] + records[51:])
    with pytest.raises(Poison) as refused:
        parse_checked(corrupt, TOPIC)
    assert refused.value.reason == kafkarecords.corrupt_batch_problem(corrupt)
    assert decode(corrupt).problem == refused.value.reason, "the operators' tools (flows tail) say it too"
    headers = dict(dead_letter_headers(TOPIC, corrupt, refused.value.reason, 0, "group"))
    assert headers["dlq_record_batch"] == b"corrupt" and headers["dlq_reason"].decode().startswith("record batch at")
    assert "dlq_record_batch" not in dict(dead_letter_headers(TOPIC, records[0], "why", 0, "group"))


def test_a_corrupt_batch_last_in_its_fetch_spans_its_own_offsets_even_read_from_inside_it() -> None:
    """The last batch of a fetch has no next batch to end it: its own last offset delta does. A consumer that had
    committed an offset inside the batch (it read part of it before the damage) still gets the record, at the
    batch's last offset, and moves past the batch."""
    damaged = _damaged(_batch(n=20, base=150))
    for fetch_offset in (150, 157, 169):
        records, next_offset = _fetched(_batch(base=100) + damaged, fetch_offset)
        assert [r.offset for r in records if r.offset >= 150] == [169] and next_offset == 170
        assert "record batch at offsets 150..169 is corrupt" in str(kafkarecords.corrupt_batch_problem(records[-1]))
    one = _damaged(_batch(n=1, base=7))
    records, next_offset = _fetched(one, 7)
    assert [r.offset for r in records] == [7] and next_offset == 8
    assert str(kafkarecords.corrupt_batch_problem(records[0])).startswith("record batch at offset 7 is corrupt:")


def test_a_record_as_a_producer_sends_it_never_passes_for_a_corrupt_batch() -> None:
    raw = _raw([*Envelope.new(TOPIC.name, "/test").to_headers(), ("checksum", b"record batch at offset 1")])
    assert kafkarecords.corrupt_batch_problem(raw) is None and parse_checked(raw, TOPIC)[3] == Greeting(source_id="a")
    for checksum in (None, 12345, "record batch at offset 1 is corrupt"):
        assert kafkarecords.corrupt_batch_problem(SimpleNamespace(checksum=checksum)) is None
