"""The loader's and the formatter's handlers run in the test's process on a scratch database of the stack, with
source data stored: what tests of one load or formatting, driven step by step, start from."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

from contracts.sources import DeliveredService
from services.formatter import handlers as formatter_handlers
from services.loader import handlers as loader_handlers
from services.loader.intake import store_services
from services.runtime.backoff import Interruptions
from services.runtime.db import create_pool
from services.runtime.eventstore import EventStore
from services.runtime.filestore import FileStore
from services.runtime.host import prepare_database
from services.runtime.read_models import FLOW_PROJECTIONS
from simulators.cup.generator import generate
from tests.integration.test_interruptions import _Lines, _loader
from tests.isolation import scratch_database


@asynccontextmanager
async def loader_on_services(prefix: str, files: Path, service: str, *, services: int, seed: int
                             ) -> AsyncIterator[tuple[asyncpg.Pool, loader_handlers.LoaderDeps]]:
    """A scratch database with `services` delivered services of ente 204 in August 2020 stored, and a loader's
    handlers on it (its files under `files`, its interruptions logged as `service`)."""
    async with scratch_database(prefix) as url:
        pool = await create_pool(url, min_size=1, max_size=4)
        try:
            await prepare_database(pool, FLOW_PROJECTIONS)
            async with pool.acquire() as conn:
                await store_services(conn, [r for r in generate("204", "2020-08", services, seed=seed)
                                            if isinstance(r, DeliveredService)])
            yield pool, _loader(pool, _Lines(), files, service)
        finally:
            await pool.close()


def formatter_on(pool: asyncpg.Pool, files: Path, service: str, line_end: str = "LF"
                 ) -> formatter_handlers.FormatterDeps:
    """A formatter's handlers on `pool` (its files under `files`, its fixed-width lines ending with `line_end`)."""
    return formatter_handlers.FormatterDeps(
        pool=pool, store=EventStore(pool, source="/flows/formatter", projections=FLOW_PROJECTIONS),
        files=FileStore(files), line_end=line_end,
        interrupted=Interruptions(_Lines(), initial_s=600.0, service=service, work="format"))
