"""A repeated `flows stack up`, on a stack of its own, real processes: `up` again with the same flags starts and
restarts nothing (same pids); `up --replicas 2` after `up` adds the second replicas and leaves the first ones running
(same pids); a setting the services receive that changed restarts them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

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
    return next(line for line in text.splitlines() if line.startswith(prefix))


def _left_running(out: str) -> set[str]:
    return set(_line(out, "stack left running, unchanged: ").removeprefix("stack left running, unchanged: ")
               .split(", "))


def test_up_again_restarts_nothing_and_a_scale_up_keeps_the_first_replicas(private_stack: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
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

    assert _left_running(_ok("stack", "up", "--replicas", "2")) == set(FIRST + SECOND)
    assert _pids(FIRST + SECOND) == both

    # a setting every service receives (its default value: nothing else changes) is a change that concerns them
    changed = _ok("stack", "up", "--replicas", "2", env={"FLOWS_LOG_LEVEL": "INFO"})
    restarted = {line.split()[2]: line for line in changed.splitlines() if line.startswith("stack restarted ")}
    assert set(restarted) == set(FIRST + SECOND), changed
    assert all(line.endswith("its environment changed: FLOWS_LOG_LEVEL added") for line in restarted.values())
    after = _pids(FIRST + SECOND)
    assert not [name for name in after if after[name][0] == both[name][0] or after[name][1] == both[name][1]]
    assert not [pid for pair in both.values() for pid in pair if not _gone(pid)]
