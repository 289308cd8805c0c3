"""`flows stack stop|start|restart NAME` and a repeated `flows stack up`, on a stack of its own, real processes:

- `up` again with the same flags starts and restarts nothing (same pids); `up --replicas 2` after `up` adds the
  second replicas and leaves the first ones running (same pids); a setting the services receive that changed
  restarts them;
- one replica stopped (`loader-2`): its processes are gone, nothing starts it again (its supervisor went first),
  `status` says who stopped it; `start` runs it again with a new pid, ready on its health port; `restart` gives a
  new pid and says it; an unknown name is refused (exit 2) listing the names there are; a later `up` starts what
  the operator stopped;
- `status` without a terminal prints every log's path whole.
"""

from __future__ import annotations

import json
import os
import re
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

FIRST = ("ts-simulator", "loader", "formatter", "ts-gateway", "onboarding", "audit", "console")
SECOND = ("loader-2", "formatter-2", "ts-gateway-2", "onboarding-2")
PORTS = 12  # the health ports of 6 services and 4 second replicas, and Prometheus's (unused here)


def _observability_base(monkeypatch: pytest.MonkeyPatch) -> int:
    """A free run of ports for the health ports, in the session's own range (base + 30 .. + 100, below the private
    stacks' + 100 .. + 900), as tests/integration/test_stack_observability.py takes it."""
    own = SESSION_KAFKA_PORT_BASE
    got = reserve_first(range(base, base + PORTS) for base in range(own + 30, own + 100 - PORTS, PORTS))
    assert got is not None, f"no {PORTS} free ports in {own + 30}..{own + 100}"
    monkeypatch.setenv("FLOWS_OBSERVABILITY_PORT_BASE", str(got[0]))
    return got[0]


