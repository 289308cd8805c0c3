"""The loader service: source intake ("Fonti dati") and loads (snapshot -> checks -> outcome).

Subscriptions: `flows.load-requested`, `sources.*`. Loops: scheduled and interrupted loads.
"""

from __future__ import annotations

import asyncio
import functools
from datetime import UTC, datetime

from contracts import flows
from contracts.topics import SOURCE_TOPICS, by_name
from services.loader import handlers
from services.runtime.broker import consume
from services.runtime.host import Runtime, every, runtime, serve
from services.runtime.settings import Settings


def wire(rt: Runtime) -> handlers.LoaderDeps:
    deps = handlers.LoaderDeps(pool=rt.pool, store=rt.store, files=rt.files)
    attempts = rt.settings.max_attempts
    consume(rt.broker, by_name(flows.TYPE_OF[flows.LoadRequested]), group_id="loader",
            handler=functools.partial(handlers.handle_load_requested, deps=deps), max_attempts=attempts,
            probe=rt.probe_database)
    for topic in SOURCE_TOPICS:
        if topic.name == "sources.record-rejected":
            continue
        consume(rt.broker, topic, group_id="loader-sources",
                handler=functools.partial(handlers.handle_source_record, deps=deps), max_attempts=attempts,
                on_invalid=functools.partial(handlers.reject_source_record, deps=deps, kind=topic.name),
                probe=rt.probe_database)
    return deps


async def main(settings: Settings | None = None, stop: asyncio.Event | None = None) -> None:
    settings = settings or Settings()
    async with runtime(settings, name="loader") as rt:
        deps = wire(rt)

        async def start_due_loads(stop: asyncio.Event) -> None:
            async def tick() -> None:
                for instance in await handlers.due_instances(rt.pool, datetime.now(UTC)):
                    await handlers.run_instance(instance, deps)
            await every(2.0, stop, tick, "loader.due-loads")

        await serve(rt, [start_due_loads], stop=stop)
