"""`flows stack up --observability` on a stack of its own, real processes: what Prometheus scrapes is what runs.

- Scaled (`--replicas 2 --observability` after `--observability`, then a plain `up --replicas 1`): the RUNNING
  Prometheus's active targets (/api/v1/targets) are the services' current health ports, every one up, and each
  job's /healthz names that job's service; the first replica of each service keeps its port.
- A service whose supervisor was stopped and that a plain `up` starts again keeps its health port and answers
  /readyz there; the console's target is up (it serves the health port it is given, like the others).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.stack_urls import REPO, SESSION_KAFKA_PORT_BASE, reserve_first

pytestmark = pytest.mark.integration

# Prometheus on the run's first port, then one health port per process: 6 services, 4 more with 2 replicas.
PORTS = 12


def _observability_base(monkeypatch: pytest.MonkeyPatch) -> int:
    """A free run of ports for Prometheus and the health ports, in the session's own range (base + 30 .. + 100,
    below the private stacks' + 100 .. + 900)."""
    own = SESSION_KAFKA_PORT_BASE
    got = reserve_first(range(base, base + PORTS) for base in range(own + 30, own + 100 - PORTS, PORTS))
    assert got is not None, f"no {PORTS} free ports in {own + 30}..{own + 100}"
    monkeypatch.setenv("FLOWS_OBSERVABILITY_PORT_BASE", str(got[0]))
    return got[0]


def _flows(*args: str, timeout: float = 300) -> str:
    done = subprocess.run([sys.executable, "-m", "services.cli.main", *args], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "COLUMNS": "250"}, timeout=timeout)
    assert done.returncode == 0, f"flows {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _services() -> dict[str, dict[str, Any]]:
    return dict(json.loads(_flows("stack", "status", "--json"))["services"])


def _health_ports(services: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Each recorded process's health port (the TS simulator and Prometheus have none)."""
    return {name: int(s["health_port"]) for name, s in services.items() if s.get("health_port")}


def _get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=5)


def _active_targets(prometheus: str) -> dict[str, dict[str, Any]]:
    """The running Prometheus's active targets, by job."""
    targets = _get(f"{prometheus}/api/v1/targets").json()["data"]["activeTargets"]
    return {t["labels"]["job"]: t for t in targets}


def _wait_scraping_what_runs(prometheus: str, limit_s: float = 120) -> dict[str, int]:
    """Waits until Prometheus scrapes exactly the recorded health ports, one job per process named after it, each
    target up; returns the ports. On timeout, fails with what it scrapes and what runs."""
    ports: dict[str, int] = {}
    scraped: dict[str, Any] = {}
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        ports = _health_ports(_services())
        try:
            scraped = {job: (t["scrapeUrl"], t["health"], t.get("lastError"))
                       for job, t in _active_targets(prometheus).items()}
        except (httpx.HTTPError, KeyError, ValueError):
            scraped = {}
        wanted = {name: (f"http://127.0.0.1:{port}/metrics", "up", "") for name, port in ports.items()}
        if scraped == wanted:
            return ports
        time.sleep(1)
    raise AssertionError(f"Prometheus scrapes {scraped}, the stack runs {ports}")


def _assert_each_job_scrapes_its_service(prometheus: str, services: dict[str, dict[str, Any]]) -> None:
    for job, target in _active_targets(prometheus).items():
        healthz = target["scrapeUrl"].removesuffix("/metrics") + "/healthz"
        assert _get(healthz).json()["service"] == services[job]["service"], (job, healthz)


def _prometheus_url(base: int) -> str:
    return f"http://127.0.0.1:{base}"


def test_prometheus_follows_the_stack_when_it_scales(private_stack: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = _observability_base(monkeypatch)
    prometheus = _prometheus_url(base)
    _flows("stack", "up", "--observability")
    one = _wait_scraping_what_runs(prometheus)
    assert set(one) == {"loader", "formatter", "ts-gateway", "onboarding", "audit", "console"}, one

    _flows("stack", "up", "--replicas", "2", "--observability")
    two = _wait_scraping_what_runs(prometheus)
    assert set(two) == set(one) | {"loader-2", "formatter-2", "ts-gateway-2", "onboarding-2"}, two
    assert {name: two[name] for name in one} == one, "the first replicas keep their health ports"
    _assert_each_job_scrapes_its_service(prometheus, _services())

    # a plain `up` that scales down: the running Prometheus stops scraping the replicas it removed
    _flows("stack", "up", "--replicas", "1")
    assert _wait_scraping_what_runs(prometheus) == one
    _assert_each_job_scrapes_its_service(prometheus, _services())


def test_a_service_started_again_by_up_keeps_its_health_port(private_stack: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    base = _observability_base(monkeypatch)
    prometheus = _prometheus_url(base)
    _flows("stack", "up", "--observability")
    before = _wait_scraping_what_runs(prometheus)
    assert "console" in before  # and up: the console serves the health port it is given
    _assert_each_job_scrapes_its_service(prometheus, _services())

    supervisor = _services()["formatter"]["supervisor_pid"]
    os.kill(supervisor, signal.SIGTERM)  # the supervisor stops the formatter, then exits
    psutil.Process(supervisor).wait(30)
    assert not _services()["formatter"]["running"]

    _flows("stack", "up")
    services = _services()
    assert services["formatter"]["running"] and services["formatter"]["supervisor_pid"] != supervisor
    assert _health_ports(services) == before
    table = _flows("stack", "status")
    row = next(line for line in table.splitlines() if " formatter " in line)
    assert f"127.0.0.1:{before['formatter']}" in row, row
    deadline, answer = time.monotonic() + 90, "nothing"
    while True:
        try:
            ready = _get(f"http://127.0.0.1:{before['formatter']}/readyz")
            if ready.status_code == 200:
                break
            answer = f"{ready.status_code} {ready.text}"
        except httpx.HTTPError as exc:
            answer = repr(exc)
        assert time.monotonic() < deadline, f"the formatter's /readyz: {answer}"
        time.sleep(1)
    assert ready.json()["service"] == "formatter"
    assert _wait_scraping_what_runs(prometheus) == before
