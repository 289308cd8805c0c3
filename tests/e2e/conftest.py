"""The whole platform in the test process: a fresh database, clean topics, and the real services
(loader, formatter, TS gateway, onboarding) plus the TS simulator, each running its real `main()`
against the real Kafka and PostgreSQL of the test stack.

Topics are deleted at the start of the session: this is the test stack (see tests/conftest.py),
never the platform's own, and old messages would otherwise be consumed into the fresh database.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from services.runtime.settings import Settings

TS_USER, TS_PASSWORD, TS_PINCODE, TS_CF = "PROVAX00X00X000Y", "Salve123", "1234567890", "PROVAX00X00X000Y"


@dataclass
class Platform:
    settings: Settings
    ts_url: str
    simulator: Any
    tasks: dict[str, tuple[asyncio.Task[None], asyncio.Event]] = field(default_factory=dict)
    mains: dict[str, Callable[..., Coroutine[Any, Any, None]]] = field(default_factory=dict)

    def start(self, name: str) -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(self.mains[name](self.settings, stop), name=name)
        self.tasks[name] = (task, stop)

    async def stop(self, name: str, hard: bool = False) -> None:
        """`hard`: cancel mid-flight, like a killed process (no graceful shutdown)."""
        task, stop = self.tasks.pop(name)
        if hard:
            task.cancel()
        else:
            stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)

    async def pool(self) -> asyncpg.Pool:
        from services.runtime.db import create_pool

        return await create_pool(self.settings.database_url, min_size=1, max_size=4)


async def _clean_topics(bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if not t.startswith("__")]
        if topics:
            await admin.delete_topics(topics)
    finally:
        await admin.close()
    await asyncio.sleep(1.0)


@pytest.fixture(scope="session")
async def platform(stack, tmp_path_factory) -> AsyncIterator[Platform]:  # type: ignore[no-untyped-def]
    from services.formatter.app import main as formatter_main
    from services.loader.app import main as loader_main
    from services.ts_gateway.app import main as gateway_main
    from services.ts_gateway.simulator import TsSimulator
    from services.ts_gateway.simulator_rules import SimUser

    await _clean_topics(stack.bootstrap_servers)
    name = f"e2e_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(stack.database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    base = Path(tmp_path_factory.mktemp("platform"))
    simulator = TsSimulator([SimUser.from_clear(TS_USER, TS_PASSWORD, TS_PINCODE, TS_CF)])
    cert = simulator.write_certificate(base / "ts-sim")
    ts_url = await simulator.start("127.0.0.1", 0)
    settings = Settings(database_url=stack.database_url.rsplit("/", 1)[0] + f"/{name}",
                        kafka_bootstrap=stack.bootstrap_servers, files_dir=base / "files", keys_dir=base / "keys",
                        sanitel_cert=cert, ts_endpoint=ts_url, ts_poll_initial_s=0.2, ts_poll_max_s=1.0,
                        log_format="json", log_level="INFO")
    # migrate once up front: the services would race to do it
    from services.runtime.host import prepare_database
    from services.runtime.read_models import FLOW_PROJECTIONS

    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
    await prepare_database(pool, FLOW_PROJECTIONS)
    await pool.close()
    p = Platform(settings, ts_url, simulator,
                 mains={"loader": loader_main, "formatter": formatter_main, "ts-gateway": gateway_main})
    for service in p.mains:
        p.start(service)
    await asyncio.sleep(3.0)  # consumer groups join
    try:
        yield p
    finally:
        for service in list(p.tasks):
            await p.stop(service)
        await simulator.stop()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
