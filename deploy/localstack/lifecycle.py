"""The stack as a whole: up, down, info, endpoints, status, and one Kafka node at a time (fault tests)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from deploy.localstack.kafka import _ensure_jars, _kafka_version, _prepare_kafka, _start_kafka_process, _wait_kafka
from deploy.localstack.postgres import _is_our_postgres, _pg_pid, _pg_ready, _start_postgres, _stop_postgres
from deploy.localstack.processes import _alive, _port_in_use, _run_async, _terminate
from deploy.localstack.services import _service_status, stop_service
from deploy.localstack.state import (
    HOST,
    Progress,
    StackError,
    StackInfo,
    _bootstrap,
    _kafka_port_base,
    _load_state,
    _locked,
    _pg_port,
    _pg_url,
    _save_state,
    state_dir,
    ts_sim_port,
)

# --------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------


def _info_from_state(sd: Path, state: dict[str, Any]) -> StackInfo:
    return StackInfo(
        state_dir=sd,
        bootstrap_servers=state["bootstrap_servers"],
        database_url=state["database_url"],
        brokers=int(state["brokers"]),
        external_database=bool(state["postgres"].get("external")),
        ts_port=int(state.get("ts_port") or ts_sim_port(state["kafka"].get("port_base"))),
    )


def _running_brokers(state: dict[str, Any]) -> list[int]:
    return sorted(int(n) for n, rec in state["kafka"]["nodes"].items() if _alive(rec))


def up(brokers: int = 1, progress: Progress = print, timeout: float = 120.0) -> StackInfo:
    """Start whatever is not running yet and wait until Kafka and PostgreSQL answer.

    Idempotent: jars are resolved and storage formatted only once, components already running are left
    alone (a full second ``up`` costs two probes). ``timeout`` bounds the wait for the processes to
    answer, not the one-off Maven download."""
    if brokers not in (1, 3):
        raise ValueError("brokers must be 1 or 3")
    sd = state_dir()
    with _locked(sd):
        state = _load_state(sd)
        running = _running_brokers(state)
        if running and int(state.get("brokers", 0)) != brokers:
            n = int(state["brokers"])
            raise StackError(f"stack is running with {n} broker{'s' if n > 1 else ''}; run down first")
        base = _kafka_port_base()
        if running and state["kafka"].get("port_base", base) != base:
            raise StackError(f"stack is running on Kafka ports from {state['kafka']['port_base']}; run down first")
        ext_url = os.environ.get("DATABASE_URL")
        pg_port = _pg_port()
        if not ext_url and _alive(state["postgres"]) and state["postgres"].get("port") != pg_port:
            raise StackError(f"PostgreSQL is running on port {state['postgres']['port']}; run down first")

        state["brokers"] = brokers
        state["bootstrap_servers"] = _bootstrap(brokers, base)
        state["kafka"]["port_base"] = base
        state["ts_port"] = ts_sim_port(base)
        state["kafka"]["version"] = _kafka_version()
        if not running:
            state["kafka"]["nodes"] = {}
        all_nodes = list(range(1, brokers + 1))
        missing = [n for n in all_nodes if n not in running]

        # 1. Kafka JVMs first: they take longest to boot, PostgreSQL starts meanwhile.
        if missing:
            libs = _ensure_jars(sd, progress)
            _prepare_kafka(sd, brokers, base, libs, progress)
            for node_id in missing:
                progress(f"starting broker {node_id}...")
                state["kafka"]["nodes"][str(node_id)] = _start_kafka_process(sd, brokers, node_id, libs)
                _save_state(sd, state)  # recorded at once, so down() can clean up after a failed up()

        # 2. PostgreSQL
        pg_started = False
        if ext_url:
            state["postgres"] = {**state["postgres"], "external": True, "database_url": ext_url}
            if not _alive(state["postgres"]):
                state["postgres"] = {"external": True, "database_url": ext_url}
            state["database_url"] = ext_url
        else:
            if not _alive(state["postgres"]):
                state["postgres"] = _start_postgres(sd, pg_port, timeout, progress)
                pg_started = True
            state["postgres"]["external"] = False
            state["postgres"]["database_url"] = _pg_url(pg_port)
            state["database_url"] = _pg_url(pg_port)
        _save_state(sd, state)

        # 3. wait for both to answer
        _run_async(lambda: _pg_ready(state["database_url"], create_db=not ext_url, wait_s=timeout))
        if pg_started or (ext_url and missing):
            progress(f"PostgreSQL ready at {state['database_url']}" + (" (external)" if ext_url else ""))
        _wait_kafka(sd, state, set(all_nodes), all_nodes, timeout)
        if missing:
            progress(f"Kafka ready at {state['bootstrap_servers']} ({brokers} broker{'s' if brokers > 1 else ''})")
        return _info_from_state(sd, state)


def down(progress: Progress = print, hard: bool = False) -> None:
    """Stop services, then Kafka, then PostgreSQL; leave no process behind. Data is kept (see README
    for a full reset). Safe to call when nothing runs or when the recorded pids are stale.

    ``hard``: everything killed at once, without a graceful stop (services and brokers SIGKILL, PostgreSQL
    `pg_ctl stop -m immediate`), as a crash of the whole machine would: for a throw-away stack whose data goes
    with it (the fault tests' private stacks), where a broker's controlled shutdown or a checkpoint is only
    waiting. The data is kept and recovers at the next up, as after a crash."""
    sd = state_dir()
    if not (sd / "stack.json").exists():
        return
    with _locked(sd):
        state = _load_state(sd)
        if hard:
            _kill_everything(state, progress)
            _save_state(sd, state)
            progress("stack killed")
            return
        for name in list(state["services"]):
            if _alive(state["services"][name]):
                progress(f"stopping service {name}...")
            stop_service(name)
        state = _load_state(sd)
        nodes = state["kafka"]["nodes"]
        alive = [n for n, rec in nodes.items() if _alive(rec)]
        if alive:
            progress(f"stopping Kafka broker{'s' if len(alive) > 1 else ''} {', '.join(sorted(alive))}...")
        # All nodes at once: stopped one by one, the last ones lose the controller quorum and hang in
        # controlled shutdown until the kill timeout.
        threads = [threading.Thread(target=_terminate, args=(rec, 30.0)) for rec in nodes.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for rec in nodes.values():
            rec["pid"] = None
        pg = state["postgres"]
        if not pg.get("external") and pg.get("pgdata"):
            if _alive(pg) or _is_our_postgres(_pg_pid(Path(pg["pgdata"])), Path(pg["pgdata"])):
                progress("stopping PostgreSQL...")
            _stop_postgres(pg)
            pg["pid"] = None
        _save_state(sd, state)
        progress("stack stopped")


def _kill_everything(state: dict[str, Any], progress: Progress) -> None:
    """down(hard=True): every service's process group and every Kafka node SIGKILLed at once (each waited for
    until it is gone), PostgreSQL stopped in immediate mode meanwhile."""
    targets = [(rec, True) for rec in state["services"].values()] + [(rec, False) for rec in
                                                                      state["kafka"]["nodes"].values()]
    alive = [(rec, group) for rec, group in targets if _alive(rec)]
    if alive:
        progress(f"killing {len(alive)} processes (services, Kafka)...")
    threads = [threading.Thread(target=_terminate, kwargs={"rec": rec, "group": group, "hard": True})
               for rec, group in alive]
    pg = state["postgres"]
    if not pg.get("external") and pg.get("pgdata"):
        if _alive(pg) or _is_our_postgres(_pg_pid(Path(pg["pgdata"])), Path(pg["pgdata"])):
            progress("stopping PostgreSQL (immediate)...")
        threads.append(threading.Thread(target=_stop_postgres, args=(pg, "immediate")))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for rec, _group in targets:
        rec["pid"] = None
    if not pg.get("external"):
        pg["pid"] = None


def info() -> StackInfo | None:
    """What is recorded as running (at least one Kafka node alive), without starting anything."""
    sd = state_dir()
    state = _load_state(sd)
    if not state.get("bootstrap_servers") or not _running_brokers(state):
        return None
    return _info_from_state(sd, state)


def endpoints() -> StackInfo:
    """Where every `flows` command finds the platform, without starting anything: the running stack of
    the state folder (``FLOWS_STACK_DIR``) as its state file records it; when none runs, what ``up``
    would start from the same settings (``FLOWS_KAFKA_PORT_BASE``, ``FLOWS_PG_PORT``, ``DATABASE_URL``)."""
    running = info()
    if running is not None:
        return running
    base = _kafka_port_base()
    ext_url = os.environ.get("DATABASE_URL")
    return StackInfo(state_dir=state_dir(), bootstrap_servers=_bootstrap(1, base),
                     database_url=ext_url or _pg_url(_pg_port()), brokers=1, external_database=bool(ext_url),
                     ts_port=ts_sim_port(base))


def status() -> dict[str, Any]:
    """Per component: running?, pid, port/url, log file. JSON-serialisable."""
    sd = state_dir()
    state = _load_state(sd)
    nodes = {
        n: {
            "running": _alive(rec),
            "pid": rec.get("pid") if _alive(rec) else None,
            "port": rec.get("port"),
            "controller_port": rec.get("controller_port"),
            "log": rec.get("log"),
        }
        for n, rec in sorted(state["kafka"]["nodes"].items())
    }
    pg = state["postgres"]
    if pg.get("external"):
        parts = urlsplit(pg["database_url"])
        pg_running = _port_in_use(parts.port or 5432, parts.hostname or HOST)
        pg_status = {"running": pg_running, "external": True, "url": pg["database_url"], "pid": None}
    else:
        pg_status = {
            "running": _alive(pg),
            "external": False,
            "pid": pg.get("pid") if _alive(pg) else None,
            "port": pg.get("port"),
            "url": pg.get("database_url"),
            "log": pg.get("log"),
        }
    services = {name: _service_status(rec) for name, rec in sorted(state["services"].items())}
    return {
        "state_dir": str(sd),
        "brokers": state.get("brokers"),
        "kafka": {
            "running": bool(nodes) and all(n["running"] for n in nodes.values()),
            "version": state["kafka"].get("version"),
            "bootstrap_servers": state.get("bootstrap_servers"),
            "nodes": nodes,
        },
        "postgres": pg_status,
        "services": services,
    }


def stop_kafka_node(node_id: int, hard: bool = False) -> None:
    """Stop one Kafka node (fault tests). Graceful SIGTERM by default; ``hard=True`` is a SIGKILL crash."""
    sd = state_dir()
    with _locked(sd):
        state = _load_state(sd)
        rec = state["kafka"]["nodes"].get(str(node_id))
        if rec is None:
            raise StackError(f"no Kafka node {node_id} is recorded in {sd / 'stack.json'}")
        _terminate(rec, timeout=30.0, hard=hard)
        rec["pid"] = None
        _save_state(sd, state)


def start_kafka_node(node_id: int, timeout: float = 60.0) -> None:
    """Restart one Kafka node of the recorded stack and wait until the cluster sees all its brokers."""
    sd = state_dir()
    with _locked(sd):
        state = _load_state(sd)
        brokers = int(state.get("brokers") or 0)
        if not 1 <= node_id <= brokers:
            raise StackError(f"no Kafka node {node_id} in a {brokers}-broker stack; run up first")
        rec = state["kafka"]["nodes"].get(str(node_id))
        if not _alive(rec):
            libs = sd / "kafka" / "libs"
            base = int(state["kafka"].get("port_base", _kafka_port_base()))
            if base != _kafka_port_base():
                raise StackError(f"stack was started with FLOWS_KAFKA_PORT_BASE={base}")
            state["kafka"]["nodes"][str(node_id)] = _start_kafka_process(sd, brokers, node_id, libs)
            _save_state(sd, state)
        everyone = set(range(1, brokers + 1))
        probe = [n for n in sorted(everyone) if _alive(state["kafka"]["nodes"].get(str(n)))]
        expected = set(probe)
        _wait_kafka(sd, state, expected, probe, timeout)
