"""`flows stack up|status|stop|start|restart`: the local stack and the service processes on it.

`up` compares each process with what it would start (`process_spec`: its command and the environment the stack
gives it, not the caller's whole environment) and starts what does not run, restarts what runs with another
command or environment (a setting or a port it is given changed) and leaves the rest running, saying which is
which. `stop NAME` stops one process (a service or one replica, as `status` names them) and records that the
operator stopped it: nothing starts it again but `start NAME`, `restart NAME` or a later `up` (which starts every
process of the platform that does not run).

Replicas (`flows stack up --replicas N`): each service of REPLICATED runs as N supervised processes,
`loader`, `loader-2`, ... `loader-N`, each with its own log (logs/<name>.log), traces file, health port
(when health ports are served: `--observability` or N > 1; the same whatever N, see observability_ports; a
scale-up gives one to the processes it starts, not to the first replicas running without one, see health_port) and
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
import time
from typing import Any

import typer

from deploy import localstack
from services.cli import topics
from services.cli.common import UserError, console, operator_name, print_whole, stack_environment, table

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


# The caller's variables a service reads besides those the stack gives it: the platform's settings (FLOWS_*:
# services/runtime/settings.py, the TS simulator's FLOWS_TS_SIM_*), the simulator's account (TS_SIM_*), the
# formatter's Arrow memory pool. They are part of what `up` compares a running service with.
SETTING_PREFIXES = ("FLOWS_", "TS_SIM_")
SETTING_NAMES = frozenset({"ARROW_DEFAULT_MEMORY_POOL"})
# ...but not these: where the stack itself runs (`up` turns them into each service's addresses and ports, which are
# in its environment or command), what only the CLI and ./run read, and what the stack sets per process.
NOT_SETTINGS = frozenset({"FLOWS_KAFKA_PORT_BASE", "FLOWS_PG_PORT", "FLOWS_TS_SIM_PORT",
                          "FLOWS_OBSERVABILITY_PORT_BASE", "FLOWS_OPERATOR", "FLOWS_DEBUG", "FLOWS_TEST_STACK",
                          "FLOWS_HEALTH_PORT", "FLOWS_REPLICA", "FLOWS_TRACES_FILE"})


def service_setting(name: str) -> bool:
    """A variable of the caller's environment that the stack passes on to its services as one of their settings."""
    return (name.startswith(SETTING_PREFIXES) or name in SETTING_NAMES) and name not in NOT_SETTINGS


def service_env(info: localstack.StackInfo) -> dict[str, str]:
    """The environment the stack gives every service: the caller's settings (`service_setting`), then the stack's
    addresses over them. Not the rest of the caller's environment (PATH, TERM, COLUMNS, ...): the services inherit
    it, but it is not theirs, and a difference in it must not restart them."""
    env = {k: v for k, v in os.environ.items() if service_setting(k)}
    env.update(stack_environment(info))
    env.update({
        "FLOWS_STACK_DIR": str(info.state_dir),
        "FLOWS_LOG_FORMAT": "json",
        "FLOWS_CONSOLE_PORT": os.environ.get("FLOWS_CONSOLE_PORT", "18080"),
        "PYTHONUNBUFFERED": "1",
    })
    return env


def process_spec(info: localstack.StackInfo, service: str, name: str, health_port: int | None,
                 ) -> tuple[list[str], dict[str, str]]:
    """The command and the environment of process `name` (`service`, or one of its replicas): what `up`, `start`
    and `restart` run, and what a running one is compared with."""
    args = [a.replace("{state}", str(info.state_dir)).replace("{ts_port}", str(info.ts_port))
            for a in SERVICES[service]]
    env = {**service_env(info), "FLOWS_REPLICA": name, **trace_env(info, name)}
    if health_port:
        env["FLOWS_HEALTH_PORT"] = str(health_port)
    return [sys.executable, "-m", *args], env


