"""`flows stack up|status`: the local stack and the service processes on it."""

from __future__ import annotations

import asyncio
import json
import os
import sys

from deploy import localstack
from services.cli import topics
from services.cli.common import console, stack_environment, table

# Each runs as `python -m <module>`; the TS simulator stands in for Sistema TS locally.
SERVICES: dict[str, list[str]] = {
    "ts-simulator": ["simulators.sistema_ts", "--port", "{ts_port}", "--cert-out", "{state}/ts-sim"],
    "loader": ["services.loader"],
    "formatter": ["services.formatter"],
    "ts-gateway": ["services.ts_gateway"],
    "onboarding": ["services.onboarding"],
    "audit": ["services.audit"],
    "console": ["services.console"],
}


def observability_ports() -> dict[str, int]:
    """The health/metrics port of each platform service (not the TS simulator) under --observability."""
    from services.cli import observability as obs

    return obs.health_ports([name for name in SERVICES if name != "ts-simulator"])


def service_env(info: localstack.StackInfo) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWS_") or k == "FLOWS_STACK_DIR"}
    env.update(stack_environment(info))
    env.update({
        "FLOWS_LOG_FORMAT": "json",
        "FLOWS_CONSOLE_PORT": os.environ.get("FLOWS_CONSOLE_PORT", "18080"),
        "PYTHONUNBUFFERED": "1",
    })
    return env


def trace_env(info: localstack.StackInfo, name: str) -> dict[str, str]:
    """Where a stack service sends its spans: the caller's OTLP endpoint (FLOWS_OTLP_ENDPOINT) when set,
    else a JSON-lines file per service in the state folder (<state>/traces/<service>.jsonl)."""
    if endpoint := os.environ.get("FLOWS_OTLP_ENDPOINT"):
        return {"FLOWS_OTLP_ENDPOINT": endpoint}
    return {"FLOWS_TRACES_FILE": str(info.state_dir / "traces" / f"{name}.jsonl")}


def up(brokers: int = 1, with_services: bool = True, observability: bool = False) -> localstack.StackInfo:
    info = localstack.up(brokers=brokers, progress=lambda line: console.print(f"[dim]stack[/] {line}"))
    # Topics before any service: the brokers do not auto-create them (see services/runtime/topics_admin.py).
    asyncio.run(topics.apply(quiet=True))
    if with_services:
        # Migrate before the services start (they would race to do it) and before the caller's first
        # query: a command right after `up` must find the schema.
        asyncio.run(_prepare(info.database_url))
        env = service_env(info)
        running = localstack.status().get("services", {})
        ports = observability_ports() if observability else {}
        for name, argv in SERVICES.items():
            if running.get(name, {}).get("running") and not observability:
                continue
            args = [a.replace("{state}", str(info.state_dir)).replace("{ts_port}", str(info.ts_port)) for a in argv]
            extra = {"FLOWS_HEALTH_PORT": str(ports[name])} if name in ports else {}
            extra.update(trace_env(info, name))
            pid = localstack.start_service(name, [sys.executable, "-m", *args], {**env, **extra})
            console.print(f"[dim]stack[/] started {name} (supervisor pid {pid})")
        # "platform up" only once every service runs and stays up: a service that exits at start (a bad
        # bootstrap, a missing topic) fails `up` with its last exit and log, instead of a false success.
        localstack.wait_services_alive(list(SERVICES))
    if observability:
        from services.cli import observability as obs

        _, url = obs.start_prometheus(info.state_dir, observability_ports() if with_services else {})
        console.print(f"[dim]stack[/] Prometheus at {url}, scraping every service's /metrics, alerts loaded")
    console.print(f"[green]platform up[/]: Kafka {info.bootstrap_servers}, PostgreSQL "
                  f"{info.database_url.split('@')[-1]}, state in {info.state_dir}")
    return info


async def _prepare(database_url: str) -> None:
    from services.cli.replay import all_projections
    from services.runtime.db import create_pool
    from services.runtime.host import prepare_database

    pool = await create_pool(database_url, min_size=1, max_size=2)
    try:
        await prepare_database(pool, all_projections())
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
        state = "running" if n.get("running") else "stopped"
        rows.append((f"kafka-{node}", state, n.get("pid"), n.get("port"), "", ""))
    pg = data.get("postgres", {})
    rows.append(("postgres", "running" if pg.get("running") else "stopped", pg.get("pid"), pg.get("url"), "", ""))
    for name, s in (data.get("services") or {}).items():
        rows.append((name, _service_state(s), s.get("pid"), s.get("log"), s.get("restarts"), s.get("last_exit")))
    console.print(table("flows stack", ["component", "state", "pid", "where", "restarts", "last exit"], rows))


def _service_state(s: dict[str, object]) -> str:
    if s.get("running"):
        return "running"
    return "restarting" if s.get("supervisor_pid") else "stopped"
