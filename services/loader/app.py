"""The loader service: source intake ("Fonti dati") and loads (snapshot -> checks -> outcome).

Subscriptions: `flows.load-requested`; the source topics (contracts.topics.INTAKE_TOPICS) in batches
(services.loader.batch_intake). Loops: source intake, scheduled and interrupted loads (handlers.run_due).
"""

from __future__ import annotations

import asyncio
import functools

from contracts import flows
from contracts.topics import by_name
from services.loader import batch_intake, handlers
from services.runtime.broker import consume
from services.runtime.host import Runtime, every, first_retry_s, runtime, serve, space_waits
from services.runtime.settings import Settings

# The consumer group of the load commands, and that of source intake (a test may give its loader a group of its own).
COMMANDS_GROUP = "loader"
SOURCES_GROUP = batch_intake.GROUP


def wire(rt: Runtime) -> handlers.LoaderDeps:
    settings = rt.settings
    deps = handlers.LoaderDeps(pool=rt.pool, store=rt.store, files=rt.files, interrupted=handlers.interruptions(
        first_retry_s(settings), settings.interrupted_retry_cap_s), space=space_waits(settings, handlers.log))
    attempts = rt.settings.max_attempts
    consume(rt.broker, by_name(flows.TYPE_OF[flows.LoadRequested]), group_id=COMMANDS_GROUP,
            handler=functools.partial(handlers.handle_load_requested, deps=deps), max_attempts=attempts,
            probe=rt.probe_database)
    return deps


def pass_period(settings: Settings) -> float:
    """Seconds between two passes over Running and due Scheduled loads (FLOWS_PASS_S, else PASS_S)."""
    return settings.pass_s or handlers.PASS_S


async def main(settings: Settings | None = None, stop: asyncio.Event | None = None) -> None:
    settings = settings or Settings()
    async with runtime(settings, name="loader") as rt:
        deps = wire(rt)
        intake = batch_intake.batch_consumer(rt.store, rt.pool, rt.settings.bootstrap_list(), group_id=SOURCES_GROUP,
                                             probe=rt.probe_database, max_attempts=rt.settings.max_attempts)

        async def start_due_loads(stop: asyncio.Event) -> None:
            await every(pass_period(settings), stop, lambda: handlers.run_due(deps), "loader.due-loads")

        await serve(rt, [intake.run, start_due_loads], stop=stop)
