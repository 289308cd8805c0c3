"""The ops team's tools on the running platform: `flows tail` shows a load's events as they happen and
filters by instance, without joining any consumer group; `flows lag` shows the loader's lag growing
while it is stopped, its group then without member and marked NOBODY CONSUMING, and back to zero once it caught
up, its member back holding the partitions."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from contracts import flows
from services.runtime.commands import send_command
from tests.e2e.conftest import SERVICE_GROUPS

pytestmark = pytest.mark.e2e
PERIOD = flows.Period.model_validate({"start": "2026-05-01", "end": "2026-05-31"})


def _env(platform: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWS_")}
    env.update(FLOWS_KAFKA_BOOTSTRAP=platform.settings.kafka_bootstrap, DATABASE_URL=platform.settings.database_url,
               PYTHONUNBUFFERED="1", COLUMNS="250")
    return env


async def _flows(platform: Any, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "services.cli.main", *args,
                                                env=_env(platform), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)


async def _groups(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {g[0] for g in await admin.list_consumer_groups()}
    finally:
        await admin.close()


async def _load(platform: Any, ente: str, period: flows.Period = PERIOD) -> uuid.UUID:
    request = flows.LoadRequested(request_id=uuid.uuid4(), flow_type=flows.FlowType.FLUSSO_MEF, ente=ente,
                                  period=period, requested_by="op.ops")
    await send_command(platform.settings.kafka_bootstrap, "flows.load-requested", request,
                       key=str(request.request_id))
    return request.request_id


async def _instance_of(pool: Any, request_id: uuid.UUID, timeout: float = 60) -> int:
    async with asyncio.timeout(timeout):
        while (n := await pool.fetchval("SELECT instance FROM load_request WHERE request_id = $1", request_id)) is None:
            await asyncio.sleep(0.1)
    return int(n)


async def _lines_until(proc: asyncio.subprocess.Process, done: Any, timeout: float) -> list[dict[str, Any]]:
    assert proc.stdout is not None
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while not done(got):
            line = await proc.stdout.readline()
            assert line, f"tail ended early: {(await proc.stderr.read()).decode() if proc.stderr else ''}"
            got.append(json.loads(line))
    return got


async def _wait_ready(proc: asyncio.subprocess.Process) -> None:
    assert proc.stderr is not None
    async with asyncio.timeout(30):
        line = await proc.stderr.readline()
    assert b"following" in line, line


def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()


async def test_tail_shows_a_load_as_it_happens_and_filters_by_instance(platform):
    bootstrap = platform.settings.kafka_bootstrap
    groups_before = await _groups(bootstrap)
    pool = await platform.pool()
    try:
        live = await _flows(platform, "tail", "--ente", "206", "--json")
        try:
            await _wait_ready(live)
            mine, other = await _load(platform, "206"), await _load(platform, "207")
            instance, other_instance = await _instance_of(pool, mine), await _instance_of(pool, other)

            def finished(got: list[dict[str, Any]]) -> bool:
                return any(e["type"] in ("flows.load-checked", "flows.load-failed")
                           and e["data"]["instance"] == instance for e in got)

            seen = await _lines_until(live, finished, timeout=60)
            types = [e["type"] for e in seen if (e["data"] or {}).get("instance") == instance]
            assert types[0] == "flows.load-running" and types[-1] in ("flows.load-checked", "flows.load-failed"), types
            assert all(e["subject"] != str(other_instance) for e in seen), "--ente 206 showed another entity's load"
            assert all(e["problem"] is None for e in seen)
            request = next(e for e in seen if e["type"] == "flows.load-requested")
            assert request["data"]["request_id"] == str(mine)  # the command itself, with its actor
            groups = await _groups(bootstrap)  # while tail runs: no group of its own (it has no group id)
            assert groups <= {g for gs in SERVICE_GROUPS.values() for g in gs} | groups_before, groups
        finally:
            _stop(live)
            await live.wait()

        only = await _flows(platform, "tail", "--instance", str(other_instance), "--from-beginning", "--limit", "2")
        try:
            out, errors = await asyncio.wait_for(only.communicate(), 60)
        finally:
            _stop(only)
        lines = out.decode().splitlines()
        assert only.returncode == 0, errors.decode()
        assert len(lines) == 2 and all(f" {other_instance} " in line for line in lines), lines
        assert "flows.load-running" in lines[0] and "op.ops" in lines[0], lines
    finally:
        await pool.close()


async def _loader_lag(platform: Any) -> tuple[int, list[dict[str, Any]], dict[str, Any]]:
    """The loader's lag on its commands, those partitions, and its group as `flows lag --json` shows it."""
    proc = await _flows(platform, "lag", "--group", "loader", "--json")
    out, errors = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, errors.decode()
    [group] = json.loads(out)
    rows = [r for r in group["partitions"] if r["topic"] == "flows.load-requested"]
    return sum(r["lag"] for r in rows), rows, group


async def test_lag_grows_while_the_loader_is_stopped_and_is_zero_once_it_caught_up(platform):
    pool = await platform.pool()
    try:
        months = [flows.Period.model_validate({"start": f"2026-0{m}-01", "end": f"2026-0{m}-28"})
                  for m in (1, 2, 3, 4)]
        await _instance_of(pool, await _load(platform, "205", months[3]))  # the loader has committed once
        async with asyncio.timeout(60):  # whatever earlier tests requested is consumed first
            while (await _loader_lag(platform))[0]:
                await asyncio.sleep(0.5)
        await platform.stop("loader")
        # The instant before our first request, no margin: the producer stamps each message after it (CreateTime, in
        # ms; --since is floored to the ms). With a margin of a second, the months[3] request sent just before the
        # loop above was inside it whenever `flows lag` and the stop took less than that, and filled --limit 3.
        stopped_at = datetime.now(UTC)
        requests = [await _load(platform, "205", months[0])]
        one, _, _ = await _loader_lag(platform)
        requests += [await _load(platform, "205", months[1]), await _load(platform, "205", months[2])]
        three, rows, stopped = await _loader_lag(platform)
        assert (one, three) == (1, 3), rows
        assert all(r["last_commit"] for r in rows) and all(r["end"] - r["committed"] == r["lag"] for r in rows)
        # the stopped loader left its group: the lag waits for nobody, and `flows lag` says so
        assert stopped["state"] == "Empty" and stopped["members"] == [] and stopped["mark"] == "NOBODY CONSUMING", \
            stopped
        assert all(r["held_by"] is None for r in rows)
        # reading the very messages the stopped loader has not consumed commits nothing in its group
        peek = await _flows(platform, "tail", "flows.load-requested", "--type", "flows.load-requested",
                            "--since", stopped_at.isoformat(), "--limit", "3", "--json")
        out, _ = await asyncio.wait_for(peek.communicate(), 60)
        assert {json.loads(line)["data"]["request_id"] for line in out.splitlines()} == {str(r) for r in requests}
        assert (await _loader_lag(platform))[0] == 3

        platform.start("loader")
        async with asyncio.timeout(90):
            while (lag := await _loader_lag(platform))[0]:
                await asyncio.sleep(0.5)
        assert lag[0] == 0
        running = lag[2]  # the loader back in its group, holding the partitions it consumed
        assert running["members"] and running["mark"] is None, running
        assert all(r["held_by"] in {m["member_id"] for m in running["members"]} for r in lag[1]), running
        for request_id in requests:  # and the stopped-time requests were processed
            await _instance_of(pool, request_id)
    finally:
        if "loader" not in platform.tasks:
            platform.start("loader")
        await pool.close()
