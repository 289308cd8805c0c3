"""An instance made of a history written straight into the event store, for the tests of what reads it (the CLI,
the console, the audit report) without running the services that would have written it."""

from __future__ import annotations

from collections.abc import Sequence

from contracts import flows
from services.runtime.db import create_pool
from services.runtime.eventstore import EventStore
from services.runtime.host import prepare_database
from services.runtime.instances import new_event
from services.runtime.read_models import FLOW_PROJECTIONS, instance_stream


async def seed_instance(url: str, instance: int, history: Sequence[flows.Payload], actor: str = "loader") -> None:
    """Appends `history` as instance `instance`'s (as `actor`, not published) in the database at `url`, its read
    models prepared and kept."""
    pool = await create_pool(url, min_size=1, max_size=2)
    try:
        await prepare_database(pool, FLOW_PROJECTIONS)
        await EventStore(pool, source="/test", projections=FLOW_PROJECTIONS).append(
            instance_stream(instance), [new_event(p, actor) for p in history], expected_version=0,
            key=str(instance), publish=False)
    finally:
        await pool.close()
