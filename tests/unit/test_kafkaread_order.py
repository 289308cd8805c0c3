"""services.runtime.kafkaread's order of records across partitions: by timestamp, then by the event's own time
(ce_time, microseconds) when two records share a millisecond, as a small load's Running and Checked on two topics
often do. By the timestamp alone their order was the order their partitions happened to be fetched in."""

from __future__ import annotations

from typing import Any

from aiokafka import ConsumerRecord, TopicPartition

from services.runtime.kafkaread import history, order_key

MS = 1_765_000_000_000


def _record(topic: str, ce_time: str | None, offset: int = 0) -> ConsumerRecord:
    headers = [("ce_id", b"x")] + ([("ce_time", ce_time.encode())] if ce_time else [])
    return ConsumerRecord(topic, 0, offset, MS, 0, b"k", b"{}", None, 1, 2, headers)


class _Consumer:
    """What history() asks of a consumer: every partition's one record at the first getmany, its end after it."""

    def __init__(self, records: dict[TopicPartition, ConsumerRecord]) -> None:
        self.records, self.read = records, set[TopicPartition]()

    async def end_offsets(self, parts: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(parts, 1)

    async def position(self, tp: TopicPartition) -> int:
        return 1 if tp in self.read else 0

    def pause(self, *parts: Any) -> None:
        pass

    def resume(self, *parts: Any) -> None:
        pass

    async def getmany(self, *parts: TopicPartition, timeout_ms: int) -> dict[TopicPartition, list[ConsumerRecord]]:
        self.read.update(parts)
        return {tp: [self.records[tp]] for tp in parts}


def test_the_event_s_own_time_orders_records_of_one_millisecond() -> None:
    running = _record("flows.load-running", "2026-12-07T23:15:29.123456Z")
    checked = _record("flows.load-checked", "2026-12-07T23:15:29.123789Z")
    assert order_key(running) < order_key(checked)
    assert order_key(_record("x", "2026-12-07T23:15:29Z")) < order_key(running)  # a whole second: no fraction
    assert order_key(_record("x", None)) < order_key(running)
    assert order_key(_record("x", "not a time")) < order_key(running)


async def test_history_gives_a_millisecond_s_records_in_their_events_order_whatever_the_fetch_order() -> None:
    """The partitions' fetch order (here the order history() walks its set of partitions) varies with the partitions:
    whichever it is, the Running comes first."""
    times = {"flows.load-running": "2026-12-07T23:15:29.123456Z", "flows.load-checked": "2026-12-07T23:15:29.5Z"}
    for p in range(4):
        for q in range(4):
            records = {TopicPartition(topic, n): _record(topic, times[topic])
                       for topic, n in (("flows.load-checked", p), ("flows.load-running", q))}
            got = [r.topic async for r in history(_Consumer(records), list(records))]  # type: ignore[arg-type]
            assert got == ["flows.load-running", "flows.load-checked"], (p, q, got)
