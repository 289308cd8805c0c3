"""What the CLI says when an instance does not move while it waits (`flows load`, `flows format`, `flows send-730`),
on a real database."""

from __future__ import annotations

import uuid

import pytest

from contracts import flows
from services.cli.common import UserError
from services.cli.instances import _wait_for_state
from services.runtime.db import create_pool
from services.runtime.eventstore import EventStore, NewEvent
from services.runtime.host import prepare_database
from services.runtime.read_models import FLOW_PROJECTIONS, instance_stream

pytestmark = pytest.mark.integration


async def test_a_wait_that_times_out_says_the_request_waits_for_its_service_and_not_to_ask_again(
        fresh_db: str) -> None:
    """`flows format N` with the formatter stopped waited, then said only "still Checked": an operator asked again,
    and the second request, taken after the first, went to the dead letters (the runbook's audit). The timeout now
    says the request is recorded and waits for its service, and that a repeat adds nothing (the formatter takes it
    as the same request: tests/e2e/test_instance_lifecycle.py)."""
    pool = await create_pool(fresh_db, min_size=1, max_size=2)
    try:
        await prepare_database(pool, FLOW_PROJECTIONS)
        events = EventStore(pool, source="/test", projections=FLOW_PROJECTIONS)
        running = flows.LoadRunning(instance=1960, request_id=uuid.uuid4(), flow_type=flows.FlowType.FLUSSO_C,
                                    version="2020", ente="201",
                                    period=flows.Period.model_validate({"start": "2026-10-01", "end": "2026-10-31"}),
                                    requested_by="op.rossi")
        await events.append(instance_stream(1960), [
            NewEvent("flows.load-running", running.model_dump(mode="json"), actor="loader"),
            NewEvent("flows.load-checked", flows.LoadChecked(instance=1960, source_instance=1961,
                                                             counts={"services": 3}).model_dump(mode="json"),
                     actor="loader")], expected_version=0, key="1960")
        with pytest.raises(UserError) as waited:
            await _wait_for_state(pool, 1960, {"Formatted"}, "formatting", 0.3)
    finally:
        await pool.close()
    said = str(waited.value)
    assert said.startswith("instance 1960 is still Checked after 0 s. The request is recorded and waits for its "
                           "service"), said
    assert "asking again adds nothing" in said and "`flows show 1960`" in said
