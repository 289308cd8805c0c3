"""Driving the e2e platform as an operator would: a month of source data to a Formatted 730."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg

from contracts import flows
from contracts.states import InstanceState
from services.cli.sources import publish
from services.runtime.commands import send_command
from simulators.cup.generator import generate, month_period


async def _wait_state(pool: asyncpg.Pool, instance: int, states: set[str], timeout: float = 120) -> asyncpg.Record:
    """The instance_list row once its state is one of `states` (fails naming the state it is stuck in)."""
    row = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                row = await pool.fetchrow("SELECT * FROM instance_list WHERE instance = $1", instance)
                if row is not None and row["state"] in states:
                    return row
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"instance {instance} did not reach {sorted(states)} in {timeout:.0f} s; "
                             f"it is {dict(row) if row else 'not in instance_list'}") from None


async def publish_month(platform: Any, pool: asyncpg.Pool, ente: str, month: str, services: int, seed: int,
                        bad: int = 0) -> dict[str, int]:
    """Publish a month of generated source data of `ente` and wait until the loader's intake stored it."""
    generation = generate(ente, month, services, seed=seed, bad=bad)
    counts = await publish(generation, platform.settings.kafka_bootstrap)
    assert counts.get("payment-document", 0) > 0, counts
    async with asyncio.timeout(120):  # intake is asynchronous: published is not yet stored
        while (await pool.fetchval("SELECT count(*) FROM source_service WHERE starts_with(source_id, $1)",
                                   generation.prefix) < counts["delivered-service"]
               or await pool.fetchval("SELECT count(*) FROM source_payment_document WHERE ente = $1 "
                                      "AND starts_with(source_id, $2)", ente, generation.prefix)
               < counts["payment-document"]):
            await asyncio.sleep(0.3)
    return counts


async def _formatted_730(platform: Any, ente: str, month: str, services: int = 120) -> int:
    """Publish a month of source data, load FLUSSO_730 (Checked), format it (Formatted): the instance."""
    cfg = platform.settings
    pool = await platform.pool()
    try:
        await publish_month(platform, pool, ente, month, services, seed=11)
        start, end = month_period(month)
        request = flows.LoadRequested(request_id=uuid.uuid4(), flow_type=flows.FlowType.FLUSSO_730, ente=ente,
                                      period=flows.Period(start=start, end=end), requested_by="e2e.ts")
        await send_command(cfg.kafka_bootstrap, "flows.load-requested", request, key=str(request.request_id))
        async with asyncio.timeout(60):
            while (instance := await pool.fetchval(
                    "SELECT instance FROM instance_list WHERE flow_type = 'FLUSSO_730' AND ente = $1 "
                    "AND period_start = $2", ente, start)) is None:
                await asyncio.sleep(0.2)
        checked = await _wait_state(pool, instance, {InstanceState.CHECKED.value, InstanceState.FAILED_LOADING.value})
        assert checked["state"] == InstanceState.CHECKED.value, f"{checked['state']}: {checked['summary']}"
        await send_command(cfg.kafka_bootstrap, "flows.format-requested",
                           flows.FormatRequested(instance=instance, requested_by="e2e.ts"), key=str(instance))
        formatted = await _wait_state(pool, instance, {InstanceState.FORMATTED.value,
                                                       InstanceState.FORMAT_FAILED.value})
        assert formatted["state"] == InstanceState.FORMATTED.value, f"{formatted['state']}: {formatted['summary']}"
    finally:
        await pool.close()
    return int(instance)
