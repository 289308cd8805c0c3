"""The stack as an operator drives it: topics provisioned from the registry (never auto-created), every
`flows` command on the stack of FLOWS_STACK_DIR, and services restarted by their supervisor after a kill -9.
Real Kafka, PostgreSQL and processes of the test stack (tests/conftest.py)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaTimeoutError, UnknownTopicOrPartitionError

from contracts.topics import DLQ_MAX_MESSAGE_BYTES, all_topics
from deploy import localstack
from services.runtime.settings import Settings
from services.runtime.topics_admin import apply_topics, list_topics
from tests.stack_urls import free_port

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _flows(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli.main", *args], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "COLUMNS": "200", **(env or {})}, timeout=timeout)


async def test_every_registry_topic_and_its_dlq_is_provisioned_as_the_registry_says(stack) -> None:
    partitions = Settings().topic_partitions
    states = {s.name: s for s in await list_topics(stack.bootstrap_servers, partitions)}
    assert len(states) == 2 * len(all_topics())
    for topic in all_topics():
        main, dlq = states[topic.name], states[topic.dlq]
        assert main.partitions == partitions and dlq.partitions == partitions, (main, dlq)
        assert main.replication_factor == dlq.replication_factor == min(3, stack.brokers)
        assert main.configs["retention.ms"] == str(topic.retention_ms)
        assert main.configs["max.message.bytes"] == str(topic.max_message_bytes)
        assert dlq.configs["max.message.bytes"] == str(DLQ_MAX_MESSAGE_BYTES)
        assert not main.warnings and not dlq.warnings, (main.warnings, dlq.warnings)


async def _recreate_small(bootstrap: str, name: str) -> None:
    """Delete a registry topic and create it again with 1 partition and a 1 s retention, as the old
    subscribers' auto-creation left topics; returns once the metadata shows the new one."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([name])
        for _ in range(300):
            if name not in await admin.list_topics():
                break
            await asyncio.sleep(0.1)
        for _ in range(100):  # a deletion still finishing answers TOPIC_ALREADY_EXISTS for a moment
            response = await admin.create_topics([NewTopic(name, 1, 1, topic_configs={"retention.ms": "1000"})])
            if response.topic_errors[0][1] == 0:
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"could not re-create {name}: {response.topic_errors}")
        for _ in range(150):
            described = await admin.describe_topics([name])
            if not described[0]["error_code"] and len(described[0]["partitions"]) == 1:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{name} re-created but not shown with 1 partition")
    finally:
        await admin.close()


async def test_apply_grows_and_reconfigures_a_topic_and_is_idempotent(stack) -> None:
    """A registry topic that exists with too few partitions and a wrong retention (as the old subscribers
    auto-created them) is grown and reconfigured; nothing is deleted; a second apply changes nothing."""
    name = "sources.intramoenia-booking.dlq"
    await _recreate_small(stack.bootstrap_servers, name)
    partitions = Settings().topic_partitions
    first = {s.name: s for s in await apply_topics(stack.bootstrap_servers, partitions)}
    grown, configured = first[name].actions
    assert grown == f"partitions 1 -> {partitions}"
    assert "max.message.bytes" in configured and "retention.ms" in configured
    assert first[name].partitions == partitions and first[name].configs["retention.ms"] == "7776000000"
    second = await apply_topics(stack.bootstrap_servers, partitions)
    assert [s.name for s in second if s.actions] == []


async def test_apply_configures_a_topic_its_stale_metadata_did_not_show(stack, monkeypatch) -> None:
    """A broker's metadata lags a creation by a moment (what failed CI once): apply's first describe does
    not show a topic that exists with 1 partition and a wrong retention, Kafka answers TOPIC_ALREADY_EXISTS
    to the create, and apply grows and configures it instead of calling it created."""
    from services.runtime import topics_admin

    name = "sources.intramoenia-booking.dlq"
    await _recreate_small(stack.bootstrap_servers, name)
    real_describe = topics_admin._describe
    calls = 0

    async def stale_first(admin, names):
        nonlocal calls
        calls += 1
        found = await real_describe(admin, names)
        if calls == 1:
            found.pop(name, None)
        return found

    monkeypatch.setattr(topics_admin, "_describe", stale_first)
    partitions = Settings().topic_partitions
    state = {s.name: s for s in await apply_topics(stack.bootstrap_servers, partitions)}[name]
    assert state.actions[0] == f"partitions 1 -> {partitions}", state
    assert "retention.ms" in state.actions[1], state
    assert state.partitions == partitions and state.configs["retention.ms"] == "7776000000"
    assert not state.warnings, state.warnings


async def test_the_brokers_never_auto_create_a_topic(stack) -> None:
    name = f"never-provisioned-{os.getpid()}-{time.monotonic_ns()}"
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap_servers, request_timeout_ms=3000)
    await producer.start()
    try:
        with pytest.raises((UnknownTopicOrPartitionError, KafkaTimeoutError)):  # "not found in cluster metadata"
            await producer.send_and_wait(name, b"x")
    finally:
        await producer.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap_servers)
    await admin.start()
    try:
        assert name not in await admin.list_topics()
    finally:
        await admin.close()