def health_port(name: str, ports: dict[str, int], recorded: dict[str, Any], observability: bool) -> int | None:
    """The health port `up` gives process `name`; `ports`: `observability_ports` when `up` serves health ports
    (`--observability` or more than one replica), else empty; `recorded`: the process as `status` shows it.
    - `--observability`: its port, to every process (one running without a port is restarted with it: Prometheus
      scrapes every process);
    - a process recorded with a port keeps it (a plain `up` that starts it again included), at `ports`' number
      when `up` serves ports (the same, unless FLOWS_OBSERVABILITY_PORT_BASE changed);
    - a process running without a port goes on without one: a scale-up does not restart the first replicas;
    - a process started now gets its port of `ports`, if any."""
    if observability:
        return ports.get(name)
    if recorded.get("health_port"):
        return ports.get(name) or int(recorded["health_port"])
    return None if recorded.get("supervisor_pid") else ports.get(name)


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
        running = localstack.status().get("services", {})
        for name in surplus_replicas(list(running), replicas):
            localstack.remove_service(name)
            console.print(f"[dim]stack[/] stopped {name} (more than {replicas} replica(s))")
        ports = observability_ports(replicas) if observability or replicas > 1 else {}
        names, kept = [], []
        for service, name in processes(replicas):
            names.append(name)
            recorded = running.get(name, {})
            port = health_port(name, ports, recorded, observability)
            argv, env = process_spec(info, service, name, port)
            done = localstack.ensure_service(name, argv, env, about={"service": service, "health_port": port})
            if done.action == "running":
                kept.append(name)
            elif done.action == "restarted":
                console.print(f"[dim]stack[/] restarted {name} (supervisor pid {done.pid}): {done.why}", soft_wrap=True)
            else:
                again = " (it was stopped with `flows stack stop`)" if recorded.get("stopped_by") else ""
                console.print(f"[dim]stack[/] started {name} (supervisor pid {done.pid}){again}", soft_wrap=True)
        if kept:
            console.print(f"[dim]stack[/] left running, unchanged: {', '.join(kept)}", soft_wrap=True)
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
                  f"{info.database_url.split('@')[-1]}, state in {info.state_dir}", soft_wrap=True)
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
    # Whole, however narrow the terminal (80 columns when not one): a log's path cut to `/work/wt-s…` names nothing.
    print_whole(table("flows stack", ["component", "state", "pid", "where", "health", "restarts", "last exit"],
                      rows))


def _service_state(s: dict[str, Any]) -> str:
    if s.get("running"):
        return "running"
    if s.get("supervisor_pid"):
        return "restarting"
    if s.get("stopped_by"):
        return f"stopped by {s['stopped_by']} at {_utc(s.get('stopped_at'))} UTC"
    return "stopped"


def _utc(epoch: object) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(epoch))) if isinstance(epoch, int | float) else "?"


# ---------------------------------------------------------------- one process: stop, start, restart


def _process(name: str) -> dict[str, Any]:
    """Process `name` as `status` shows it, if `stop|start|restart` can act on it: a recorded process of one of
    the platform's services (a replica by its own name, as `status` names it), or Prometheus. Anything else is a
    usage error (exit 2) that lists the names it could be."""
    services = localstack.status().get("services") or {}
    known = sorted(n for n, s in services.items() if s.get("service") in SERVICES or n == "prometheus")
    if name in known:
        return dict(services[name])
    if not known:
        raise typer.BadParameter(f"{name!r}: this stack ({localstack.state_dir()}) runs no service; start them with "
                                 "`flows stack up`", param_hint="NAME")
    why = " is infrastructure: `flows stack down` and `flows stack up` stop and start it" \
        if re.fullmatch(r"kafka-\d+|postgres", name) else " is not a service of this stack"
    raise typer.BadParameter(f"{name!r}{why}. One of: {', '.join(known)}", param_hint="NAME")


def stop(name: str) -> None:
    """Stops process `name` and records that the operator did (`status`: "stopped by ..."): its supervisor goes
    first, so nothing starts it again until `start`, `restart` or `up`."""
    s = _process(name)
    if not s.get("supervisor_pid"):
        console.print(f"{name} is not running ({_service_state(s)}): nothing to stop", soft_wrap=True)
        return
    done = _stop(name, s, by=operator_name())
    console.print(f"[green]{name} stopped[/] in {done.seconds:.1f} s ({_how_it_ended(done)}); it stays stopped until "
                  f"`flows stack start {name}` (or `flows stack up`)", soft_wrap=True)
    _prometheus_follows(name)


