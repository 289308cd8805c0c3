"""The formatter service: Checked instances -> files (C1/C2, MEF, ALPI TA, 730) -> Formatted."""

from __future__ import annotations

import asyncio
import functools

from contracts import flows
from contracts.topics import by_name
from services.formatter import handlers
from services.runtime.broker import consume
from services.runtime.host import Runtime, every, runtime, serve
from services.runtime.settings import Settings


def wire(rt: Runtime) -> handlers.FormatterDeps:
    deps = handlers.FormatterDeps(pool=rt.pool, store=rt.store, files=rt.files,
                                  sanitel_cert=rt.settings.sanitel_cert,
                                  max_zip_bytes=rt.settings.ts_max_zip_bytes)
    consume(rt.broker, by_name(flows.TYPE_OF[flows.FormatRequested]), group_id="formatter",
            handler=functools.partial(handlers.handle_format_requested, deps=deps),
            max_attempts=rt.settings.max_attempts, probe=rt.probe_database)
    return deps


async def main(settings: Settings | None = None, stop: asyncio.Event | None = None) -> None:
    settings = settings or Settings()
    async with runtime(settings, name="formatter") as rt:
        deps = wire(rt)
        # Flusso C's compiled kernels (fastpath.py): compiled, or loaded from numba's disk cache, now rather
        # than by the first format request; a request that comes first waits for the same compilation.
        warm = asyncio.get_running_loop().run_in_executor(None, _warm_up)

        async def resume(stop: asyncio.Event) -> None:
            await every(5.0, stop, lambda: handlers.resume_interrupted(deps), "formatter.resume")

        try:
            await serve(rt, [resume], stop=stop)
        finally:
            await asyncio.gather(warm, return_exceptions=True)


def _warm_up() -> None:
    from services.formatter import fastpath

    fastpath.warm_up()
