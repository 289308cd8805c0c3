"""`python -m services.console`: the console on uvicorn (FLOWS_CONSOLE_HOST / FLOWS_CONSOLE_PORT)."""

from __future__ import annotations

import asyncio

import uvicorn

from services.console.app import create_app
from services.console.server import ConsoleHttpProtocol
from services.runtime.db import create_pool
from services.runtime.host import prepare_database
from services.runtime.logging import configure
from services.runtime.read_models import FLOW_PROJECTIONS
from services.runtime.settings import Settings


async def _migrate(settings: Settings) -> None:
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        await prepare_database(pool, FLOW_PROJECTIONS)
    finally:
        await pool.close()


def main() -> None:
    settings = Settings()
    configure(settings.log_level, settings.log_format)
    asyncio.run(_migrate(settings))
    # httptools and uvloop (pinned): the C HTTP parser and event loop take most of uvicorn's own cost off each
    # request (bench/console.py: the list page's target is 2x the raw SQL of the same page); uvicorn's httptools
    # protocol with an answer's head and body written at once (services/console/server.py).
    uvicorn.run(create_app(settings), host=settings.console_host, port=settings.console_port,
                proxy_headers=False, server_header=False, access_log=False, log_config=None, loop="uvloop",
                http=ConsoleHttpProtocol)


if __name__ == "__main__":
    main()
