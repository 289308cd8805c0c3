"""Configuration, the stack record (stack.json) and its lock."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]

DEFAULT_KAFKA_PORT_BASE = 19092
DEFAULT_PG_PORT = 15432
DB_NAME = "flows"
HOST = "127.0.0.1"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class StackInfo:
    """Where the running stack can be reached; what fixtures and the CLI need."""

    state_dir: Path
    bootstrap_servers: str
    database_url: str
    brokers: int
    external_database: bool
    ts_port: int = 0  # the TS simulator `flows stack up` starts for this stack (see ts_sim_port)


class StackError(RuntimeError):
    """A stack component could not be started/stopped; the message carries the relevant log tail."""



# --------------------------------------------------------------------------------------------------
# configuration (read at call time, so tests can point at another folder / other ports)
# --------------------------------------------------------------------------------------------------


def state_dir() -> Path:
    """The state folder: ``FLOWS_STACK_DIR`` or ``<repo>/.stack``."""
    raw = os.environ.get("FLOWS_STACK_DIR")
    return Path(raw).expanduser().resolve() if raw else REPO_ROOT / ".stack"


def _kafka_port_base() -> int:
    return int(os.environ.get("FLOWS_KAFKA_PORT_BASE", DEFAULT_KAFKA_PORT_BASE))


def _pg_port() -> int:
    return int(os.environ.get("FLOWS_PG_PORT", DEFAULT_PG_PORT))


def ts_sim_port(kafka_port_base: int | None = None) -> int:
    """The local TS simulator's port: ``FLOWS_TS_SIM_PORT``, else the Kafka port base + 8 (the first port
    after the three brokers' pairs), so two stacks on one machine never share it."""
    raw = os.environ.get("FLOWS_TS_SIM_PORT")
    if raw:
        return int(raw)
    return (kafka_port_base if kafka_port_base is not None else _kafka_port_base()) + 8


def _mode_name(brokers: int) -> str:
    return "single" if brokers == 1 else f"cluster{brokers}"


def _broker_port(node_id: int, base: int) -> int:
    """Node 1 -> base, node 2 -> base+2, ...; the controller port is always broker port + 1."""
    return base + 2 * (node_id - 1)


def _bootstrap(brokers: int, base: int) -> str:
    return ",".join(f"{HOST}:{_broker_port(i, base)}" for i in range(1, brokers + 1))


def _pg_url(port: int) -> str:
    return f"postgresql://postgres@{HOST}:{port}/{DB_NAME}"


# --------------------------------------------------------------------------------------------------
# state file and lock
# --------------------------------------------------------------------------------------------------

_lock_depth: dict[Path, int] = {}
_lock_mutex = threading.RLock()


@contextlib.contextmanager
def _locked(sd: Path) -> Iterator[None]:
    """Serialise changes to one state folder across processes (pytest workers, CLI) - reentrant,
    because ``down`` calls ``stop_service`` and flock on a second fd of the same file would deadlock."""
    with _lock_mutex:
        depth = _lock_depth.get(sd, 0)
        if depth:
            _lock_depth[sd] = depth + 1
            try:
                yield
            finally:
                _lock_depth[sd] -= 1
            return
        sd.mkdir(parents=True, exist_ok=True)
        with open(sd / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            _lock_depth[sd] = 1
            try:
                yield
            finally:
                _lock_depth.pop(sd, None)
                fcntl.flock(fh, fcntl.LOCK_UN)


def _load_state(sd: Path) -> dict[str, Any]:
    try:
        data = json.loads((sd / "stack.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        data = {}
    data.setdefault("kafka", {}).setdefault("nodes", {})
    data.setdefault("postgres", {})
    data.setdefault("services", {})
    return data


def _save_state(sd: Path, state: dict[str, Any]) -> None:
    """Atomic write, so a reader never sees half a file."""
    sd.mkdir(parents=True, exist_ok=True)
    tmp = sd / "stack.json.tmp"
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, sd / "stack.json")
