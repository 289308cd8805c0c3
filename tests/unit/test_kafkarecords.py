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
from services.runtime.ops import decode_headers
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
