"""Faults on the session's test stack, wherever it runs (tests/conftest.py): the local stack's processes, or
the containers of FLOWS_TEST_STACK=containers (deploy/localstack/containers.py). The fault tests call these,
so they run unchanged either way."""

from __future__ import annotations

import os

from deploy import localstack
from deploy.localstack import containers
from deploy.localstack.state import _mode_name


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


def damage_on_disk(topic: str, partition: int, marker: bytes) -> int:
    """Changes the first byte of `marker` (bytes a record holds; its first place in the partition's log) in every
    replica's segment file, in place, as a broker's failing disk would: the broker checks a batch's CRC when it is
    produced, never when it serves it, so a consumer then fetches the batch with its CRC no longer matching. Returns
    how many replicas were changed. The local stack's files only: a container's log folder is not reachable from
    here, and the test says so rather than pass without the fault."""
    if containers.running() is not None:
        raise RuntimeError("damaging a Kafka segment on disk needs the local stack's files (FLOWS_TEST_STACK=local)")
    sd = localstack.state_dir()
    brokers = int(localstack._load_state(sd).get("brokers", 1) or 1)
    changed = 0
    for segment in (sd / "kafka" / _mode_name(brokers)).glob(f"node-*/data/{topic}-{partition}/*.log"):
        with segment.open("r+b") as f:
            data = f.read()
            at = data.find(marker)
            if at < 0:
                continue
            f.seek(at)
            f.write(bytes([data[at] ^ 0x20]))
            f.flush()
            os.fsync(f.fileno())
        changed += 1
    return changed