def test_topics_cli_lists_as_json_and_apply_reports_no_change(stack) -> None:
    listed = _flows("topics", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert {r["name"] for r in rows} == {n for t in all_topics() for n in (t.name, t.dlq)}
    applied = _flows("topics", "apply", "--json")
    assert applied.returncode == 0, applied.stderr
    assert [r["name"] for r in json.loads(applied.stdout) if r["actions"]] == []


def test_every_command_talks_to_the_stack_of_its_state_folder(stack, tmp_path: Path) -> None:
    """The test stack runs on FLOWS_KAFKA_PORT_BASE/FLOWS_PG_PORT of this session, not on the default
    19092/15432: a command finds it through the state file even with the port settings changed, and
    without a running stack it derives the addresses from the port settings."""
    from services.cli.common import settings

    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "FLOWS_KAFKA_BOOTSTRAP")}
    wrong_ports = {**env, "FLOWS_KAFKA_PORT_BASE": "1", "FLOWS_PG_PORT": "2"}
    code = ("from services.cli.common import settings; s = settings(); "
            "print(s.kafka_bootstrap, s.database_url, s.files_dir, s.ts_endpoint)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=wrong_ports,
                         check=True).stdout.split()
    assert out == [stack.bootstrap_servers, stack.database_url, str(stack.state_dir / "files"),
                   f"http://127.0.0.1:{stack.ts_port}"]
    nothing_running = {**env, "FLOWS_STACK_DIR": str(tmp_path), "FLOWS_KAFKA_PORT_BASE": "31192",
                       "FLOWS_PG_PORT": "31193", "FLOWS_TS_SIM_PORT": "31194"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env=nothing_running, check=True).stdout.split()
    assert out == ["127.0.0.1:31192", "postgresql://postgres@127.0.0.1:31193/flows", str(tmp_path / "files"),
                   "http://127.0.0.1:31194"]
    # an explicit address still wins (a deployment without a local stack)
    explicit = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True,
                              env={**wrong_ports, "FLOWS_KAFKA_BOOTSTRAP": "kafka-1:9092,kafka-2:9092"})
    assert explicit.stdout.split()[0] == "kafka-1:9092,kafka-2:9092"
    # and a real command reaches the test stack's PostgreSQL and Kafka through it (on a schema migrated
    # as `flows stack up` migrates it: the session's stack starts without services, so nothing else did)
    import asyncio

    from services.cli.stack import _prepare

    asyncio.run(_prepare(stack.database_url))
    shown = _flows("instances", env=wrong_ports)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert settings().kafka_bootstrap == stack.bootstrap_servers


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_a_service_killed_with_sigkill_runs_again_without_any_command(stack, tmp_path: Path) -> None:
    """The TS simulator service (a real service process, no Kafka consumer that would take the other tests'
    messages) under its supervisor: kill -9 it; its supervisor starts it again, serving, without any command,
    and `flows stack status` shows the restart and the last exit. How fast is not this test's business (a
    timed test); the wait only stops at 120 s, then fails naming what never came back."""
    port = free_port(58, 100)  # in the stack's range, reserved: another worker's test may pick from it
    name = f"probe-sim-{os.getpid()}"
    argv = [sys.executable, "-m", "simulators.sistema_ts", "--port", str(port),
            "--cert-out", str(tmp_path / "ts-sim")]
    supervisor = localstack.start_service(name, argv, {})
    try:
        localstack.wait_services_alive([name], settle_s=1.0, timeout=60)
        deadline = time.monotonic() + 30
        while not _listening(port) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _listening(port)
        before = localstack.status()["services"][name]
        assert before["running"] and before["restarts"] == 0 and before["pid"] != supervisor
        assert psutil.Process(before["pid"]).cmdline()[-4:-2] == ["--port", str(port)]

        os.kill(before["pid"], signal.SIGKILL)
        killed_at = time.monotonic()
        while True:
            now = localstack.status()["services"][name]
            if now["running"] and now["pid"] != before["pid"] and _listening(port):
                break
            assert time.monotonic() - killed_at < 120, f"not serving again 120 s after the kill -9: {now}"
            time.sleep(0.1)
        print(f"\nkilled service serving again after {time.monotonic() - killed_at:.1f} s")
        assert now["restarts"] == 1 and now["last_exit"] == "killed by SIGKILL"
        status = _flows("stack", "status")
        line = next(row for row in status.stdout.splitlines() if name in row)
        assert "running" in line and "killed by SIGKILL" in line
    finally:
        pids = [localstack.status()["services"][name]["pid"], supervisor]
        localstack.stop_service(name)
        stopped = localstack.status()["services"][name]
        localstack.remove_service(name)
    # stopping stops the supervisor first: nothing comes back
    time.sleep(2)
    assert not [p for p in pids if p and psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert not _listening(port)
    assert stopped["running"] is False and name not in localstack.status()["services"]
