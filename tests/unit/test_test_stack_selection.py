"""Issue 11 item 8: which stack a test session runs on (deploy/localstack/containers.py).

FLOWS_TEST_STACK x a Docker daemon answering or not: the local stack unless containers are asked for;
containers asked for and no daemon answering is an error at the session's start, never a fallback.
The error path is exercised for real: DOCKER_HOST points at a socket nobody listens on (and this
machine has no Docker at all), so the real docker client fails and the real pytest session stops.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.localstack import containers
from deploy.localstack.kafka import broker_settings
from deploy.localstack.state import StackError

ROOT = Path(__file__).resolve().parents[2]


class Probe:
    """A stand-in for the daemon's answer that records whether it was asked at all."""

    def __init__(self, problem: str | None) -> None:
        self.problem, self.asked = problem, 0

    def __call__(self) -> str | None:
        self.asked += 1
        return self.problem


@pytest.mark.parametrize("value", [None, "", "local", "LOCAL "])
@pytest.mark.parametrize("problem", [None, "ConnectionError: no socket"])
def test_the_local_stack_unless_containers_are_asked_for_and_docker_is_not_asked(
        value: str | None, problem: str | None) -> None:
    probe = Probe(problem)
    environ = {} if value is None else {containers.MODE_ENV: value}
    assert containers.select(environ, probe) == "local"
    assert probe.asked == 0


@pytest.mark.parametrize("value", ["containers", " Containers"])
def test_containers_when_asked_for_and_a_daemon_answers(value: str) -> None:
    probe = Probe(None)
    assert containers.select({containers.MODE_ENV: value}, probe) == "containers"
    assert probe.asked == 1


def test_containers_asked_for_without_a_daemon_is_an_error_naming_the_daemon_and_the_way_out() -> None:
    environ = {containers.MODE_ENV: "containers", "DOCKER_HOST": "tcp://127.0.0.1:1"}
    with pytest.raises(StackError) as caught:
        containers.select(environ, Probe("ConnectionError: refused"))
    message = str(caught.value)
    assert "FLOWS_TEST_STACK=containers" in message and "no Docker daemon answers at tcp://127.0.0.1:1" in message
    assert "ConnectionError: refused" in message and "unset FLOWS_TEST_STACK" in message


def test_an_unknown_value_is_an_error_not_the_default() -> None:
    probe = Probe(None)
    with pytest.raises(StackError, match="FLOWS_TEST_STACK='docker': write `containers`"):
        containers.select({containers.MODE_ENV: "docker"}, probe)
    assert probe.asked == 0


def test_the_real_docker_client_reports_no_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nowhere = f"unix://{tmp_path / 'docker.sock'}"
    monkeypatch.setenv("DOCKER_HOST", nowhere)
    problem = containers.docker_problem(timeout=2)
    assert problem is not None and problem.strip()
    with pytest.raises(StackError, match=f"no Docker daemon answers at {nowhere}"):
        containers.select({containers.MODE_ENV: "containers", "DOCKER_HOST": nowhere})


def test_a_session_asking_for_containers_without_docker_stops_at_its_start(tmp_path: Path) -> None:
    nowhere = f"unix://{tmp_path / 'docker.sock'}"
    env = {**os.environ, containers.MODE_ENV: "containers", "DOCKER_HOST": nowhere}
    done = subprocess.run([sys.executable, "-m", "pytest", "tests/unit/test_states.py", "-q", "-p", "no:cacheprovider"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, output
    assert f"FLOWS_TEST_STACK=containers, but no Docker daemon answers at {nowhere}" in output
    assert " passed" not in output and " failed" not in output  # no test ran


def test_the_kafka_container_runs_with_every_setting_of_the_local_brokers() -> None:
    env = containers.kafka_environment(34092, "EAAAAAAAAAAAAAAAAAAAAA")
    for key, value in broker_settings(1).items():
        assert env["KAFKA_" + key.upper().replace(".", "_")] == str(value)
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://127.0.0.1:34092"
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller" and env["CLUSTER_ID"] == "EAAAAAAAAAAAAAAAAAAAAA"
