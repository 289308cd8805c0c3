"""A supervisor for one service of the local stack: restarts it when it dies, with capped backoff.

    python -m deploy.supervisor --status <file.json> -- <argv of the service...>

`flows stack up` starts one supervisor per service (deploy/localstack/services.py `start_service`); the supervisor
runs the service as its child, in its own process group, with its stdout/stderr. When the service exits
for any reason (a crash, SIGKILL, an OOM kill) it is started again after a backoff that doubles from 1 s
up to 30 s, and goes back to 1 s once the service has run for a minute. Each start and exit is written to
the status file (child pid, restarts, last exit), which `flows stack status` shows.

SIGTERM/SIGINT stop the supervisor: it stops the restarts first, forwards SIGTERM to the service, waits up
to 15 s, then kills it. `flows stack down` therefore never races a restart.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 60.0  # a service that ran this long is healthy again: the next restart waits 1 s
STOP_GRACE_S = 15.0


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


class Supervisor:
    def __init__(self, argv: list[str], status_path: Path) -> None:
        self.argv = argv
        self.status_path = status_path
        self.stopping = False
        self.child: subprocess.Popen[bytes] | None = None
        self.status: dict[str, Any] = {"supervisor_pid": os.getpid(), "child_pid": None, "restarts": 0,
                                       "last_exit": None, "last_exit_at": None, "started_at": None}

    def _write(self) -> None:
        self.status_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.status, indent=2) + "\n")
        os.replace(tmp, self.status_path)

    def _say(self, text: str) -> None:
        print(f"=== supervisor {time.strftime('%Y-%m-%d %H:%M:%S')}: {text} ===", flush=True)

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
            returncode = self.child.wait()
            if self.stopping:
                break
            ran = time.monotonic() - started
            failures = 0 if ran >= STABLE_AFTER_S else failures + 1
            delay = delays[min(max(failures - 1, 0), len(delays) - 1)]
            self.status.update(child_pid=None, restarts=self.status["restarts"] + 1,
                               last_exit=describe_exit(returncode), last_exit_at=time.time())
            self._write()
            self._say(f"service {describe_exit(returncode)} after {ran:.1f} s; restarting in {delay:.0f} s")
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
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the service's argv")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no service command given after --")
    return Supervisor(command, args.status).run()


if __name__ == "__main__":
    sys.exit(main())
