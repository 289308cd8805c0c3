"""Kafka records that aiokafka's reader refuses reach the consumer, to be dead-lettered like any malformed message.

A record header's name is a Kafka String, UTF-8 by the protocol, and the broker stores whatever bytes a client sent.
aiokafka decodes every header name as UTF-8 while it unpacks a fetched record batch, below its consumer API: one name
that is not UTF-8 raises UnicodeDecodeError out of `getmany`/`getone`, before any record of that fetch is returned, and
the next call fetches the same bytes again. The record never reaches a handler that could dead-letter it: the
partition is blocked, and with it every consumer of the topic in the group (the brief: a message that cannot be
processed goes to a dead-letter topic with the reason; it never blocks a partition).

`install()` (done when services.runtime.broker or .kafkaread is imported: every service's consumers, the operators'
Kafka reads) puts `memory_records` where aiokafka's fetcher makes the reader of a partition's fetched bytes. Its
record batches are aiokafka's own (the compiled reader, record by record as before); only when one of them refuses a
header name is the rest of THAT batch read here (`lenient_records`), with the header name decoded with
"surrogateescape": the bytes are kept (a name's `encode("utf-8", "surrogateescape")` gives them back), and
`header_name_problem` says which name is not UTF-8, so that `broker.parse` refuses the message as Poison and it goes
to the topic's DLQ with the reason.

A record batch whose CRC-32C does not match its bytes (a broker's disk or memory corrupted it after the broker
accepted it: the broker checks a batch when it is produced, never when it is fetched) made aiokafka's fetcher raise
CorruptRecordException out of `getmany`, at every poll, and block the partition in the same way. Here such a batch is
read as ONE record (`corrupt_batch`): at the batch's last offset, its value the batch's bytes as they were fetched, no
key and no headers, its `checksum` a `CorruptBatch` saying which offsets it held and why they cannot be read.
`broker.parse` refuses it as Poison with that reason (nothing a producer sends can carry a CorruptBatch), so it goes to
the topic's DLQ like any message that cannot be processed, and the partition moves on past the batch. Its offsets are
its base offset (outside the CRC, so readable) up to the base offset of the next batch of the same fetch, or, for the
last batch of a fetch, up to its own last offset delta (inside the CRC: taken as the larger of it and its record count
less one). Whatever in it the CRC covers is not trusted: it is read as neither a control batch nor a transactional one.

`aiokafka_reader()`: consumers started inside it read with aiokafka's reader unchanged (the benchmarks' plain
baselines: what a plain aiokafka script does). The choice is made when a consumer starts: its fetcher's task keeps the
context it was created in.
"""

from __future__ import annotations

import contextlib
import contextvars
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from aiokafka import codec
from aiokafka.consumer import fetcher as _fetcher
from aiokafka.record.default_records import DefaultRecordBase
from aiokafka.record.memory_records import _MemoryRecordsPy
from aiokafka.record.util import calc_crc32c as crc32c
from aiokafka.record.util import decode_varint

# Which records every consumer of ours reads (the services' in services.runtime.broker and .batch, the operators'
# observers in .kafkaread): a producer outside (a regional system, a portal) may publish in Kafka transactions, and
# what it aborted never happened; Kafka's default, read_uncommitted, hands aborted records over like any other.
ISOLATION_LEVEL: Literal["read_committed"] = "read_committed"

# The reader of aiokafka's fetcher before install(): the compiled MemoryRecords.
_AIOKAFKA_MEMORY_RECORDS: Callable[[bytes], Any] = _fetcher.MemoryRecords
_PLAIN: contextvars.ContextVar[bool] = contextvars.ContextVar("flows_plain_aiokafka_reader", default=False)

_BATCH_HEADER_SIZE = DefaultRecordBase.HEADER_STRUCT.size  # records start after it (magic 2)
_BASE_OFFSET = struct.Struct(">q")  # a batch's first field
_MAGIC_OFFSET = struct.calcsize(">qii")
_DECOMPRESS: dict[int, Callable[[bytes], bytes]] = {
    DefaultRecordBase.CODEC_GZIP: codec.gzip_decode,
    DefaultRecordBase.CODEC_SNAPPY: codec.snappy_decode,
    DefaultRecordBase.CODEC_LZ4: codec.lz4_decode,
    DefaultRecordBase.CODEC_ZSTD: codec.zstd_decode,
}


