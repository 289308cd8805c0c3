"""The whole platform in the test process: a fresh database, clean topics, and the real services
(loader, formatter, TS gateway, onboarding) plus the TS simulator, each running its real `main()`
against the real Kafka and PostgreSQL of the test stack.

Topics are deleted at the start of the session: this is the test stack (see tests/conftest.py),
never the platform's own, and old messages would otherwise be consumed into the fresh database.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from playwright.async_api import Browser, async_playwright

from services.formatter.app import GROUP as FORMATTER_GROUP
from services.loader.app import COMMANDS_GROUP, SOURCES_GROUP
from services.runtime import db
from services.runtime.settings import Settings
from services.runtime.topics_admin import apply_topics
from services.ts_gateway.app import GROUP as GATEWAY_GROUP
from tests.console_support import CHROMIUM
from tests.kafka_groups import members_of, wait_until_joined
from tests.kafka_topics import delete_all_topics
from tests.log_capture import configure_onto

# Small 730 zips, so a month of a hundred services already needs several parts per structure.
E2E_MAX_ZIP_BYTES = 4_000
TS_USER, TS_PASSWORD, TS_PINCODE, TS_CF = "PROVAX00X00X000Y", "Salve123", "1234567890", "PROVAX00X00X000Y"
# The consumer groups each service's main() joins (services/<service>/app.py): the platform is up once all have.
SERVICE_GROUPS = {"loader": (COMMANDS_GROUP, SOURCES_GROUP), "formatter": (FORMATTER_GROUP,),
                  "ts-gateway": (GATEWAY_GROUP,)}


@dataclass
class Platform:
    settings: Settings
    ts_url: str
    simulator: Any
    tasks: dict[str, tuple[asyncio.Task[None], asyncio.Event]] = field(default_factory=dict)
    mains: dict[str, Callable[..., Coroutine[Any, Any, None]]] = field(default_factory=dict)
    log_path: Path | None = None  # every line the services logged this session (see _tee_service_logs)

    def start(self, name: str) -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(self.mains[name](self.settings, stop), name=name)
        self.tasks[name] = (task, stop)

    async def stop(self, name: str) -> None:
        """Graceful: the service's stop event set, then its end awaited. A test that needs a crash runs
        the service as a process of its own and SIGKILLs it (tests/e2e/test_ts_730.py `gateway_process`)."""
        task, stop = self.tasks.pop(name)
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)

    def check_running(self) -> None:
        """Raises, naming the service, when a started service has already ended (a crash at start-up)."""
        for name, (task, _) in self.tasks.items():
            if task.done():
                error = None if task.cancelled() else task.exception()
                raise AssertionError(f"service {name} ended while the platform was starting: {error!r}")

    async def pool(self) -> asyncpg.Pool:
        from services.runtime.db import create_pool

        return await create_pool(self.settings.database_url, min_size=1, max_size=4)


class _LogTee(io.TextIOBase):
    """Writes through to the current stderr and appends to a file a test can read back."""

    def __init__(self, path: Path) -> None:
        self._file: io.TextIOWrapper | None = path.open("a", encoding="utf-8", buffering=1)

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self._file is not None:
            self._file.write(text)
        if sys.stderr is not self:
            sys.stderr.write(text)
        return len(text)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
        if sys.stderr is not self:
            sys.stderr.flush()

    def detach_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _tee_service_logs(path: Path, settings: Settings) -> _LogTee:
    """The services log through structlog, configured once per process onto the stderr it finds then
    (under pytest, a capture file no test can read): configure it onto a tee, so a test can search
    every line the services emitted (the secrets canary). Standard-library records (aiokafka,
    FastStream, asyncio) go to the same tee."""
    tee = _LogTee(path)
    # onto the tee, the loggers an earlier test of the session already used too (tests/log_capture.py): before,
    # their lines went on to the stream of their first use and the canary never searched them
    configure_onto(tee, settings.log_level, settings.log_format)  # type: ignore[arg-type]
    handler = logging.StreamHandler(tee)
    for name in ("", "faststream", "faststream.access.kafka"):
        logger = logging.getLogger(name)
        if not any(getattr(h, "stream", None) is tee for h in logger.handlers):
            logger.addHandler(handler)
    return tee


async def _clean_topics(bootstrap: str) -> None:
    """Every topic deleted, then the registry's provisioned again (the brokers never auto-create them)."""
    await delete_all_topics(bootstrap)
    await apply_topics(bootstrap, Settings().topic_partitions)