def _stop(name: str, s: dict[str, Any], by: str | None) -> localstack.Stopped:
    """Stops running process `name` (`s`: as `status` shows it), saying how first; `by`: the operator's mark."""
    from deploy.supervisor import STOP_GRACE_S

    console.print(f"[dim]stack[/] stopping {name} (pid {s.get('pid') or '-'}, supervisor pid {s['supervisor_pid']}): "
                  f"SIGTERM, then SIGKILL if it still runs after {STOP_GRACE_S:.0f} s", soft_wrap=True)
    done = localstack.stop_service(name, by=by, timeout=STOP_GRACE_S + 5)
    assert done is not None
    return done


def _how_it_ended(done: localstack.Stopped) -> str:
    if done.killed:
        return "it did not end on SIGTERM: killed with SIGKILL"
    if done.last_exit == "killed by SIGKILL":
        return "it did not end on SIGTERM: its supervisor killed it with SIGKILL"
    return done.last_exit or "ended"


def start(name: str) -> None:
    """Starts process `name` again with what `up` would give it now (its recorded health port kept), once it
    stays up; one that runs is left alone."""
    s = _process(name)
    if s.get("supervisor_pid"):
        console.print(f"{name} is already running (pid {s.get('pid') or '- (being restarted)'}, supervisor pid "
                      f"{s['supervisor_pid']}): nothing to do", soft_wrap=True)
        return
    _start(name, s)


def restart(name: str) -> None:
    """`stop` (without the operator's mark: it is started again at once), then `start`; says the new pid."""
    s = _process(name)
    if s.get("supervisor_pid"):
        done = _stop(name, s, by=None)
        console.print(f"[dim]stack[/] {name} stopped in {done.seconds:.1f} s ({_how_it_ended(done)})", soft_wrap=True)
    else:
        console.print(f"[dim]stack[/] {name} was not running ({_service_state(s)})", soft_wrap=True)
    _start(name, s)


def _start(name: str, s: dict[str, Any]) -> None:
    info = localstack.info()
    if info is None:
        raise UserError(f"cannot start {name}: the Kafka of this stack ({localstack.state_dir()}) is not running; "
                        "start the stack with `flows stack up`")
    if name == "prometheus":
        from services.cli import observability as obs

        services = localstack.status().get("services") or {}
        _, url = obs.start_prometheus(info.state_dir, prometheus_targets(services), port=_prometheus_port())
        now = localstack.status()["services"][name]
        console.print(f"[green]prometheus running[/]: pid {now.get('pid')} (supervisor pid {now.get('supervisor_pid')})"
                      f", at {url}", soft_wrap=True)
        return
    service, port = str(s["service"]), s.get("health_port")
    argv, env = process_spec(info, service, name, int(port) if port else None)
    localstack.ensure_service(name, argv, env, about={"service": service, "health_port": port})
    localstack.wait_services_alive([name])
    now = localstack.status()["services"][name]
    health = f", health 127.0.0.1:{port}" if port else ""
    console.print(f"[green]{name} running[/]: pid {now.get('pid')} (supervisor pid {now.get('supervisor_pid')}){health}"
                  f", log {now.get('log')}", soft_wrap=True)
    _prometheus_follows(name)


def _prometheus_port() -> int | None:
    """The port the recorded Prometheus listens on (its --web.listen-address), so that starting it again or
    reloading it does not move it to whatever FLOWS_OBSERVABILITY_PORT_BASE the caller has."""
    rec = localstack._load_state(localstack.state_dir())["services"].get("prometheus") or {}
    for arg in rec.get("argv") or []:
        if arg.startswith("--web.listen-address="):
            return int(arg.rsplit(":", 1)[1])
    return None


def _prometheus_follows(name: str) -> None:
    """When Prometheus runs, it scrapes what the stack keeps running (`prometheus_targets`): a process stopped by
    the operator is no target (no TargetDown alert for it), one started again is."""
    if name == "prometheus":
        return
    services = localstack.status().get("services") or {}
    if not services.get("prometheus", {}).get("supervisor_pid"):
        return
    from services.cli import observability as obs

    _, url = obs.start_prometheus(localstack.state_dir(), prometheus_targets(services), port=_prometheus_port())
    console.print(f"[dim]stack[/] Prometheus at {url} reloaded: it scrapes {len(prometheus_targets(services))} "
                  "processes", soft_wrap=True)
