"""`flows stack up|status`: the local stack and the service processes on it.

Replicas (`flows stack up --replicas N`): each service of REPLICATED runs as N supervised processes,
`loader`, `loader-2`, ... `loader-N`, each with its own log (logs/<name>.log), traces file, health port
(when health ports are served: `--observability` or N > 1; the same whatever N, see observability_ports) and
FLOWS_REPLICA (its name, recorded in the metadata of every event it appends: `replica`). They share the
consumer groups (Kafka spreads the partitions over them), PostgreSQL (the per-instance advisory locks decide
who works on an instance) and the file store. The TS simulator, the audit service (no consumer; its signer
holds a lock anyway) and the console stay one process. A later `up` with a smaller N
stops and forgets the replicas past N.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from typing import Any

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

# The services that run as N processes under `--replicas N`: every Kafka consumer of the platform.
REPLICATED = ("loader", "formatter", "ts-gateway", "onboarding")


def replica_name(service: str, index: int) -> str:
    """`loader` for the first replica (the name a one-replica stack always had), `loader-2`... after it."""
    return service if index == 1 else f"{service}-{index}"


def processes(replicas: int = 1) -> list[tuple[str, str]]:
    """(service, process name) of every process `up` starts with `replicas` per replicated service."""
    if replicas < 1:
        raise ValueError("replicas must be at least 1")
    return [(service, replica_name(service, i))
            for service in SERVICES for i in range(1, (replicas if service in REPLICATED else 1) + 1)]


def surplus_replicas(running: list[str], replicas: int) -> list[str]:
    """The recorded processes that are replicas past `replicas` (a stack scaled down): to be removed."""
    surplus = []
    for name in running:
        for service in REPLICATED:
            match = re.fullmatch(rf"{re.escape(service)}-(\d+)", name)
            if match and int(match.group(1)) > replicas:
                surplus.append(name)
    return surplus


def observability_ports(replicas: int = 1) -> dict[str, int]:
    """The health/metrics port of each platform process (not the TS simulator): one per replica, each the same
    whatever the replicas. The first process of each service: FLOWS_OBSERVABILITY_PORT_BASE + 1 (loader) ... + 6
    (console), as a one-replica stack always had; replica k >= 2 of the replicated services the ports after those,
    k by k (loader-2 + 7, formatter-2 + 8 ..., loader-3 + 11 ...). Scaling so moves no process's port: numbered in
    order, every port after loader-2's shifted, and a Prometheus still scraping the old ones read another service
    under each job's name."""
    if replicas < 1:
        raise ValueError("replicas must be at least 1")
    from services.cli import observability as obs

    base = obs.port_base()
    first = [service for service in SERVICES if service != "ts-simulator"]
    ports = {service: base + 1 + i for i, service in enumerate(first)}
    for k in range(2, replicas + 1):
        for j, service in enumerate(REPLICATED):
            ports[replica_name(service, k)] = base + 1 + len(first) + (k - 2) * len(REPLICATED) + j
    return ports


def prometheus_targets(services: dict[str, dict[str, Any]]) -> dict[str, int]:
    """What Prometheus scrapes: every recorded process with a health port that the stack keeps running (its
    supervisor alive, the process running or being restarted), by name; not one stopped on purpose (`down`)."""
    return {name: int(s["health_port"]) for name, s in sorted(services.items())
            if s.get("health_port") and s.get("supervisor_pid")}


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


def up(brokers: int = 1, with_services: bool = True, observability: bool = False,
       replicas: int = 1) -> localstack.StackInfo:
    info = localstack.up(brokers=brokers, progress=lambda line: console.print(f"[dim]stack[/] {line}"))
    # Topics before any service: the brokers do not auto-create them (see services/runtime/topics_admin.py).
    asyncio.run(topics.apply(quiet=True))
    if with_services:
        # Migrate before the services start (they would race to do it) and before the caller's first
        # query: a command right after `up` must find the schema.
        asyncio.run(_prepare(info.database_url))
        env = service_env(info)
        running = localstack.status().get("services", {})
        for name in surplus_replicas(list(running), replicas):
            localstack.remove_service(name)
            console.print(f"[dim]stack[/] stopped {name} (more than {replicas} replica(s))")
        ports = observability_ports(replicas) if observability or replicas > 1 else {}
        names = []
        for service, name in processes(replicas):
            names.append(name)
            recorded = running.get(name, {})
            if recorded.get("running") and name not in ports:
                continue
            # A process a plain `up` starts again (its supervisor was stopped or killed) keeps the health port it
            # was recorded with: Prometheus scrapes it there, and its probes answer there.
            port = ports.get(name) or recorded.get("health_port")
            args = [a.replace("{state}", str(info.state_dir)).replace("{ts_port}", str(info.ts_port))
                    for a in SERVICES[service]]
            extra = {"FLOWS_REPLICA": name}
            if port:
                extra["FLOWS_HEALTH_PORT"] = str(port)
            extra.update(trace_env(info, name))
            pid = localstack.start_service(name, [sys.executable, "-m", *args], {**env, **extra},
                                           about={"service": service, "health_port": port})
            console.print(f"[dim]stack[/] started {name} (supervisor pid {pid})")
        # "platform up" only once every service runs and stays up: a service that exits at start (a bad
        # bootstrap, a missing topic) fails `up` with its last exit and log, instead of a false success.
        localstack.wait_services_alive(names)
    recorded = localstack.status().get("services", {})
    if observability or recorded.get("prometheus", {}).get("supervisor_pid"):
        # Also on a plain `up` while Prometheus runs: a scale-down or a restart changes what it must scrape.
        from services.cli import observability as obs

        _, url = obs.start_prometheus(info.state_dir, prometheus_targets(recorded))
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
        rows.append((f"kafka-{node}", state, n.get("pid"), n.get("port"), "", "", ""))
    pg = data.get("postgres", {})
    rows.append(("postgres", "running" if pg.get("running") else "stopped", pg.get("pid"), pg.get("url"), "", "", ""))
    # One row per process: every replica of a service (loader, loader-2, ...) with its own health port.
    for name, s in (data.get("services") or {}).items():
        health = f"127.0.0.1:{s['health_port']}" if s.get("health_port") else ""
        rows.append((name, _service_state(s), s.get("pid"), s.get("log"), health, s.get("restarts"),
                     s.get("last_exit")))
    console.print(table("flows stack", ["component", "state", "pid", "where", "health", "restarts", "last exit"],
                        rows))


def _service_state(s: dict[str, object]) -> str:
    if s.get("running"):
        return "running"
    return "restarting" if s.get("supervisor_pid") else "stopped"