def install() -> None:
    """aiokafka's fetcher reads fetched bytes with `memory_records` from now on (idempotent)."""
    _fetcher.MemoryRecords = memory_records  # type: ignore[assignment,misc]


@contextlib.contextmanager
def aiokafka_reader() -> Iterator[None]:
    """Consumers started in this block read with aiokafka's own reader, whatever `install()` did."""
    token = _PLAIN.set(True)
    try:
        yield
    finally:
        _PLAIN.reset(token)


def memory_records(data: bytes) -> Any:
    """The reader of one partition's fetched bytes: aiokafka's compiled one inside `aiokafka_reader()`, else
    `TolerantMemoryRecords`."""
    return _AIOKAFKA_MEMORY_RECORDS(data) if _PLAIN.get() else TolerantMemoryRecords(data)


class TolerantMemoryRecords(_MemoryRecordsPy):
    """aiokafka's framing of a fetch into record batches (its Python reader: per batch, not per record), each batch
    aiokafka's compiled one, read past a record it refuses by `lenient_records`."""

    def next_batch(self, *args: Any) -> Any:
        data = self._next_slice
        batch = super().next_batch(*args)
        if data is None or batch is None or data[_MAGIC_OFFSET] < 2:
            return batch  # magic 0 and 1 (Kafka < 0.11) have no headers
        if not batch.validate_crc():  # the fetcher's own check, done here once (_Batch.validate_crc)
            following = self._next_slice  # the next batch of this fetch, if any (super() moved on to it)
            next_base = None if following is None else int(_BASE_OFFSET.unpack_from(following)[0])
            return corrupt_batch(batch, bytes(data), next_base)
        return _Batch(batch, bytes(data))


class _Batch:
    """One record batch: aiokafka's, until it refuses a record; the rest by `lenient_records`. Everything else
    (offsets, control and transaction flags) is aiokafka's batch's; its CRC was checked by `next_batch`."""

    __slots__ = ("_batch", "_data")

    def __init__(self, batch: Any, data: bytes) -> None:
        self._batch = batch
        self._data = data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batch, name)

    def validate_crc(self) -> bool:
        return True  # TolerantMemoryRecords.next_batch checked it: a batch that fails is a _CorruptBatch

    def __next__(self) -> Any:  # a control batch's marker (aiokafka's fetcher reads it with next())
        return next(self._batch)

    def __iter__(self) -> Iterator[Any]:
        done = -1
        try:
            for record in self._batch:
                done = record.offset
                yield record
        except UnicodeDecodeError:
            yield from (r for r in lenient_records(self._batch, self._data) if r.offset > done)


class CorruptBatch(str):
    """Why a record batch cannot be read: the `checksum` of the one record a corrupt batch is read as (a record
    fetched from Kafka has an int or None there, never this)."""


@dataclass(frozen=True, slots=True)
class _CorruptBatch:
    """A record batch whose CRC does not match its bytes, read as one record (the module's docstring). The fetcher
    asks it what it asks a batch: not a control batch, not transactional (those flags are under the CRC), its next
    offset, its CRC (checked: the record says it is not valid), and its records."""

    base_offset: int
    next_offset: int
    record: LenientRecord
    producer_id: None = None
    is_control_batch: bool = False
    is_transactional: bool = False

    def validate_crc(self) -> bool:
        return True  # it fails: that is what its one record says, to the consumer that reads it

    def __iter__(self) -> Iterator[LenientRecord]:
        yield self.record


def corrupt_batch(batch: Any, data: bytes, next_base: int | None) -> _CorruptBatch:
    """The batch `data` (aiokafka's reader of it: `batch`) whose CRC failed, `next_base` the base offset of the batch
    after it in the same fetch (None: it is the fetch's last)."""
    base = batch.base_offset
    header = DefaultRecordBase.HEADER_STRUCT.unpack_from(data)
    stored_crc, last_delta, count = header[4], header[6], header[12]
    claimed = base + max(last_delta, count - 1, 0)
    last = next_base - 1 if next_base is not None and next_base > base else claimed
    computed = crc32c(data[DefaultRecordBase.ATTRIBUTES_OFFSET:])
    held = f"offset {base}" if last == base else f"offsets {base}..{last}"
    reason = CorruptBatch(
        f"record batch at {held} is corrupt: its CRC-32C is {stored_crc:08x}, its {len(data)} bytes give "
        f"{computed:08x} (damaged on a broker's disk or in memory after it was produced); its records cannot be read, "
        f"the batch's bytes are this message's value")
    record = LenientRecord(last, -1, 0, None, data, [], reason)
    return _CorruptBatch(base, last + 1, record)


