"""Runs one service process: database pool and migrations, read models, event store, broker,
the outbox relay, the service's background loops; stops cleanly on SIGTERM/SIGINT.

Every service runs an outbox relay: only the one holding the advisory lock publishes, the others
are hot standbys, so losing any one service process never stops events reaching Kafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from faststream.kafka import KafkaBroker

from services.runtime import health, tracing
from services.runtime import projections as projection_tools
from services.runtime.broker import create_broker
from services.runtime.db import create_pool
from services.runtime.eventstore import EventStore
from services.runtime.filestore import SPACE_WAIT_INITIAL_S, FileStore, SpaceWaits
from services.runtime.locks import PROJECTION_INSTALL_LOCK_KEY
from services.runtime.logging import configure, get_logger
from services.runtime.migrations import migrate
from services.runtime.outbox import OutboxRelay
from services.runtime.projections import Projection
from services.runtime.read_models import FLOW_PROJECTIONS
from services.runtime.settings import Settings
from services.runtime.topics_admin import registry_topic_provisioner

Loop = Callable[[asyncio.Event], Coroutine[Any, Any, None]]
OUTAGE_BACKOFF_CAP_S = 30.0


def run_process(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """`python -m services.X`: the service's main on uvloop (pinned, as the console's uvicorn uses it). A
    service's work is round trips to PostgreSQL and Kafka; libuv's C loop takes part of each one's Python cost
    (bench/latency.py, a small load: p50 ~10.7 -> ~9.8 ms in alternating runs)."""
    import uvloop

    uvloop.run(main())



def first_retry_s(settings: Settings) -> float | None:
    """The first delay of interrupted work: FLOWS_INTERRUPTED_RETRY_INITIAL_S, else FLOWS_PASS_S (the pass's own
    period, which the first retry follows), else None: the service's own pass period (handlers.interruptions)."""
    return settings.interrupted_retry_initial_s or settings.pass_s


def space_waits(settings: Settings, log: Any) -> SpaceWaits:
    """The service's work waiting for a full file store: its first wait FLOWS_SPACE_WAIT_INITIAL_S, else
    SPACE_WAIT_INITIAL_S."""
    return SpaceWaits(log, initial_s=settings.space_wait_initial_s or SPACE_WAIT_INITIAL_S)

@dataclass
class Runtime:
    name: str
    settings: Settings
    pool: asyncpg.Pool
    store: EventStore
    broker: KafkaBroker
    files: FileStore

    async def probe_database(self) -> None:
        """Raises while PostgreSQL is unreachable: what a consumer waiting out an outage probes."""
        async with self.pool.acquire(timeout=5.0) as conn:
            await conn.fetchval("SELECT 1", timeout=5.0)


async def prepare_database(pool: asyncpg.Pool, projections: Sequence[Projection]) -> None:
    await migrate(pool)
    async with pool.acquire() as conn:
        # Live read-model tables are created by the projections' own DDL (IF NOT EXISTS), the same DDL a
        # rebuild uses, so live and rebuilt tables cannot differ in shape.
        await conn.execute("SELECT pg_advisory_lock($1)", PROJECTION_INSTALL_LOCK_KEY)
        try:
            for projection in projections:
                await projection_tools.install(conn, projection)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", PROJECTION_INSTALL_LOCK_KEY)


@contextlib.asynccontextmanager
async def runtime(settings: Settings, *, name: str,
                  projections: Sequence[Projection] = FLOW_PROJECTIONS) -> AsyncIterator[Runtime]:
    configure(settings.log_level, settings.log_format)
    tracing.setup(settings, name)
    pool = await create_pool(settings.database_url, min_size=1, max_size=10)
    try:
        await prepare_database(pool, projections)
        store = EventStore(pool, source=f"/flows/{name}", projections=projections, replica=settings.replica)
        broker = create_broker(settings, client_id=name)
        settings.files_dir.mkdir(parents=True, exist_ok=True)
        files = FileStore(settings.files_dir)
        for path, size in files.sweep_temporaries():  # left by a process killed mid-file
            get_logger(name).warning("store.stale_temporary_removed", path=str(path), bytes=size)
        yield Runtime(name, settings, pool, store, broker, files)
    finally:
        await pool.close()


async def serve(rt: Runtime, loops: Sequence[Loop] = (), stop: asyncio.Event | None = None) -> None:
    """Consumes until `stop` is set (or a signal arrives), with the relay and `loops` alongside."""
    log = get_logger(rt.name)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    relay = OutboxRelay(rt.pool, rt.settings.kafka_bootstrap, poll_interval=1.0,
                        provision=registry_topic_provisioner(rt.settings.kafka_bootstrap, rt.settings.topic_partitions))
    rt.store.offers = relay  # one-event appends offer their outbox rows: sent without being read back
    if rt.settings.metrics_port:
        from prometheus_client import start_http_server

        # FastStream's Prometheus middleware (services.runtime.broker) fills the default registry.
        start_http_server(rt.settings.metrics_port)
    await rt.broker.start()
    probes = contextlib.AsyncExitStack()  # /healthz, /readyz, /metrics when health_port is set
    await probes.enter_async_context(health.serving(rt.name, health.service_checks(rt.pool, rt.broker),
                                                    rt.settings.health_host, rt.settings.health_port))

    async def relay_forever(stop: asyncio.Event) -> None:
        # The relay gives up if Kafka is unreachable when it starts: start it again, never leave the
        # outbox undelivered while the service otherwise runs.
        # An outage (PostgreSQL or Kafka down) is waited out with capped exponential backoff: one log
        # line per try, at most one every 30 s however long it lasts.
        failures = 0
        while not stop.is_set():
            started = loop.time()
            try:
                await relay.run(stop)
            except Exception as exc:
                failures = 1 if loop.time() - started > OUTAGE_BACKOFF_CAP_S else failures + 1
                delay = min(2.0 * 2 ** (failures - 1), OUTAGE_BACKOFF_CAP_S)
                log.error("outbox.relay_failed", error=f"{type(exc).__name__}: {exc}"[:500], retry_in_s=delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)

    tasks = [asyncio.create_task(relay_forever(stop), name="outbox-relay")]
    tasks += [asyncio.create_task(fn(stop), name=getattr(fn, "__name__", "loop")) for fn in loops]
    log.info("service.started", service=rt.name)
    try:
        done, _ = await asyncio.wait([asyncio.create_task(stop.wait()), *tasks],
                                     return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task in tasks and task.exception() is not None:
                log.error("service.loop_failed", loop=task.get_name(), error=repr(task.exception()))
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await probes.aclose()
        await rt.broker.stop()
        log.info("service.stopped", service=rt.name)


async def every(seconds: float, stop: asyncio.Event, fn: Callable[[], Awaitable[None]], name: str) -> None:
    """Runs `fn` now and then every `seconds` until stopped; an error is logged and retried next tick."""
    log = get_logger(name)
    failures = 0
    while not stop.is_set():
        wait = seconds
        try:
            await fn()
            failures = 0
        except Exception as exc:
            # Failing ticks back off (capped): an outage does not write a line every `seconds`.
            failures += 1
            wait = max(seconds, min(seconds * 2 ** (failures - 1), OUTAGE_BACKOFF_CAP_S))
            log.error("loop.error", loop=name, error=f"{type(exc).__name__}: {exc}"[:500], retry_in_s=wait)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), wait)
