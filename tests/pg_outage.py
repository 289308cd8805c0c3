"""A real PostgreSQL outage of the TEST stack: `pg_ctl stop -m fast` of its server (or `docker stop` of its
container), then `up` again (tests/session_stack.py).

The test stack's server is shared by the whole session, so `postgres_down()` always starts it again and
waits until it accepts connections, even when the body fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tests.session_stack import start_postgres, stop_postgres


@asynccontextmanager
async def postgres_down() -> AsyncIterator[None]:
    """`async with postgres_down(): ...`: the server is stopped for the body, and running after it."""
    await asyncio.to_thread(stop_postgres)
    try:
        yield
    finally:
        await asyncio.to_thread(start_postgres)
