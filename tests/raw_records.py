"""Records no ordinary Kafka client writes, published as the bytes they are: what a faulty producer (one that sends
a header name in another encoding, say) leaves on a topic.

aiokafka's producer writes every header name as UTF-8. `publish_with_header_name` makes ONE producer of this test
write one record batch with aiokafka's Python batch writer (the same record layout, byte for byte, as its compiled
one) and a header name that writes the given bytes instead; the broker stores them as it gets them, and every
consumer reads them back as they are. Only the writing side is bent; what consumes them is the real thing."""

from __future__ import annotations

from collections.abc import Sequence
from unittest import mock

from aiokafka import AIOKafkaProducer
from aiokafka.producer import message_accumulator
from aiokafka.producer import producer as producer_module
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy


class HeaderName(str):
    """A header name the Python batch writer writes as `raw` (it calls `name.encode("utf-8")`)."""

    raw: bytes

    def __new__(cls, raw: bytes) -> HeaderName:
        name = super().__new__(cls, raw.decode("latin-1"))
        name.raw = raw
        return name

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.raw


async def publish_with_header_name(bootstrap: str, topic: str, value: bytes, *, key: bytes | None,
                                   headers: Sequence[tuple[str, bytes | None]], name: bytes,
                                   name_value: bytes = b"x", partition: int | None = None) -> int:
    """Publishes one record with `headers` and one more header named by the bytes `name`; returns its offset."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    with mock.patch.object(message_accumulator, "DefaultRecordBatchBuilder", _DefaultRecordBatchBuilderPy), \
            mock.patch.object(producer_module, "DefaultRecordBatchBuilder", _DefaultRecordBatchBuilderPy):
        await producer.start()
        try:
            sent = await producer.send_and_wait(topic, value, key=key, partition=partition,
                                                headers=[*headers, (HeaderName(name), name_value)])
        finally:
            await producer.stop()
    return sent.offset
