"""A real PostgreSQL outage of the TEST stack: `pg_ctl stop -m fast` of its server, then `up` again.

Reads the stack's own state (deploy/localstack/): the test stack's server is shared by the whole
session, so `postgres_down()` always starts it again and waits until it accepts connections, even
when the body fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from deploy import localstack


def stop_postgres() -> None:
    sd = localstack.state_dir()
    with localstack._locked(sd):
        state = localstack._load_state(sd)
        if state["postgres"].get("external"):
            raise RuntimeError("the tests run on an external PostgreSQL (DATABASE_URL): it cannot be stopped here")
        localstack._stop_postgres(state["postgres"])


def start_postgres() -> None:
    """Starts what is not running (here: PostgreSQL) and waits until it answers."""
    brokers = int(localstack._load_state(localstack.state_dir()).get("brokers", 1) or 1)
    localstack.up(brokers=brokers, progress=lambda line: None)


@asynccontextmanager
async def postgres_down() -> AsyncIterator[None]:
    """`async with postgres_down(): ...`: the server is stopped for the body, and running after it."""
    await asyncio.to_thread(stop_postgres)
    try:
        yield
    finally:
        await asyncio.to_thread(start_postgres)
