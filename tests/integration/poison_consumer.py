"""A consumer in its own process, for the poison tests: `consume()` of services.runtime.broker on a
test topic, with the loader's real rejection hook (`reject_source_record`) on a fresh database.

    python -m tests.integration.poison_consumer TOPIC GROUP DATABASE_URL BOOTSTRAP PROCESSED_FILE

Its structlog output (JSON, stderr) is what the test measures; each processed message logs
`probe.processed`. Each processed message appends its
`source_id` to PROCESSED_FILE. A rejected body carrying `"hook": "explode"` makes the hook raise, to
show that a failing rejection hook cannot block the partition.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from contracts.topics import Topic
from services.loader import handlers
from services.runtime.broker import Incoming, consume, create_broker
from services.runtime.db import create_pool
from services.runtime.eventstore import EventStore
from services.runtime.filestore import FileStore
from services.runtime.logging import configure, get_logger
from services.runtime.settings import Settings


class Greeting(BaseModel):
    source_id: str
    words: int = Field(ge=1)


async def main(topic_name: str, group: str, database_url: str, bootstrap: str, processed: Path) -> None:
    configure("INFO", "json")
    settings = Settings(database_url=database_url, kafka_bootstrap=bootstrap)
    topic = Topic(topic_name, Greeting, "source_id", "poison probe", ("test",))
    pool = await create_pool(database_url, min_size=1, max_size=4)
    deps = handlers.LoaderDeps(pool=pool, store=EventStore(pool, source="/flows/loader"),
                               files=FileStore(Path(tempfile.mkdtemp())))

    async def handler(payload: Greeting, incoming: Incoming) -> None:
        get_logger("probe").info("probe.processed", source_id=payload.source_id)
        with processed.open("a") as out:
            out.write(f"{payload.source_id}\n")

    async def hook(record_id: str | None, body: Any, reason: str) -> None:
        if isinstance(body, dict) and body.get("hook") == "explode":
            raise RuntimeError("the rejection hook exploded " + "!" * 100_000)
        await handlers.reject_source_record(record_id, body, reason, deps=deps, kind=topic_name)

    broker = create_broker(settings, client_id=group)
    consume(broker, topic, group_id=group, handler=handler, on_invalid=hook)
    await broker.start()
    try:
        await asyncio.Event().wait()
    finally:
        await broker.stop()
        await pool.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], Path(sys.argv[5])))
