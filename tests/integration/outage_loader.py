"""The real loader service for the outage test, alone in its consumer groups.

    python -m tests.integration.outage_loader SUFFIX [--resume]

`services.loader.app.main()` unchanged, except that its consumer groups are `<group>-SUFFIX`: a
test session may run other loaders (the e2e platform) in the groups `loader` and `loader-sources`,
which would otherwise share the partitions with this one. The new groups start at the end of each
topic (committed before the service starts), not at the session's whole history; with `--resume`
(a loader after one that was killed, in its groups) they start where that one's commits left them.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from contracts.topics import INTAKE_TOPICS
from services.loader import app
from services.runtime import broker


async def start_at_the_end(bootstrap: str, group: str, topics: list[str]) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        # Not consumer.topics() + partitions_for_topic(): the consumer's own metadata only covers the topics it
        # subscribed to, so that returned None for every topic and nothing was ever committed here.
        cluster = await consumer._client.fetch_all_metadata()
        partitions = [TopicPartition(t, p) for t in topics for p in cluster.partitions_for_topic(t) or ()]
        if partitions:
            consumer.assign(partitions)
            ends = await consumer.end_offsets(partitions)
            await consumer.commit(dict(ends.items()))
    finally:
        await consumer.stop()


def main(suffix: str, resume: bool = False) -> None:
    def consume_alone(b: Any, topic: Any, *, group_id: str, **kw: Any) -> None:
        broker.consume(b, topic, group_id=f"{group_id}-{suffix}", **kw)

    bootstrap = os.environ["FLOWS_KAFKA_BOOTSTRAP"]
    sources = [t.name for t in INTAKE_TOPICS]
    if not resume:
        asyncio.run(start_at_the_end(bootstrap, f"loader-{suffix}", ["flows.load-requested"]))
        asyncio.run(start_at_the_end(bootstrap, f"loader-sources-{suffix}", sources))
    app.consume = consume_alone  # type: ignore[assignment]
    app.SOURCES_GROUP = f"loader-sources-{suffix}"  # the batched intake (services.loader.batch_intake)
    asyncio.run(app.main())


if __name__ == "__main__":
    main(sys.argv[1], resume="--resume" in sys.argv[2:])
