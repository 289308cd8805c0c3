"""Integration tests of deploy/localstack/ against real processes (no mocks, never skipped).

The first tests use (and leave running) the shared default stack, as every other integration test
does; the down()/fault tests run a private stack in a temporary state folder on other ports, so they
never stop the stack other sessions are using."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import psutil
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from deploy import localstack
from services.runtime import ops, topics_admin
from services.runtime.kafkaadmin import admin_client
from tests.kafka_topics import create_topics

pytestmark = pytest.mark.integration


def _live(pid: int | None) -> bool:
    """A zombie (exited, not yet reaped) counts as gone: it holds no port, file or memory."""
    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def _roundtrip(
    bootstrap: str, topic: str, acks: str | int = 1, count: int = 5, group: bool = True
) -> list[bytes]:
    """Produce ``count`` messages and read them back; ``group=False`` reads without a consumer group, so
    it does not depend on __consumer_offsets (whose creation needs all 3 replicas in 3-broker mode)."""
    await create_topics(bootstrap, topic)  # auto.create.topics.enable=false: an existing one is kept
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=acks)
    await producer.start()
    try:
        for i in range(count):
            await producer.send_and_wait(topic, f"m{i}".encode(), key=b"k")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=f"g-{uuid.uuid4().hex}" if group else None,
    )
    await consumer.start()
    got: list[bytes] = []
    try:
        deadline = time.monotonic() + 30
        while len(got) < count and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                got.extend(r.value for r in records if r.value is not None)
    finally:
        await consumer.stop()
    return got


# ----------------------------------------------------------------------------------------------------
# the shared default stack
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_stack() -> localstack.StackInfo:
    return localstack.up(progress=lambda _msg: None)


async def test_kafka_roundtrip_and_postgres_answers(default_stack: localstack.StackInfo) -> None:
    topic = f"localstack-test-{uuid.uuid4().hex[:8]}"
    got = await _roundtrip(default_stack.bootstrap_servers, topic)
    assert got == [f"m{i}".encode() for i in range(5)]

    conn = await asyncpg.connect(default_stack.database_url)
    try:
        assert await conn.fetchval("SELECT 1") == 1
        if not default_stack.external_database:
            assert await conn.fetchval("SELECT current_database()") == "flows"
            assert await conn.fetchval("SHOW max_connections") == "200"
            assert await conn.fetchval("SHOW fsync") == "on"
    finally:
        await conn.close()


def test_status_reports_running(default_stack: localstack.StackInfo) -> None:
    st = localstack.status()
    json.dumps(st)  # must be JSON-serialisable for `flows stack status --json`
    assert st["kafka"]["running"] is True
    assert st["brokers"] == default_stack.brokers
    assert st["kafka"]["bootstrap_servers"] == default_stack.bootstrap_servers
    for node in st["kafka"]["nodes"].values():
        assert node["running"] and _live(node["pid"])
    assert st["postgres"]["running"] is True
    assert st["postgres"]["external"] == default_stack.external_database
    assert localstack.info() == default_stack


def test_second_up_reuses_everything_and_does_no_work(default_stack: localstack.StackInfo) -> None:
    before = localstack.status()
    messages: list[str] = []
    again = localstack.up(progress=messages.append)
    after = localstack.status()
    assert again == default_stack
    assert messages == [], f"second up did work: {messages}"
    assert after["kafka"]["nodes"] == before["kafka"]["nodes"]
    assert after["postgres"]["pid"] == before["postgres"]["pid"]


def test_other_broker_count_is_refused_while_running(default_stack: localstack.StackInfo) -> None:
    other = 3 if default_stack.brokers == 1 else 1
    with pytest.raises(localstack.StackError, match="run down first"):
        localstack.up(brokers=other, progress=lambda _msg: None)


# ----------------------------------------------------------------------------------------------------
# a private stack: down() and restarts
# ----------------------------------------------------------------------------------------------------


def _recorded_pids(state: Path) -> list[int]:
    data = json.loads((state / "stack.json").read_text())
    pids = [rec["pid"] for rec in data["kafka"]["nodes"].values()]
    pids.append(data["postgres"]["pid"])
    pids.extend(rec["pid"] for rec in data["services"].values())
    return [p for p in pids if p]


async def test_restart_node_then_down_leaves_no_process(private_stack: Path) -> None:
    info = localstack.up(progress=lambda _msg: None)
    assert info.state_dir == private_stack
    assert not info.external_database
    assert await _roundtrip(info.bootstrap_servers, "private-check", count=1) == [b"m0"]

    # stop the node, bring it back, it serves again. (Graceful: after a hard kill, a single combined node
    # waits out broker.session.timeout.ms of its own previous incarnation, ~20 s of DUPLICATE_BROKER_REGISTRATION.)
    localstack.stop_kafka_node(1)
    assert localstack.status()["kafka"]["nodes"]["1"]["running"] is False
    localstack.start_kafka_node(1, timeout=60)
    assert localstack.status()["kafka"]["running"] is True
    assert await _roundtrip(info.bootstrap_servers, "after-restart", count=2) == [b"m0", b"m1"]

    # a service with a child process: down() must take the whole process group
    code = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); time.sleep(600)"
    )
    svc_pid = localstack.start_service("sleeper", [sys.executable, "-c", code], {"FLOWS_TEST": "1"})
    assert localstack.start_service("sleeper", [sys.executable, "-c", code], {"FLOWS_TEST": "1"}) == svc_pid
    # The whole tree before down(): the supervisor's child (the service) and the service's own child, each once its
    # interpreter has started. Not the service alone: its child comes tens of ms later, and a list taken before it
    # holds only the process the supervisor stops by itself, so a down() that spares the group would pass.
    deadline = time.monotonic() + 60
    while len(child_pids := [c.pid for c in psutil.Process(svc_pid).children(recursive=True)]) < 2:
        assert time.monotonic() < deadline, f"the service and its child not both started in 60 s: {child_pids}"
        await asyncio.sleep(0.1)
    assert len(child_pids) == 2, child_pids
    pg_children = [c.pid for c in psutil.Process(localstack.status()["postgres"]["pid"]).children()]

    pids = _recorded_pids(private_stack)
    assert len(pids) == 3 and all(_live(p) for p in pids)
    localstack.down(progress=lambda _msg: None)
    alive = [p for p in pids + child_pids + pg_children if _live(p)]
    assert alive == [], f"still running after down(): {alive}"
    st = localstack.status()
    assert not st["kafka"]["running"] and not st["postgres"]["running"]
    assert localstack.info() is None

    # stale pids: point every record at a live process that is NOT ours (this test process, with a
    # different start time); down() must neither fail nor kill it.
    data = json.loads((private_stack / "stack.json").read_text())
    for rec in [*data["kafka"]["nodes"].values(), data["postgres"], *data["services"].values()]:
        rec["pid"], rec["create_time"] = os.getpid(), 1.0
    (private_stack / "stack.json").write_text(json.dumps(data))
    localstack.down(progress=lambda _msg: None)
    assert localstack.info() is None

    # warm up: state reused (no Maven, no format, no initdb); how long it takes is not a test's business
    messages: list[str] = []
    info2 = localstack.up(progress=messages.append)
    assert info2 == info
    assert not any(w in m for m in messages for w in ("jars", "formatting", "initialising")), messages

    # down(hard=True), the private stacks' teardown (tests/conftest.py): killed, yet nothing left either, the
    # service's child included
    svc_pid = localstack.start_service("sleeper", [sys.executable, "-c", code], {"FLOWS_TEST": "1"})
    deadline = time.monotonic() + 60
    while len(child_pids := [c.pid for c in psutil.Process(svc_pid).children(recursive=True)]) < 2:
        assert time.monotonic() < deadline, f"the service and its child not both started in 60 s: {child_pids}"
        await asyncio.sleep(0.1)
    pg_children = [c.pid for c in psutil.Process(localstack.status()["postgres"]["pid"]).children()]
    pids = _recorded_pids(private_stack)
    assert len(pids) == 3 and all(_live(p) for p in pids)
    localstack.down(progress=lambda _msg: None, hard=True)
    alive = [p for p in pids + child_pids + pg_children if _live(p)]
    assert alive == [], f"still running after down(hard=True): {alive}"
    assert localstack.info() is None and not localstack.status()["postgres"]["running"]


async def _operator_tools_answer(bootstrap: str) -> None:
    """`flows topics list` and `flows lag` answer with a broker down. aiokafka's admin sent each request to a node
    drawn from the metadata it read at start, which still lists the stopped node: a third of them failed; and it
    asked every broker of the metadata for its groups."""
    for _ in range(10):
        states = await topics_admin.list_topics(bootstrap, 3)
        assert {s.name for s in states} >= {"flows.load-requested", "flows.load-requested.dlq"}
        assert await ops.consumer_lag(bootstrap) == []  # no group has committed on this stack
        assert await ops.consumer_groups(bootstrap) == []  # nor has one joined


async def test_three_brokers_survive_one_node_down(private_stack: Path) -> None:
    info = localstack.up(brokers=3, progress=lambda _msg: None)
    assert info.brokers == 3 and len(info.bootstrap_servers.split(",")) == 3
    admin = AIOKafkaAdminClient(bootstrap_servers=info.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic("rf3", num_partitions=3, replication_factor=3)])
    finally:
        await admin.close()
    # An admin client whose metadata was read with every node up. The node it names as controller (in KRaft a
    # live broker drawn at random) is the one stopped: aiokafka sent topic creation to that node alone and
    # waited for it until the request timed out, which failed `flows topics apply` (and a CI run) whenever a
    # fresh metadata read still named a node that had just stopped.
    stale = admin_client(info.bootstrap_servers, request_timeout_ms=20_000)
    await stale.start()
    first = stale._client.cluster.controller.nodeId  # the node this client would wait for
    second = next(n for n in (1, 2, 3) if n != first)
    localstack.stop_kafka_node(first)
    assert localstack.status()["kafka"]["nodes"][str(first)]["running"] is False
    try:
        response = await stale.create_topics([NewTopic("made-with-a-node-down", 1, 2)])
        assert [e[1] for e in response.topic_errors] == [0], response.topic_errors
    finally:
        await stale.close()
    await _operator_tools_answer(info.bootstrap_servers)
    # min.insync.replicas=2: acks=all still succeeds with two of three nodes
    got = await _roundtrip(info.bootstrap_servers, "rf3", acks="all", count=3, group=False)
    assert got == [b"m0", b"m1", b"m2"]
    # Hang guards (180 s): a node of three back took 6 s here, and 10.6 s after the SIGKILL below, on a machine at
    # load 6-7; 60 s did not leave ten times that
    localstack.start_kafka_node(first, timeout=180)
    assert localstack.status()["kafka"]["running"] is True
    # A crash (SIGKILL): the node stays in the cluster metadata until its session with the controller expires.
    localstack.stop_kafka_node(second, hard=True)
    await _operator_tools_answer(info.bootstrap_servers)
    localstack.start_kafka_node(second, timeout=180)
    assert localstack.status()["kafka"]["running"] is True