def _flows(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`flows ARGS` as from a pipe: no terminal, no COLUMNS (rich's 80 columns), plus `env`."""
    base = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return subprocess.run([sys.executable, "-m", "services.cli.main", *args], capture_output=True, text=True,
                          cwd=REPO, env={**base, **(env or {})}, timeout=timeout)


def _ok(*args: str, env: dict[str, str] | None = None) -> str:
    done = _flows(*args, env=env)
    assert done.returncode == 0, f"flows {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _services() -> dict[str, dict[str, Any]]:
    return dict(json.loads(_ok("stack", "status", "--json"))["services"])


def _pids(names: tuple[str, ...] | list[str]) -> dict[str, tuple[int, int]]:
    """(supervisor pid, service pid) of each named process, every one running."""
    services = _services()
    for name in names:
        assert services[name]["running"], (name, services[name])
    return {name: (services[name]["supervisor_pid"], services[name]["pid"]) for name in names}


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _line(text: str, prefix: str) -> str:
    found = [line for line in text.splitlines() if line.startswith(prefix)]
    assert found, f"no line {prefix!r} in:\n{text}"
    return found[0]


def _left_running(out: str) -> set[str]:
    return set(_line(out, "stack left running, unchanged: ").removeprefix("stack left running, unchanged: ")
               .split(", "))


def _ready(port: int, service: str, limit_s: float = 120) -> None:
    """The process on health port `port` answers /readyz 200 naming `service` (a hang guard, not a speed limit)."""
    deadline, answer = time.monotonic() + limit_s, "nothing"
    while time.monotonic() < deadline:
        try:
            ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
            if ready.status_code == 200:
                assert ready.json()["service"] == service, ready.text
                return
            answer = f"{ready.status_code} {ready.text}"
        except httpx.HTTPError as exc:
            answer = repr(exc)
        time.sleep(1)
    raise AssertionError(f"no ready {service} on 127.0.0.1:{port} within {limit_s:.0f} s: {answer}")


def _answers(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    except httpx.HTTPError:
        return False
    return True


def test_up_again_restarts_nothing_a_scale_up_keeps_the_first_replicas_and_one_is_stopped_by_name(
        private_stack: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _observability_base(monkeypatch)
    out = _ok("stack", "up")
    assert {line.split()[2] for line in out.splitlines() if line.startswith("stack started ")} == set(FIRST), out
    first = _pids(FIRST)

    # the same `up` from another terminal: nothing the services are given differs
    again = _ok("stack", "up", env={"COLUMNS": "250", "TERM": "dumb", "OLDPWD": "/", "FLOWS_OPERATOR": "ops.verdi"})
    assert _left_running(again) == set(FIRST), again
    assert "stack started" not in again and "stack restarted" not in again, again
    assert _pids(FIRST) == first

    scaled = _ok("stack", "up", "--replicas", "2")
    assert {line.split()[2] for line in scaled.splitlines() if line.startswith("stack started ")} == set(SECOND)
    assert _left_running(scaled) == set(FIRST) and "restarted" not in scaled, scaled
    both = _pids(FIRST + SECOND)
    assert {name: both[name] for name in FIRST} == first, "the first replicas keep running, untouched"
    services = _services()
    assert all(services[name].get("health_port") for name in SECOND)

    # where the audit saw every service restarted: `up` with health ports, from a shell that differs
    repeated = _ok("stack", "up", "--replicas", "2", env={"COLUMNS": "250", "OLDPWD": "/", "SHLVL": "7"})
    assert _left_running(repeated) == set(FIRST + SECOND), repeated
    assert _pids(FIRST + SECOND) == both

    _one_replica_stopped_started_and_restarted_by_name()

    # a setting every service receives (its default value: nothing else changes) is a change that concerns them
    both = _pids(FIRST + SECOND)
    changed = _ok("stack", "up", "--replicas", "2", env={"FLOWS_LOG_LEVEL": "INFO"})
    restarted = {line.split()[2]: line for line in changed.splitlines() if line.startswith("stack restarted ")}
    assert set(restarted) == set(FIRST + SECOND), changed
    assert all(line.endswith("its environment changed: FLOWS_LOG_LEVEL added") for line in restarted.values())
    after = _pids(FIRST + SECOND)
    assert not [name for name in after if after[name][0] == both[name][0] or after[name][1] == both[name][1]]
    assert not [pid for pair in both.values() for pid in pair if not _gone(pid)]


def _one_replica_stopped_started_and_restarted_by_name() -> None:
    """On the stack `up --replicas 2` left (one stack for both tests: each took one to two minutes to start)."""
    before = _pids(FIRST + SECOND)
    services = _services()
    port = int(services["loader-2"]["health_port"])
    _ready(port, "loader")

    # names that are not the stack's processes: refused, exit 2, naming the ones there are
    for wrong in ("lodaer", "loader-3", "kafka-1", "postgres"):
        for command in ("stop", "start", "restart"):
            refused = _flows("stack", command, wrong, env={"COLUMNS": "300"})
            assert refused.returncode == 2, (command, wrong, refused.stdout, refused.stderr)
            message = " ".join(re.sub(r"[\u2500-\u257f]", " ", refused.stderr).split())
            assert f"'{wrong}'" in message and "One of: " + ", ".join(sorted(FIRST + SECOND)) in message, message
    assert "infrastructure" in _flows("stack", "stop", "kafka-1", env={"COLUMNS": "300"}).stderr
    assert _pids(FIRST + SECOND) == before

    stopped = _ok("stack", "stop", "loader-2", env={"FLOWS_OPERATOR": "ops.verdi"})
    supervisor, pid = before["loader-2"]
    assert f"stopping loader-2 (pid {pid}, supervisor pid {supervisor}): SIGTERM, then SIGKILL if it still runs " \
           "after 15 s" in stopped, stopped
    assert re.search(r"^loader-2 stopped in [\d.]+ s \(.+\); it stays stopped until `flows stack start loader-2`",
                     stopped, re.M), stopped
    assert _gone(pid) and _gone(supervisor)
    # its supervisor went first: after the 1 s a supervisor waits before a restart, and more, it is still stopped
    time.sleep(5)
    services = _services()
    assert not services["loader-2"]["running"] and services["loader-2"]["supervisor_pid"] is None
    assert services["loader-2"]["stopped_by"] == "ops.verdi" and not _answers(port)
    assert _pids([n for n in FIRST + SECOND if n != "loader-2"]) == {n: p for n, p in before.items() if n != "loader-2"}
    table = _ok("stack", "status")
    row = next(line for line in table.splitlines() if " loader-2 " in line)
    assert "stopped by ops.verdi at " in row and services["loader-2"]["log"] in row, row
    for name, s in services.items():  # every path whole, though no terminal and no COLUMNS
        assert s["log"] in next(line for line in table.splitlines() if f" {name} " in line)
    assert "nothing to stop" in _ok("stack", "stop", "loader-2")

    started = _ok("stack", "start", "loader-2")
    now = _services()["loader-2"]
    assert now["running"] and now["pid"] not in (None, pid) and now["health_port"] == port
    assert f"loader-2 running: pid {now['pid']} (supervisor pid {now['supervisor_pid']}), health 127.0.0.1:{port}" \
           in started, started
    _ready(port, "loader")
    assert "already running" in _ok("stack", "start", "loader-2")
    assert _services()["loader-2"]["pid"] == now["pid"]

    old_supervisor, old = before["loader"]
    restarted = _ok("stack", "restart", "loader")
    loader = _services()["loader"]
    assert loader["running"] and loader["pid"] != old and loader["supervisor_pid"] != old_supervisor
    assert f"loader running: pid {loader['pid']} (supervisor pid {loader['supervisor_pid']})" in restarted, restarted
    assert re.search(r"loader stopped in [\d.]+ s", restarted) and _gone(old) and _gone(old_supervisor)
    assert "stopped_by" not in loader

    # a later `up` starts what the operator stopped, says so, and leaves the rest running
    _ok("stack", "stop", "formatter-2")
    up = _ok("stack", "up", "--replicas", "2")
    assert _line(up, "stack started formatter-2 ").endswith("(it was stopped with `flows stack stop`)"), up
    assert _left_running(up) == set(FIRST + SECOND) - {"formatter-2"}, up
    assert _services()["formatter-2"]["running"]
