"""A supervisor for one service of the local stack: restarts it when it dies, with capped backoff.

    python -m deploy.supervisor --status <file.json> -- <argv of the service...>

`flows stack up` starts one supervisor per service (deploy/localstack/services.py `start_service`); the supervisor
runs the service as its child, in its own process group, with its stdout/stderr. When the service exits
for any reason (a crash, SIGKILL, an OOM kill) it is started again after a backoff that doubles from 1 s
up to 30 s, and goes back to 1 s once the service has run for a minute. Each start and exit is written to
the status file (child pid, restarts, last exit), which `flows stack status` shows.

SIGTERM/SIGINT stop the supervisor: it stops the restarts first, forwards SIGTERM to the service, waits up
to 15 s, then kills it. `flows stack down` therefore never races a restart.

With `--log FILE` (the file its stdout and the service's go to, opened for appending), it also rotates that file:
past `--log-max-bytes` it is copied to FILE.1 (FILE.1 to FILE.2, ... up to `--log-keep` files, the oldest dropped)
and truncated in place, so the service keeps writing to the same open file (copytruncate: a line written between
the copy and the truncation is lost). Its own lines are JSON, as the service's are.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 60.0  # a service that ran this long is healthy again: the next restart waits 1 s
STOP_GRACE_S = 15.0
LOG_CHECK_S = 5.0  # how often the log's size is looked at
LOG_MAX_BYTES = 50 * 2**20
LOG_KEEP = 5


def backoff_delays(initial: float = BACKOFF_INITIAL_S, cap: float = BACKOFF_MAX_S) -> list[float]:
    """The waits before consecutive restarts of a service that keeps dying: 1, 2, 4, ... 30, 30."""
    delays, delay = [], initial
    while delay < cap:
        delays.append(delay)
        delay *= 2
    return [*delays, cap]


def describe_exit(returncode: int) -> str:
    """`exit 1`, or `killed by SIGKILL` for a negative return code."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit {returncode}"


def read_status(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def rotate(log: Path, max_bytes: int, keep: int) -> bool:
    """Copies `log` to `log`.1 (shifting the older ones, `keep` at most) and truncates it, if it is over
    `max_bytes`; True when it did."""
    try:
        if log.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    for n in range(keep - 1, 0, -1):
        older = log.with_name(f"{log.name}.{n}")
        if older.exists():
            os.replace(older, log.with_name(f"{log.name}.{n + 1}"))
    with log.open("rb") as src, log.with_name(f"{log.name}.1").open("wb") as dst:
        shutil.copyfileobj(src, dst, 2**20)  # to the end as it is now, lines appended meanwhile included
        os.truncate(log, 0)
    return True


class Supervisor:
    def __init__(self, argv: list[str], status_path: Path, log: Path | None = None, log_max_bytes: int = LOG_MAX_BYTES,
                 log_keep: int = LOG_KEEP, log_check_s: float = LOG_CHECK_S) -> None:
        self.argv = argv
        self.status_path = status_path
        self.log = log
        self.log_max_bytes = log_max_bytes
        self.log_keep = log_keep
        self.log_check_s = log_check_s
        self.stopping = False
        self.child: subprocess.Popen[bytes] | None = None
        self.status: dict[str, Any] = {"supervisor_pid": os.getpid(), "child_pid": None, "restarts": 0,
                                       "last_exit": None, "last_exit_at": None, "started_at": None}

    def _write(self) -> None:
        self.status_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.status, indent=2) + "\n")
        os.replace(tmp, self.status_path)

    def _say(self, event: str, level: str = "info", **fields: Any) -> None:
        """One JSON line in the log, as the service's own are (services.runtime.logging)."""
        stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        print(json.dumps({**fields, "event": event, "logger": "supervisor", "level": level, "timestamp": stamp}),
              flush=True)

    def _wait_child(self, child: subprocess.Popen[bytes]) -> int:
        """The child's return code once it exits; meanwhile, the log rotated when it grows past its limit."""
        while True:
            try:
                return child.wait(timeout=self.log_check_s if self.log is not None else None)
            except subprocess.TimeoutExpired:
                assert self.log is not None
                if rotate(self.log, self.log_max_bytes, self.log_keep):
                    self._say("supervisor.log_rotated", kept=f"{self.log.name}.1..{self.log_keep}",
                              max_bytes=self.log_max_bytes)

    def stop(self, signum: int, _frame: Any) -> None:
        self.stopping = True
        if self.child is not None and self.child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.child.send_signal(signal.SIGTERM)

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        delays = backoff_delays()
        failures = 0
        while not self.stopping:
            started = time.monotonic()
            self.child = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL)
            self.status.update(child_pid=self.child.pid, started_at=time.time())
            self._write()
            returncode = self._wait_child(self.child)
            if self.stopping:
                break
            ran = time.monotonic() - started
            failures = 0 if ran >= STABLE_AFTER_S else failures + 1
            delay = delays[min(max(failures - 1, 0), len(delays) - 1)]
            self.status.update(child_pid=None, restarts=self.status["restarts"] + 1,
                               last_exit=describe_exit(returncode), last_exit_at=time.time())
            self._write()
            self._say("supervisor.service_exited", "warning", exit=describe_exit(returncode), ran_s=round(ran, 1),
                      restart_in_s=delay)
            self._sleep(delay)
        child = self.child
        if child is not None and child.poll() is None:
            try:
                child.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if child is not None and child.returncode is not None:
            self.status.update(last_exit=describe_exit(child.returncode), last_exit_at=time.time())
        self.status["child_pid"] = None
        self._write()
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.supervisor")
    parser.add_argument("--status", type=Path, required=True, help="JSON file the supervisor keeps current")
    parser.add_argument("--log", type=Path, help="the log file this process writes to (opened for appending): "
                                                  "rotated past --log-max-bytes")
    parser.add_argument("--log-max-bytes", type=int, default=LOG_MAX_BYTES)
    parser.add_argument("--log-keep", type=int, default=LOG_KEEP, help="rotated files kept (FILE.1 ... FILE.N)")
    parser.add_argument("--log-check-s", type=float, default=LOG_CHECK_S, help="how often the size is looked at")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the service's argv")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no service command given after --")
    if args.log_max_bytes < 1 or args.log_keep < 1 or args.log_check_s <= 0:
        parser.error("--log-max-bytes and --log-keep must be at least 1, --log-check-s more than 0")
    return Supervisor(command, args.status, args.log, args.log_max_bytes, args.log_keep, args.log_check_s).run()


if __name__ == "__main__":
    sys.exit(main())
