"""/healthz and /readyz of a real service process (the formatter's main on the test stack): ready once
PostgreSQL and Kafka answer and its consumer is assigned; not ready, naming Kafka, while the broker is
really stopped, yet still alive; ready again once the broker is back."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from tests import session_stack
from tests.stack_urls import free_port

pytestmark = pytest.mark.integration


async def _get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}{path}",
                                                         timeout=aiohttp.ClientTimeout(total=10)) as response:
        return response.status, await response.json()


async def _until(port: int, path: str, status: int, timeout: float) -> dict[str, Any]:
    body: dict[str, Any] = {}
    async with asyncio.timeout(timeout):
        while True:
            try:
                got, body = await _get(port, path)
                if got == status:
                    return body
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)


async def test_readiness_follows_kafka_really_stopping_and_coming_back(settings, fresh_db):
    from services.formatter.app import main

    port = free_port(30, 90)
    cfg = settings.model_copy(update={"database_url": fresh_db, "health_port": port})
    stop = asyncio.Event()
    service = asyncio.create_task(main(cfg, stop))
    kafka_stopped = False
    try:
        ready = await _until(port, "/readyz", 200, timeout=60)
        assert ready["ready"] is True
        assert {name for name, check in ready["checks"].items() if check["ok"]} == {"postgresql", "kafka", "consumers"}
        assert "1 consumer(s) assigned" in ready["checks"]["consumers"]["detail"]
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as response:
            assert response.status == 200 and "python_info" in await response.text()

        await asyncio.to_thread(session_stack.stop_kafka_node, 1)
        kafka_stopped = True
        down = await _until(port, "/readyz", 503, timeout=60)
        assert down["ready"] is False and down["checks"]["kafka"]["ok"] is False, down
        assert down["checks"]["postgresql"]["ok"] is True
        status, alive = await _get(port, "/healthz")
        assert status == 200 and alive["status"] == "alive"  # not ready, but no reason to restart it

        await asyncio.to_thread(session_stack.start_kafka_node, 1, 90)
        kafka_stopped = False
        back = await _until(port, "/readyz", 200, timeout=90)
        assert all(check["ok"] for check in back["checks"].values()), back
    finally:
        if kafka_stopped:
            await asyncio.to_thread(session_stack.start_kafka_node, 1, 90)
        stop.set()
        await asyncio.wait_for(service, 60)


async def test_the_audit_service_is_ready_only_with_its_signing_key_private(settings, fresh_db, tmp_path):
    from services.audit.app import main

    port = free_port(30, 90)
    key = tmp_path / "keys" / "signing.key"
    cfg = settings.model_copy(update={"database_url": fresh_db, "health_port": port, "checkpoint_key": key,
                                      "checkpoints_dir": tmp_path / "cps", "checkpoint_interval_s": 0})
    stop = asyncio.Event()
    service = asyncio.create_task(main(cfg, stop))
    try:
        ready = await _until(port, "/readyz", 200, timeout=30)
        assert set(ready["checks"]) == {"postgresql", "signing_key"}
        key.chmod(0o644)
        refused = await _until(port, "/readyz", 503, timeout=10)
        assert "readable by others" in refused["checks"]["signing_key"]["detail"]
    finally:
        stop.set()
        await asyncio.wait_for(service, 30)
