"""`flows stack up|status`: the local stack and the service processes on it."""

from __future__ import annotations

import asyncio
import json
import os
import sys

from deploy import localstack
from services.cli.common import console, table

# Each runs as `python -m <module>`; the TS simulator stands in for Sistema TS locally.
SERVICES: dict[str, list[str]] = {
    "ts-simulator": ["services.ts_gateway.simulator_main", "--port", "18443", "--cert-out", "{state}/ts-sim"],
    "loader": ["services.loader"],
    "formatter": ["services.formatter"],
    "ts-gateway": ["services.ts_gateway"],
    "onboarding": ["services.onboarding"],
    "console": ["services.console"],
}


def service_env(info: localstack.StackInfo) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWS_") or k == "FLOWS_STACK_DIR"}
    env.update({
        "DATABASE_URL": info.database_url,
        "FLOWS_KAFKA_BOOTSTRAP": info.bootstrap_servers,
        "FLOWS_FILES_DIR": str(info.state_dir / "files"),
        "FLOWS_KEYS_DIR": str(info.state_dir / "keys"),
        "FLOWS_SANITEL_CERT": str(info.state_dir / "ts-sim" / "sanitel-cf.pem"),
        "FLOWS_LOG_FORMAT": "json",
        "FLOWS_CONSOLE_PORT": os.environ.get("FLOWS_CONSOLE_PORT", "18080"),
        "PYTHONUNBUFFERED": "1",
    })
    return env


def up(brokers: int = 1, with_services: bool = True) -> localstack.StackInfo:
    info = localstack.up(brokers=brokers, progress=lambda line: console.print(f"[dim]stack[/] {line}"))
    if with_services:
        # Migrate before the services start (they would race to do it) and before the caller's first
        # query: a command right after `up` must find the schema.
        asyncio.run(_prepare(info.database_url))
        env = service_env(info)
        running = localstack.status().get("services", {})
        for name, argv in SERVICES.items():
            if running.get(name, {}).get("running"):
                continue
            args = [a.replace("{state}", str(info.state_dir)) for a in argv]
            pid = localstack.start_service(name, [sys.executable, "-m", *args], env)
            console.print(f"[dim]stack[/] started {name} (pid {pid})")
    console.print(f"[green]platform up[/]: Kafka {info.bootstrap_servers}, PostgreSQL "
                  f"{info.database_url.split('@')[-1]}, state in {info.state_dir}")
    return info


async def _prepare(database_url: str) -> None:
    from services.onboarding.projection import DashboardProjection
    from services.runtime.db import create_pool
    from services.runtime.host import prepare_database
    from services.runtime.read_models import FLOW_PROJECTIONS

    pool = await create_pool(database_url, min_size=1, max_size=2)
    try:
        await prepare_database(pool, [*FLOW_PROJECTIONS, DashboardProjection()])
    finally:
        await pool.close()


def status(as_json: bool) -> None:
    data = localstack.status()
    if as_json:
        console.print_json(json.dumps(data, default=str))
        return
    rows = []
    kafka = data.get("kafka", {})
    for node, n in (kafka.get("nodes") or {}).items():
        rows.append((f"kafka-{node}", "running" if n.get("running") else "stopped", n.get("pid"), n.get("port")))
    pg = data.get("postgres", {})
    rows.append(("postgres", "running" if pg.get("running") else "stopped", pg.get("pid"), pg.get("url")))
    for name, s in (data.get("services") or {}).items():
        rows.append((name, "running" if s.get("running") else "stopped", s.get("pid"), s.get("log")))
    console.print(table("flows stack", ["component", "state", "pid", "where"], rows))
