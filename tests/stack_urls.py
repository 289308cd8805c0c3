"""Where the TEST stack is, known before it starts (tests/conftest.py sets its folder and ports).

Tests run on their own stack (`.stack-test/`, Kafka 29092, PostgreSQL 25432), never on the one
`flows stack up` runs for operators: the platform's services would otherwise consume the tests'
messages. DATABASE_URL, when set, points the tests at an external PostgreSQL instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("FLOWS_STACK_DIR", str(REPO / ".stack-test"))
os.environ.setdefault("FLOWS_KAFKA_PORT_BASE", "29092")
os.environ.setdefault("FLOWS_PG_PORT", "25432")
# The session's stack, as ./run (or whoever started pytest) chose it: the first pytest-xdist worker's, or the only one.
SESSION_STACK_DIR = Path(os.environ["FLOWS_STACK_DIR"])
SESSION_KAFKA_PORT_BASE = int(os.environ["FLOWS_KAFKA_PORT_BASE"])
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if WORKER not in ("", "gw0"):
    # Every other pytest-xdist worker (./run tests runs two) has a stack of its own: its tests stop PostgreSQL and
    # brokers, delete every topic and run the e2e platform's services, so no two workers may share one. In
    # worker-gwN/ of the session's folder, on ports of the session's range that no test takes (tests take base + 30
    # and above): Kafka base + 10N and + 10N + 1, its TS simulator base + 10N + 8, PostgreSQL base + 2 + N.
    _n = int(WORKER.removeprefix("gw"))
    if not 1 <= _n <= 2:
        raise RuntimeError(f"pytest-xdist worker {WORKER}: the test stack's port range has room for 3 workers")
    os.environ["FLOWS_STACK_DIR"] = str(SESSION_STACK_DIR / f"worker-{WORKER}")
    os.environ["FLOWS_KAFKA_PORT_BASE"] = str(SESSION_KAFKA_PORT_BASE + 10 * _n)
    os.environ["FLOWS_PG_PORT"] = str(SESSION_KAFKA_PORT_BASE + 2 + _n)

DATABASE_URL = os.environ.get("DATABASE_URL") or f"postgresql://postgres@127.0.0.1:{os.environ['FLOWS_PG_PORT']}/flows"
KAFKA = f"127.0.0.1:{os.environ['FLOWS_KAFKA_PORT_BASE']}"


def port_free(port: int) -> bool:
    """Whether nothing listens on (or holds) 127.0.0.1:``port`` right now."""
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# Ports a test picks are reserved for its process, in a file beside the session's stack, until the test ends
# (tests/conftest.py releases them): a port free when one test looks may be taken by a test of another session (or
# of another worker of this one) before the process that was to listen on it binds it.
RESERVED_PORTS = SESSION_STACK_DIR / "reserved-ports.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _reservations() -> Iterator[dict[int, int]]:
    """The reserved ports (port -> pid) of live processes, under an exclusive lock; written back at the end."""
    RESERVED_PORTS.parent.mkdir(parents=True, exist_ok=True)
    with RESERVED_PORTS.with_suffix(".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            try:
                raw = json.loads(RESERVED_PORTS.read_text())
            except (FileNotFoundError, ValueError):
                raw = {}
            held = {int(port): pid for port, pid in raw.items() if _alive(pid)}
            yield held
            RESERVED_PORTS.write_text(json.dumps(held))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


_reserved_here = False  # whether this process holds reservations: most tests make none, and release nothing


def reserve_first(groups: Iterable[Sequence[int]]) -> Sequence[int] | None:
    """The first of `groups` of ports whose every port is free and reserved by no other test (of this session or
    another on this machine), now reserved for this process; None when there is none."""
    global _reserved_here
    with _reservations() as held:
        for group in groups:
            if all(port not in held and port_free(port) for port in group):
                held.update((port, os.getpid()) for port in group)
                _reserved_here = True
                return group
    return None


def release_reserved() -> None:
    """This process's reservations released (the end of a test); without taking the file's lock when it made none."""
    global _reserved_here
    if not _reserved_here:
        return
    _reserved_here = False
    with _reservations() as held:
        for port in [port for port, pid in held.items() if pid == os.getpid()]:
            del held[port]


def free_port(first: int, last: int) -> int:
    """A free port between FLOWS_KAFKA_PORT_BASE + first and + last, reserved for the test: the machine may run
    other stacks, so a test stays inside its own stack's range (private stacks take base + 100..900)."""
    base = int(os.environ["FLOWS_KAFKA_PORT_BASE"])
    got = reserve_first((port,) for port in range(base + first, base + last))
    if got is None:
        raise RuntimeError(f"no free port in {base + first}..{base + last - 1}")
    return got[0]
