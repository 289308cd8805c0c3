"""The loader's batched source intake in its own process, for the kill -9 test.

    python -m tests.integration.batch_intake_process TOPIC GROUP DATABASE_URL BOOTSTRAP

`services.loader.batch_intake.BatchIntake` (the real sink) behind `services.runtime.batch.BatchConsumer`,
on a test topic carrying delivered services. Set FLOWS_BATCH_PAUSE_BEFORE_COMMIT_S to hold it between
the batch's transaction and its offset commit. Its JSON log (stderr) says `batch.stored` there.
Set FLOWS_TEST_SESSION_TIMEOUT_MS to give its group membership a shorter session than the service's 30 s: a
process killed with SIGKILL leaves the group only when its session expires, and until then the group cannot
give its partitions to the next member.
"""

from __future__ import annotations

import asyncio
import os
import sys

from contracts.sources import DeliveredService
from contracts.topics import Topic
from services.loader.batch_intake import BatchIntake
from services.runtime import batch
from services.runtime.batch import BatchConsumer
from services.runtime.db import create_pool
from services.runtime.eventstore import EventStore
from services.runtime.logging import configure
from services.runtime.settings import bootstrap_list

SESSION_ENV = "FLOWS_TEST_SESSION_TIMEOUT_MS"


async def main(topic_name: str, group: str, database_url: str, bootstrap: str) -> None:
    configure("INFO", "json")
    if session_ms := os.environ.get(SESSION_ENV):
        batch.SESSION_TIMEOUT_MS = int(session_ms)  # read when the consumer is made
    topic = Topic(topic_name, DeliveredService, "source_id", "batch intake probe", ("test",))
    pool = await create_pool(database_url, min_size=1, max_size=4)
    try:
        sink = BatchIntake(EventStore(pool, source="/flows/loader"), pool)
        consumer = BatchConsumer(bootstrap_list(bootstrap), [topic], group, sink, pool)
        await consumer.run(asyncio.Event())
    finally:
        await pool.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]))
