"""The formatter service: Checked instances -> files (C1/C2, MEF, ALPI TA, 730) -> Formatted."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading

from contracts import flows
from contracts.topics import by_name
from services.formatter import handlers
from services.runtime.broker import consume
from services.runtime.host import Runtime, every, runtime, serve
from services.runtime.settings import Settings

GROUP = "formatter"  # the consumer group of the format commands


def wire(rt: Runtime) -> handlers.FormatterDeps:
    deps = handlers.FormatterDeps(pool=rt.pool, store=rt.store, files=rt.files,
                                  sanitel_cert=rt.settings.sanitel_cert,
                                  max_zip_bytes=rt.settings.ts_max_zip_bytes,
                                  interrupted=handlers.interruptions(rt.settings.interrupted_retry_initial_s,
                                                                     rt.settings.interrupted_retry_cap_s))
    consume(rt.broker, by_name(flows.TYPE_OF[flows.FormatRequested]), group_id=GROUP,
            handler=functools.partial(handlers.handle_format_requested, deps=deps),
            max_attempts=rt.settings.max_attempts, probe=rt.probe_database)
    return deps


async def main(settings: Settings | None = None, stop: asyncio.Event | None = None) -> None:
    settings = settings or Settings()
    async with runtime(settings, name="formatter") as rt:
        deps = wire(rt)
        # Flusso C's compiled kernels (fastpath.py): compiled, or loaded from numba's disk cache, now rather
        # than by the first format request; a request that comes first waits for the same compilation.
        threading.Thread(target=_warm_up, name="formatter-warm-up", daemon=True).start()

        async def resume(stop: asyncio.Event) -> None:
            await every(handlers.RESUME_PASS_S, stop, lambda: handlers.resume_interrupted(deps), "formatter.resume")

        await serve(rt, [resume], stop=stop)


def _warm_up() -> None:
    from services.formatter import fastpath

    # a compilation (no disk cache yet) costs ~20 s of a core: at the lowest priority, this thread of its
    # own only (Linux nices threads one by one), so that it never slows the other services down
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    fastpath.warm_up()
