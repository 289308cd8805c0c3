"""The stack's process records (deploy/localstack/processes.py) survive a step of the wall clock.

A record holds the process's pid and its start; `_alive` checks both, so a pid recycled by a later process is
not taken for the stack's own. psutil's create_time is the boot time as the wall clock says NOW plus the
process's start since boot: a step of the clock (NTP, a VM resumed) moves it for every running process. A CI
run met one step of 10 s: up() then took the stack's own running Kafka for a dead one, tried to start another
and failed on its port. The record after such a step is what this test writes: the same process, its wall-clock
start 10 s off."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from deploy.localstack.processes import _alive, _identity


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_running_process_stays_alive_when_the_wall_clock_steps(child: subprocess.Popen[bytes]) -> None:
    record = {"pid": child.pid, **_identity(child.pid)}
    assert record["started"] is not None and _alive(record)
    assert record["create_time"] is not None
    for step in (10.0, -10.0, 3600.0):
        assert _alive({**record, "create_time": record["create_time"] + step}), step


def test_another_process_with_the_recorded_pid_is_not_the_recorded_one(child: subprocess.Popen[bytes]) -> None:
    time.sleep(0.1)  # a start of its own: clock ticks are 10 ms
    later = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ours = _identity(child.pid)
        # `later` carrying our pid (a recycled pid): its start since boot is not the recorded one
        assert _alive({"pid": later.pid, **_identity(later.pid)})
        assert not _alive({"pid": later.pid, **ours})
    finally:
        later.kill()
        later.wait()


def test_a_record_from_before_started_existed_is_checked_by_its_wall_clock_start(
        child: subprocess.Popen[bytes]) -> None:
    created = _identity(child.pid)["create_time"]
    assert created is not None
    assert _alive({"pid": child.pid, "create_time": created})
    assert not _alive({"pid": child.pid, "create_time": created - 3600})


def test_a_process_that_ended_is_not_alive() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    record = {"pid": proc.pid, **_identity(proc.pid)}
    proc.wait()
    assert not _alive(record)
