"""The audit service: signs a checkpoint of the event store every `checkpoint_interval_s` seconds,
refreshes the platform's ops figures (services.runtime.opsmetrics) for its /metrics, and deletes what the
platform keeps only for a while (services.runtime.housekeeping) every `housekeeping_interval_s`.

It holds the checkpoint signing key (a file on its host, never in the database). A checkpoint is
only taken when events were appended since the latest one; `flows audit checkpoint` takes one on
demand. Only one audit service signs at a time (a PostgreSQL advisory lock), so two never write
the same checkpoint-N.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Coroutine
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry

from services.runtime import checkpoints, health, housekeeping, opsmetrics
from services.runtime.db import create_pool
from services.runtime.host import every
from services.runtime.locks import SIGNER_LOCK_KEY, platform_lock
from services.runtime.logging import configure, get_logger
from services.runtime.settings import Settings


async def main(settings: Settings | None = None, stop: asyncio.Event | None = None,
               registry: CollectorRegistry | None = None) -> None:
    settings = settings or Settings()
    configure(settings.log_level, settings.log_format)
    log = get_logger("audit")
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    checkpoints.signing_key(settings.checkpoint_key, settings.checkpoints_dir)  # fail at start, not at a tick
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        async def tick() -> None:
            async with platform_lock(pool, SIGNER_LOCK_KEY) as held:
                if held is None:
                    return
                taken = await checkpoints.take(pool, settings.checkpoint_key, settings.checkpoints_dir,
                                               settings.kafka_bootstrap)
            if taken.new:
                cp = taken.checkpoint
                log.info("checkpoint.signed", sequence=cp.sequence, streams=cp.tree_size, events=cp.events,
                         root=cp.root, file=str(taken.path))

        async def key_check() -> tuple[bool, str]:
            checkpoints.signing_key(settings.checkpoint_key, settings.checkpoints_dir)  # raises: missing, too open
            return True, f"{settings.checkpoint_key} readable by this user only"

        figures = opsmetrics.for_registry(registry or REGISTRY)

        async def refresh() -> None:
            await figures.refresh(pool, settings.kafka_bootstrap, watched_from=settings.deadlines_watched_from,
                                  enti=settings.deadlines_enti)

        async def tidy() -> None:
            pruned = await housekeeping.prune(pool)
            if pruned.processed or pruned.outbox:
                log.info("housekeeping.pruned", processed_messages=pruned.processed, outbox_rows=pruned.outbox)

        loops: list[Coroutine[Any, Any, Any]] = [stop.wait()]
        if settings.checkpoint_interval_s > 0:
            loops.append(every(settings.checkpoint_interval_s, stop, tick, "audit.checkpoint"))
        if settings.ops_metrics_interval_s > 0:
            loops.append(every(settings.ops_metrics_interval_s, stop, refresh, "audit.ops-metrics"))
        if settings.housekeeping_interval_s > 0:
            loops.append(every(settings.housekeeping_interval_s, stop, tidy, "audit.housekeeping"))
        checks = health.service_checks(pool, None, [("signing_key", key_check)])
        async with health.serving("audit", checks, settings.health_host, settings.health_port, registry):
            log.info("service.started", service="audit", interval_s=settings.checkpoint_interval_s)
            await asyncio.gather(*loops)
    finally:
        await pool.close()
        log.info("service.stopped", service="audit")
