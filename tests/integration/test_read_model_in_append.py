"""The instance list's change to a one-event append rides in the append's own statement (InstanceList.fused, no round
trip of its own): it must leave the rows `apply` leaves, statement by statement, for every kind of change; change
nothing when the append does not go in (a stream not at the expected version); and leave to `apply` the events one
INSERT cannot take (two files of one name in one event)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from contracts import flows
from services.runtime.eventstore import ConcurrencyError, EventStore, NewEvent
from services.runtime.host import prepare_database
from services.runtime.instances import new_event
from services.runtime.read_models import FLOW_PROJECTIONS, InstanceList, instance_stream
from tests.integration.test_read_models_rebuild import created, file, histories

pytestmark = pytest.mark.integration


async def tables(pool: asyncpg.Pool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return ([dict(r) for r in await pool.fetch("SELECT * FROM instance_list ORDER BY instance")],
            [dict(r) for r in await pool.fetch("SELECT * FROM instance_files ORDER BY instance, name")])


def more_histories() -> dict[int, list[flows.Payload | NewEvent]]:
    return {
        # an event with files of an instance never created: neither its row nor its files
        20: [flows.LoadChecked(instance=20, source_instance=1, counts={},
                               feedback=file("feedback_20.csv", "feedback"))],
        # two files of one name in one event: applied by `apply` after the statement (the later one wins)
        21: [created(21), flows.LoadChecked(instance=21, source_instance=2, counts={"services": 1}),
             flows.FormattingStarted(instance=21),
             flows.Formatted(instance=21, files=[file("C1_21.txt", "C1"), file("C1_21.txt", "C2", "f")])],
        # files with and without a part and a media type, and a later file replacing one by name
        22: [created(22, "FLUSSO_730"), flows.LoadChecked(instance=22, source_instance=3, counts={"services": 2}),
             flows.FormattingStarted(instance=22),
             flows.Formatted(instance=22, files=[file("730_22_1.zip", "730-zip", part=1),
                                                 file("730_22_2.zip", "730-zip", "b", part=2, media_type="x/y")]),
             flows.TsFeedbackReceived(instance=22, part=1, parts=2, outcome="confirmed",
                                      receipt_file=file("730_22_1.zip", "ts-receipt", "c"), instance_outcome=None)],
    }


async def test_the_rows_of_appends_with_the_change_inside_are_those_apply_leaves(pool: asyncpg.Pool) -> None:
    await prepare_database(pool, FLOW_PROJECTIONS)
    store = EventStore(pool, source="/flows/test", projections=FLOW_PROJECTIONS)
    every = {**histories(), **more_histories()}
    for instance, history in every.items():
        for version, item in enumerate(history):
            event = item if isinstance(item, NewEvent) else new_event(item, "loader")
            await store.append(instance_stream(instance), [event], expected_version=version, key=str(instance))
    fused = await tables(pool)
    at, dup = datetime.now(UTC), every[21][-1]
    assert isinstance(dup, flows.Formatted)
    fusion = store._fused(instance_stream(1), [new_event(created(1), "loader")], 0, True, at)
    assert fusion is not None and fusion[0].startswith("instance_listed AS (INSERT")  # the path under test is taken
    assert store._fused(instance_stream(21), [new_event(dup, "formatter")], 3, True, at) is None
    assert {r["instance"] for r in fused[0]} >= {1, 21, 22} and 20 not in {r["instance"] for r in fused[0]}
    assert not [f for f in fused[1] if f["instance"] == 20]
    assert [(f["name"], f["kind"]) for f in fused[1] if f["instance"] == 21] == [("C1_21.txt", "C2")]

    # The same events, each applied by `apply`'s own statements, into emptied tables: the same rows.
    await pool.execute("TRUNCATE instance_list, instance_files")
    async with pool.acquire() as conn:
        for stored in await store.read_all(limit=10_000):
            await InstanceList().apply(conn, stored)
    assert await tables(pool) == fused


async def test_an_append_that_does_not_go_in_changes_nothing_in_the_read_model(pool: asyncpg.Pool) -> None:
    await prepare_database(pool, FLOW_PROJECTIONS)
    store = EventStore(pool, source="/flows/test", projections=FLOW_PROJECTIONS)
    stream = instance_stream(30)
    await store.append(stream, [new_event(created(30), "loader")], expected_version=0, key="30")
    before = await tables(pool)
    checked = new_event(flows.LoadChecked(instance=30, source_instance=1, counts={"services": 9},
                                          feedback=file("feedback_30.csv", "feedback")), "loader")
    for expected in (0, 5):  # moved past (the primary key refuses it) and never got there (no row to chain from)
        with pytest.raises(ConcurrencyError):
            await store.append(stream, [checked], expected_version=expected, key="30")
        async with pool.acquire() as conn, conn.transaction():  # in a caller's transaction, without a savepoint
            with pytest.raises(ConcurrencyError):
                await store.append(stream, [checked], expected_version=expected, key="30", conn=conn, savepoint=False)
    assert await tables(pool) == before
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 1
