"""Faults on the session's test stack, wherever it runs (tests/conftest.py): the local stack's processes, or
the containers of FLOWS_TEST_STACK=containers (deploy/localstack/containers.py). The fault tests call these,
so they run unchanged either way."""

from __future__ import annotations

from deploy import localstack
from deploy.localstack import containers


def stop_postgres() -> None:
    if (running := containers.running()) is not None:
        running.halt("postgres")
        return
    sd = localstack.state_dir()
    with localstack._locked(sd):
        state = localstack._load_state(sd)
        if state["postgres"].get("external"):
            raise RuntimeError("the tests run on an external PostgreSQL (DATABASE_URL): it cannot be stopped here")
        localstack._stop_postgres(state["postgres"])


def start_postgres() -> None:
    """Starts what is not running (here: PostgreSQL) and waits until it answers."""
    if (running := containers.running()) is not None:
        running.resume("postgres")
        return
    brokers = int(localstack._load_state(localstack.state_dir()).get("brokers", 1) or 1)
    localstack.up(brokers=brokers, progress=lambda line: None)


def _kafka_container(node_id: int) -> containers.ContainerStack | None:
    """The container stack when the session runs on one (its one Kafka node is node 1), else None."""
    running = containers.running()
    if running is not None and node_id != 1:
        raise ValueError(f"the container stack has one Kafka node, not node {node_id}")
    return running


def stop_kafka_node(node_id: int, hard: bool = False) -> None:
    """Graceful by default; `hard` kills (SIGKILL) the node."""
    if (running := _kafka_container(node_id)) is not None:
        running.halt("kafka", hard)
    else:
        localstack.stop_kafka_node(node_id, hard)


def start_kafka_node(node_id: int, timeout: float = 60.0) -> None:
    if (running := _kafka_container(node_id)) is not None:
        running.resume("kafka", timeout)
    else:
        localstack.start_kafka_node(node_id, timeout)
