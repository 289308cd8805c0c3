"""The formatter service: Checked instances -> files (C1/C2, MEF, ALPI TA, 730) -> Formatted."""

from __future__ import annotations

import asyncio
import functools
import threading

from contracts import flows
from contracts.topics import by_name
from services.formatter import handlers
from services.runtime.broker import consume
from services.runtime.host import Runtime, every, first_retry_s, runtime, serve, space_waits
from services.runtime.settings import Settings

GROUP = "formatter"  # the consumer group of the format commands


def wire(rt: Runtime) -> handlers.FormatterDeps:
    settings = rt.settings
    deps = handlers.FormatterDeps(pool=rt.pool, store=rt.store, files=rt.files,
                                  sanitel_cert=settings.sanitel_cert,
                                  max_zip_bytes=settings.ts_max_zip_bytes,
                                  line_end=settings.fixed_width_line_end,
                                  interrupted=handlers.interruptions(first_retry_s(settings),
                                                                     settings.interrupted_retry_cap_s),
                                  space=space_waits(settings, handlers.log))
    consume(rt.broker, by_name(flows.TYPE_OF[flows.FormatRequested]), group_id=GROUP,
            handler=functools.partial(handlers.handle_format_requested, deps=deps),
            max_attempts=rt.settings.max_attempts, probe=rt.probe_database)
    return deps


def pass_period(settings: Settings) -> float:
    """Seconds between two resume passes (FLOWS_PASS_S, else RESUME_PASS_S)."""
    return settings.pass_s or handlers.RESUME_PASS_S


async def main(settings: Settings | None = None, stop: asyncio.Event | None = None) -> None:
    settings = settings or Settings()
    async with runtime(settings, name="formatter") as rt:
        deps = wire(rt)
        # Flusso C's compiled kernels (fastpath.py): compiled, or loaded from numba's disk cache, now rather
        # than by the first format request; a request that comes first waits for the same compilation.
        threading.Thread(target=_warm_up, name="formatter-warm-up", daemon=True).start()

        async def resume(stop: asyncio.Event) -> None:
            await every(pass_period(settings), stop, lambda: handlers.resume_interrupted(deps), "formatter.resume")

        await serve(rt, [resume], stop=stop)


def _warm_up() -> None:
    """Loads the kernels at the service's own priority. Not niced: this thread holds the GIL and numba's compiler
    lock while it loads them (about 1.3 s of a core from the disk cache ./run fills; a compilation without it, ~20 s,
    is once per checkout or image), so a thread at nice 19, starved on a loaded host, stalled the whole service
    with it: under 8 busy loops the load took 46 s instead of 7 s, the event loop stood still up to 8 s at a time
    (Kafka heartbeats missed: the consumer thrown out of its group, twice in a row) and a format waited for the
    kernels for over a minute (the format after a connection cut, tests/integration/test_replicas.py, Formatting
    in progress after 60 s). At the process's priority the event loop stood still at most 0.8 s."""
    from services.formatter import fastpath

    fastpath.warm_up()
