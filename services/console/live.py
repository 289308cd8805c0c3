"""Live updates: one Kafka consumer per console process, fanned out to the open pages.

The consumer reads the instance event topics from their end, without a consumer group (every
console replica sees every event; nothing is committed). Each event is keyed by its instance, and
the pages watching that instance get the event type; they then fetch the instance's fresh state
through an authorized route, so the stream itself carries no personal data.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict

import structlog
from aiokafka import AIOKafkaConsumer

from contracts import flows
from contracts.topics import by_name

log = structlog.get_logger("console.live")

INSTANCE_TOPICS = tuple(flows.TYPE_OF[model] for model in (
    flows.LoadScheduled, flows.LoadRunning, flows.LoadChecked, flows.LoadFailed, flows.FormattingStarted,
    flows.Formatted, flows.FormatFailed, flows.TsSubmitted, flows.TsFeedbackReceived, flows.InstanceDeleted))
for _name in INSTANCE_TOPICS:
    by_name(_name)  # fails at import when the registry renames a topic


async def next_change(queue: asyncio.Queue[str], wake: asyncio.Event, timeout: float) -> str | None:
    """The next event type of `queue`; None once `wake` is set (at once if it already is) or `timeout` passed. An
    event that arrives meanwhile stays in the queue for the next call (asyncio.Queue.get takes it only when it
    runs)."""
    if wake.is_set():
        return None
    if not queue.empty():
        return queue.get_nowait()
    getter, waker = asyncio.ensure_future(queue.get()), asyncio.ensure_future(wake.wait())
    try:
        await asyncio.wait((getter, waker), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waker.cancel()
        if not getter.done():
            getter.cancel()
    return getter.result() if getter.done() and not getter.cancelled() else None


class LiveFeed:
    def __init__(self, bootstrap: list[str]) -> None:
        self._bootstrap = bootstrap
        self._watchers: dict[int, set[asyncio.Queue[str]]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    def watch(self, instance: int) -> asyncio.Queue[str]:
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=100)
        self._watchers[instance].add(queue)
        return queue

    def unwatch(self, instance: int, queue: asyncio.Queue[str]) -> None:
        self._watchers[instance].discard(queue)
        if not self._watchers[instance]:
            self._watchers.pop(instance, None)

    def publish(self, instance: int, event_type: str) -> None:
        for queue in list(self._watchers.get(instance, ())):
            with contextlib.suppress(asyncio.QueueFull):  # a stalled page refetches on its next event anyway
                queue.put_nowait(event_type)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="console-live-feed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            consumer = AIOKafkaConsumer(*INSTANCE_TOPICS, bootstrap_servers=self._bootstrap, group_id=None,
                                        auto_offset_reset="latest", enable_auto_commit=False,
                                        metadata_max_age_ms=5000)
            try:
                await consumer.start()
                # The topics exist once the broker answered the metadata request (it creates missing ones);
                # then position at the end of every partition, so that `ready` means "sees what comes next".
                async with asyncio.timeout(30):
                    while {tp.topic for tp in consumer.assignment()} != set(INSTANCE_TOPICS):
                        await asyncio.sleep(0.1)
                await consumer.seek_to_end()
                for tp in consumer.assignment():
                    await consumer.position(tp)
                self.ready.set()
                async for message in consumer:
                    try:
                        instance = int((message.key or b"").decode())
                    except ValueError:
                        continue
                    self.publish(instance, message.topic)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Kafka away: the pages keep their last state; try again shortly
                log.warning("live feed interrupted", error=str(exc))
                self.ready.clear()
                await asyncio.sleep(2)
            finally:
                await consumer.stop()