# The dead letter of a corrupt batch says so (broker.dead_letter_headers): its value is the batch's bytes, which no
# consumer can read, so it is never redriven (services.runtime.deadletters.redrive).
DLQ_CORRUPT_BATCH = "dlq_record_batch"


def corrupt_batch_problem(raw: Any) -> str | None:
    """What a consumed record says when it is a corrupt batch (`corrupt_batch`), else None."""
    checksum = getattr(raw, "checksum", None)
    return str(checksum) if isinstance(checksum, CorruptBatch) else None


@dataclass(frozen=True, slots=True)
class LenientRecord:
    """A record as aiokafka's reader gives it (offset, timestamp, key, value, headers), its header names decoded with
    "surrogateescape" (`header_name_problem`)."""

    offset: int
    timestamp: int
    timestamp_type: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    checksum: CorruptBatch | None = None  # None as aiokafka's magic 2 records; a CorruptBatch (corrupt_batch)


def lenient_records(batch: Any, data: bytes) -> Iterator[LenientRecord]:
    """The records of a record batch (magic 2, the bytes `data` of which `batch` is aiokafka's reader), read by the
    protocol's layout: Length (a varint), Attributes (an int8), TimestampDelta, OffsetDelta (varints), Key, Value
    (a varint length, -1 for null, then the bytes), then the headers (a varint count; each a name and a value, the same
    way)."""
    records = memoryview(data)[_BATCH_HEADER_SIZE:]
    codec_id = batch.compression_type
    if codec_id != DefaultRecordBase.CODEC_NONE:
        records = memoryview(_DECOMPRESS[codec_id](records.tobytes()))
    buffer = bytearray(records)
    log_append = batch.timestamp_type == DefaultRecordBase.LOG_APPEND_TIME
    pos = 0
    while pos < len(buffer):
        length, pos = decode_varint(buffer, pos)
        end = pos + length
        pos += 1  # Attributes, an int8: unused
        ts_delta, pos = decode_varint(buffer, pos)
        offset_delta, pos = decode_varint(buffer, pos)
        key, pos = _bytes(buffer, pos)
        value, pos = _bytes(buffer, pos)
        count, pos = decode_varint(buffer, pos)
        headers: list[tuple[str, bytes | None]] = []
        for _ in range(count):
            name, pos = _bytes(buffer, pos)
            header_value, pos = _bytes(buffer, pos)
            headers.append(((name or b"").decode("utf-8", "surrogateescape"), header_value))
        if pos != end:
            raise ValueError(f"record at offset {batch.base_offset + offset_delta} is {length} bytes long, "
                             f"its fields {pos - end + length}")
        yield LenientRecord(batch.base_offset + offset_delta,
                            batch.max_timestamp if log_append else batch.first_timestamp + ts_delta,
                            batch.timestamp_type, key, value, headers)


def _bytes(buffer: bytearray, pos: int) -> tuple[bytes | None, int]:
    size, pos = decode_varint(buffer, pos)
    if size < 0:
        return None, pos
    return bytes(buffer[pos:pos + size]), pos + size


def header_name_problem(name: str) -> str | None:
    """Why a header's name (as a record gives it) is not a header name: not UTF-8 (its bytes shown), else None."""
    if name.isascii():
        return None
    try:
        name.encode()
    except UnicodeEncodeError:
        raw = name.encode("utf-8", "surrogateescape")
        return f"a header name is not UTF-8 ({raw[:40]!r})"
    return None


def printable_name(name: str) -> str:
    """A header name that can be written anywhere (a dead letter's header, a log line): a name that is not UTF-8 with
    its bytes escaped (\\xff), any other as it is."""
    if header_name_problem(name) is None:
        return name
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
