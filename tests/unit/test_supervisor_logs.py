"""The supervisor's log rotation, with real processes: a service printing steadily into a file opened for
appending, as `flows stack up` starts it, under `python -m deploy.supervisor --log`. Nothing grew a log without
bound before, and the supervisor's own lines were text between the service's JSON lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy.supervisor import rotate

REPO = Path(__file__).resolve().parents[2]
# a service that prints a numbered JSON line every millisecond, ~40 bytes each
CHATTY = ("import json, time\n"
          "for n in range(10**7):\n"
          "    print(json.dumps({'event': 'tick', 'n': n}), flush=True)\n"
          "    time.sleep(0.001)\n")


def test_rotate_keeps_the_newest_files_and_truncates_in_place(tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    log.write_bytes(b"small\n")
    assert not rotate(log, 100, 2) and log.read_bytes() == b"small\n"  # under the limit: left alone
    for n in range(4):
        with log.open("ab") as out:  # appending, as the service does
            out.write(f"round {n}\n".encode() * 20)
        assert rotate(log, 100, 2)
        assert log.stat().st_size == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["svc.log", "svc.log.1", "svc.log.2"]
    assert (tmp_path / "svc.log.1").read_text().startswith("round 3") and \
        (tmp_path / "svc.log.2").read_text().startswith("round 2")  # the oldest, rounds 0 and 1, dropped


def test_a_supervised_service_log_is_rotated_while_it_writes_and_every_line_stays_whole_json(tmp_path: Path) -> None:
    log = tmp_path / "chatty.log"
    with log.open("ab") as out:  # as start_service opens it: the supervisor's stdout, inherited by the service
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "deploy.supervisor", "--status", str(tmp_path / "status.json"), "--log", str(log),
             "--log-max-bytes", "20000", "--log-keep", "2", "--log-check-s", "0.2", "--",
             sys.executable, "-c", CHATTY], stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "chatty.log.2").exists():  # rotated twice at least
            assert supervisor.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.1)
        child = json.loads((tmp_path / "status.json").read_text())["child_pid"]
        os.kill(child, signal.SIGKILL)  # the supervisor says so in the log, as JSON too
        while '"supervisor.service_exited"' not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        supervisor.send_signal(signal.SIGTERM)
        supervisor.wait(30)
    files = [tmp_path / "chatty.log.2", tmp_path / "chatty.log.1", log]
    assert not (tmp_path / "chatty.log.3").exists()  # --log-keep 2
    ticks: list[int] = []
    said: list[dict[str, object]] = []
    for path in files:
        text = path.read_text()
        # a rotated file may stop mid-line (the copy ends at the end of the file as it was) and the live one then
        # starts after that line: only a first and a last line may be cut, never one in the middle
        lines = text.splitlines()
        for n, line in enumerate(lines):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                assert n in (0, len(lines) - 1), f"{path.name} line {n + 1} is not JSON: {line!r}"
                continue
            if record.get("event") == "tick":
                ticks.append(int(record["n"]))
            else:
                said.append(record)
        assert path == log or path.stat().st_size < 20000 + 200_000, path  # bounded by the limit and one check's worth
    # the files in order, oldest first (a restart, if the stop came after the backoff of 1 s, counts from 0 again)
    first_run = next((i for i in range(1, len(ticks)) if ticks[i] < ticks[i - 1]), len(ticks))
    assert ticks[:first_run] == sorted(ticks[:first_run]) and first_run > 500, ticks[:5]
    assert ticks[first_run:] == sorted(ticks[first_run:])
    events = {r["event"] for r in said}
    assert {"supervisor.log_rotated", "supervisor.service_exited"} <= events, said
    assert all(r["logger"] == "supervisor" and "timestamp" in r for r in said), said
    exited = next(r for r in said if r["event"] == "supervisor.service_exited")
    assert exited["exit"] == "killed by SIGKILL" and exited["level"] == "warning", exited


def test_the_stack_starts_a_service_under_a_supervisor_that_rotates_its_log(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """`flows stack up`'s way (localstack.start_service): the limit and the files kept come from
    FLOWS_STACK_LOG_MAX_MB / FLOWS_STACK_LOG_KEEP, and the stack's own line opening the log is JSON too."""
    from deploy import localstack

    monkeypatch.setenv("FLOWS_STACK_DIR", str(tmp_path))
    monkeypatch.setenv("FLOWS_STACK_LOG_MAX_MB", "0.02")  # ~20 KB
    monkeypatch.setenv("FLOWS_STACK_LOG_KEEP", "1")
    localstack.start_service("chatty", [sys.executable, "-c", CHATTY], {})
    logs = tmp_path / "logs"
    try:
        deadline = time.monotonic() + 60
        while not (logs / "chatty.log.1").exists():
            assert time.monotonic() < deadline, (logs / "chatty.log").read_text()[-2000:]
            time.sleep(0.2)
    finally:
        localstack.stop_service("chatty")
    first = json.loads((logs / "chatty.log.1").read_text().splitlines()[0])
    assert first["event"] == "stack.service_starting" and first["service"] == "chatty", first
    assert sorted(p.name for p in logs.iterdir()) == ["chatty.log", "chatty.log.1"]


@pytest.mark.parametrize("limits", [{"FLOWS_STACK_LOG_MAX_MB": "a lot"}, {"FLOWS_STACK_LOG_KEEP": "0"},
                                    {"FLOWS_STACK_LOG_MAX_MB": "0"}])
def test_a_wrong_log_limit_is_refused_naming_the_setting(limits: dict[str, str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from deploy.localstack.services import log_rotation
    from deploy.localstack.state import StackError

    for name, value in limits.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(StackError, match="FLOWS_STACK_LOG_MAX_MB"):
        log_rotation()
