"""`flows stack up --observability`'s Prometheus, for real: it scrapes a service's /metrics (the audit
service, running its real main) and loads the alert rules."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from deploy import localstack
from services.cli import observability as obs
from tests.stack_urls import reserve_first

pytestmark = pytest.mark.integration


async def _api(url: str, path: str, **params: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(f"{url}{path}", params=params,
                                                         timeout=aiohttp.ClientTimeout(total=10)) as response:
        return (await response.json())["data"]


async def test_prometheus_scrapes_the_services_and_loads_the_alert_rules(settings, fresh_db, tmp_path, monkeypatch):
    from services.audit.app import main
    from services.runtime.db import create_pool
    from services.runtime.host import prepare_database
    from services.runtime.read_models import FLOW_PROJECTIONS

    # the read models the platform's other services create at their start (the audit service creates none): on a
    # database without them every refresh of the ops figures failed (no instance_list), and the refreshed gauge,
    # exported as 0 from the start, satisfied the wait all the same
    pool = await create_pool(fresh_db, min_size=1, max_size=1)
    try:
        await prepare_database(pool, FLOW_PROJECTIONS)
    finally:
        await pool.close()
    # Prometheus on the base itself, the audit service's port next to it: in the stack's own range below the private
    # stacks' (+ 100 .. + 900), as tests/integration/test_stack_observability.py; + 508 reached a stack on the
    # next port range (base 28592: 29100, the TS simulator of a stack on 29092)
    own = int(localstack._kafka_port_base())
    triple = reserve_first((port, port + 1, port + 2) for port in range(own + 30, own + 100))
    assert triple is not None, f"no three free ports in {own + 30}..{own + 100}"
    monkeypatch.setenv("FLOWS_OBSERVABILITY_PORT_BASE", str(triple[0]))
    # A second replica of the TS gateway, as a process named ts-gateway-2 whose figure names its service: the alert
    # groups by that name (its words differ for the gateway), never by the replica's
    ports = obs.health_ports(["audit", "ts-gateway-2"])
    gateway = web.Application()

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text="# TYPE flows_work_interrupted_longest_seconds gauge\n"
                                 'flows_work_interrupted_longest_seconds{service="ts_gateway"} 1000\n')

    gateway.router.add_get("/metrics", metrics)
    runner = web.AppRunner(gateway)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", ports["ts-gateway-2"]).start()
    cfg = settings.model_copy(update={"database_url": fresh_db, "health_port": ports["audit"],
                                      "checkpoint_key": tmp_path / "k" / "signing.key",
                                      "checkpoints_dir": tmp_path / "cps", "checkpoint_interval_s": 0,
                                      "ops_metrics_interval_s": 1.0})
    stop = asyncio.Event()
    service = asyncio.create_task(main(cfg, stop, registry=CollectorRegistry()))
    try:
        _, url = await asyncio.to_thread(obs.start_prometheus, tmp_path, ports)
        async with asyncio.timeout(90):
            while True:
                try:
                    found = await _api(url, "/api/v1/query", query="flows_ops_refreshed_timestamp_seconds")
                    if found["result"] and float(found["result"][0]["value"][1]) > 0:  # 0: never refreshed
                        break
                except (aiohttp.ClientError, KeyError, ValueError):
                    pass
                await asyncio.sleep(1)
        assert found["result"][0]["metric"]["service"] == "audit"
        up = await _api(url, "/api/v1/query", query='up{job="audit"}')
        assert up["result"][0]["value"][1] == "1"
        async with asyncio.timeout(60):
            while not (longest := await _api(url, "/api/v1/query",
                                             query="max by (service) (flows_work_interrupted_longest_seconds)"))[
                    "result"]:
                await asyncio.sleep(1)
        assert [r["metric"] for r in longest["result"]] == [{"service": "ts_gateway"}], longest
        rules = await _api(url, "/api/v1/rules")
        names = {rule["name"] for group in rules["groups"] for rule in group["rules"]}
        assert names == {"ConsumerLagGrowing", "DeadLetterReceived", "LoadsFailing", "DeadlineNotCovered",
                         "TsRejections", "OutboxBehind", "OutboxRowParked", "OpsFiguresStale", "OpsFiguresMissing",
                         "FileStoreFull", "WorkInterrupted", "TargetDown"}
    finally:
        await asyncio.to_thread(localstack.stop_service, "prometheus")
        await runner.cleanup()
        stop.set()
        await asyncio.wait_for(service, 30)
