"""Where the TEST stack is, known before it starts (tests/conftest.py sets its folder and ports).

Tests run on their own stack (`.stack-test/`, Kafka 29092, PostgreSQL 25432), never on the one
`flows stack up` runs for operators: the platform's services would otherwise consume the tests'
messages. DATABASE_URL, when set, points the tests at an external PostgreSQL instead.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("FLOWS_STACK_DIR", str(REPO / ".stack-test"))
os.environ.setdefault("FLOWS_KAFKA_PORT_BASE", "29092")
os.environ.setdefault("FLOWS_PG_PORT", "25432")

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


def free_port(first: int, last: int) -> int:
    """A free port between FLOWS_KAFKA_PORT_BASE + first and + last: the machine may run other stacks, so a test
    stays inside its own stack's range (private stacks take base + 100..900)."""
    base = int(os.environ["FLOWS_KAFKA_PORT_BASE"])
    for port in range(base + first, base + last):
        if port_free(port):
            return port
    raise RuntimeError(f"no free port in {base + first}..{base + last - 1}")