@pytest.fixture(scope="session")
async def chromium() -> AsyncIterator[Browser]:
    """One Chromium for the session's browser tests, launched at the first that asks: each test opens its own
    contexts on it and closes them (tests/console_support.py browser_of)."""
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture(scope="session")
async def platform(stack, tmp_path_factory) -> AsyncIterator[Platform]:  # type: ignore[no-untyped-def]
    from services.formatter.app import main as formatter_main
    from services.loader.app import main as loader_main
    from services.ts_gateway.app import main as gateway_main
    from simulators.sistema_ts.rules import SimUser
    from simulators.sistema_ts.simulator import TsSimulator

    await _clean_topics(stack.bootstrap_servers)
    database_url = await db.create_database(stack.database_url, "e2e", migrated=False)  # the services migrate
    base = Path(tmp_path_factory.mktemp("platform"))
    simulator = TsSimulator([SimUser.from_clear(TS_USER, TS_PASSWORD, TS_PINCODE, TS_CF)])
    cert = simulator.write_certificate(base / "ts-sim")
    ts_url = await simulator.start("127.0.0.1", 0)
    settings = Settings(database_url=database_url,
                        kafka_bootstrap=stack.bootstrap_servers, files_dir=base / "files", keys_dir=base / "keys",
                        sanitel_cert=cert, ts_endpoint=ts_url, ts_poll_initial_s=0.2, ts_poll_max_s=1.0,
                        ts_max_zip_bytes=E2E_MAX_ZIP_BYTES,
                        # the services' periodic passes every second (production: loader 2 s, formatter 5 s, TS
                        # gateway 10 s): what a test waits for at the next pass (a retired key deleted, an abandoned
                        # box removed, a due load started) comes as it would, sooner
                        pass_s=1.0,
                        log_format="json", log_level="INFO")
    log_path = tmp_path_factory.mktemp("service-logs") / "services.log"
    tee = _tee_service_logs(log_path, settings)
    # migrate once up front: the services would race to do it
    from services.runtime.host import prepare_database
    from services.runtime.read_models import FLOW_PROJECTIONS

    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
    await prepare_database(pool, FLOW_PROJECTIONS)
    await pool.close()
    p = Platform(settings, ts_url, simulator,
                 mains={"loader": loader_main, "formatter": formatter_main, "ts-gateway": gateway_main},
                 log_path=log_path)
    # Up once every consumer group of the services has a new member and all its partitions assigned (a message
    # published before would wait for a rebalance); the error names a group that did not join.
    before = await members_of(stack.bootstrap_servers, [g for s in p.mains for g in SERVICE_GROUPS[s]])
    started = asyncio.get_running_loop().time()
    for service in p.mains:
        p.start(service)
    try:
        await wait_until_joined(stack.bootstrap_servers, before, deadline_s=180, alive=p.check_running)
        logging.getLogger(__name__).info("e2e platform: consumer groups %s joined in %.1f s", sorted(before),
                                         asyncio.get_running_loop().time() - started)
        yield p
    finally:
        # Every service stopped, even after one that crashed (its error is raised once all is cleaned up).
        crashed: list[Exception] = []
        for service in list(p.tasks):
            try:
                await p.stop(service)
            except Exception as exc:
                crashed.append(exc)
        await simulator.stop()
        # A new connection: a fault test (tests/integration/test_outage.py) may have restarted PostgreSQL.
        await db.drop_database(stack.database_url, database_url)
        tee.detach_file()
        if crashed:
            raise crashed[0]
