"""Services started by the stack (detached, usually under deploy/supervisor.py)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deploy.localstack.processes import _alive, _identity, _tail, _terminate
from deploy.localstack.state import REPO_ROOT, StackError, _load_state, _locked, _save_state, state_dir


def services_status() -> dict[str, dict[str, Any]]:
    """Every recorded service as `status` shows it, by name."""
    return {name: _service_status(rec) for name, rec in sorted(_load_state(state_dir())["services"].items())}


def _service_status(rec: dict[str, Any]) -> dict[str, Any]:
    """A service as `flows stack status` shows it. A supervised one (see deploy/supervisor.py) is running
    when its supervisor and the service under it both are; ``pid`` is the service's, ``restarts`` and
    ``last_exit`` come from the supervisor's status file."""
    supervisor_alive = _alive(rec)
    about = {k: rec[k] for k in ("service", "health_port", "stopped_by", "stopped_at") if rec.get(k) is not None}
    if not rec.get("status_file"):
        return {"running": supervisor_alive, "pid": rec.get("pid") if supervisor_alive else None,
                "log": rec.get("log"), "restarts": None, "last_exit": None, "supervisor_pid": None, **about}
    from deploy.supervisor import read_status

    sup = read_status(Path(rec["status_file"])) if supervisor_alive else {}
    child = sup.get("child_pid")
    child_alive = bool(child) and _alive({"pid": child})
    return {
        "running": supervisor_alive and child_alive,
        "pid": child if child_alive else None,
        "supervisor_pid": rec.get("pid") if supervisor_alive else None,
        "restarts": sup.get("restarts", 0),
        "last_exit": sup.get("last_exit"),
        "started_at": sup.get("started_at"),
        "log": rec.get("log"),
        **about,
    }


def wait_services_alive(names: list[str], settle_s: float = 5.0, timeout: float = 60.0) -> None:
    """Return once every named service runs and has run ``settle_s`` without a restart; raise StackError
    naming the first that keeps exiting (with its last exit and the tail of its log)."""
    deadline = time.monotonic() + timeout
    restarts = {n: services_status().get(n, {}).get("restarts") or 0 for n in names}
    while True:
        services = services_status()
        for name in names:
            svc = services.get(name, {})
            if (svc.get("restarts") or 0) > restarts[name] or not _alive(_load_state(state_dir())["services"][name]):
                raise StackError(f"service {name} does not stay up (last {svc.get('last_exit') or 'exit unknown'})"
                                 f"\n{_tail(Path(svc.get('log') or '/nonexistent'), 20)}")
        settled = [n for n in names if services[n]["running"] and services[n].get("started_at")
                   and time.time() - float(services[n]["started_at"]) >= settle_s]
        if len(settled) == len(names):
            return
        if time.monotonic() > deadline:
            missing = sorted(set(names) - set(settled))
            raise StackError(f"services not running after {timeout:.0f} s: {', '.join(missing)}")
        time.sleep(0.2)


def log_rotation() -> tuple[int, int]:
    """(bytes, files) of a supervised service's log rotation: FLOWS_STACK_LOG_MAX_MB (default 50) and
    FLOWS_STACK_LOG_KEEP (default 5) rotated files beside the live one (deploy/supervisor.py)."""
    try:
        max_mb, keep = (float(os.environ.get("FLOWS_STACK_LOG_MAX_MB", "50")),
                        int(os.environ.get("FLOWS_STACK_LOG_KEEP", "5")))
    except ValueError as exc:
        raise StackError(f"FLOWS_STACK_LOG_MAX_MB must be a number and FLOWS_STACK_LOG_KEEP a whole number: {exc}") \
            from None
    if max_mb <= 0 or keep < 1:
        raise StackError("FLOWS_STACK_LOG_MAX_MB must be above 0 and FLOWS_STACK_LOG_KEEP at least 1")
    return int(max_mb * 2**20), keep


@dataclass(frozen=True)
class Started:
    """What `ensure_service` did. ``action``: "running" (it runs with this command and environment: left alone),
    "started" (it was not running) or "restarted" (it ran with another command or environment, which ``why``
    names). ``pid``: the supervisor's (the recorded pid)."""

    action: str
    pid: int
    why: str = ""


@dataclass(frozen=True)
class Stopped:
    """What `stop_service` did to a service. ``pid`` is the service's own, ``supervisor_pid`` its supervisor's
    (None when it was not running); ``killed``: still running ``timeout`` s after the SIGTERM, the group was
    SIGKILLed; ``last_exit`` is the service's exit as its supervisor recorded it ("exit 0", "killed by SIGKILL")."""

    name: str
    supervisor_pid: int | None
    pid: int | None
    killed: bool
    last_exit: str | None
    seconds: float


FINGERPRINT_KEY = "fingerprint.key"


def fingerprint(argv: list[str], env: dict[str, str], key: bytes) -> str:
    """What a running service is compared against: its command and the environment the caller gives it (not the
    rest of the caller's environment, which the service inherits but the caller does not choose for it).

    Keyed (HMAC-SHA256 with the stack's own key, `fingerprint_key`): the environment holds secrets (the TS
    simulator's password, a database URL's), and a plain hash of it in stack.json would let whoever reads that
    file test a guessed password offline. Without the key, the fingerprint says nothing of the values."""
    return "hmac-sha256:" + hmac.new(key, _fingerprinted(argv, env), hashlib.sha256).hexdigest()


def _fingerprinted(argv: list[str], env: dict[str, str]) -> bytes:
    return json.dumps([argv, sorted(env.items())]).encode()


def _unkeyed_fingerprint(argv: list[str], env: dict[str, str]) -> str:
    """The fingerprint a stack recorded before it had a key: recognised once, then recorded keyed (ensure_service)."""
    return hashlib.sha256(_fingerprinted(argv, env)).hexdigest()


def fingerprint_key(sd: Path) -> bytes:
    """The stack's fingerprint key: 32 random bytes in `<state dir>/fingerprint.key`, readable by its owner only,
    made at the first need (under the stack's lock). `flows stack down` leaves it: the records it keys stay."""
    path = sd / FINGERPRINT_KEY
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        key = b""
    if len(key) == 32:
        return key
    key = secrets.token_bytes(32)
    sd.mkdir(parents=True, exist_ok=True)
    tmp = sd / f"{FINGERPRINT_KEY}.tmp"
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    os.replace(tmp, path)
    return key


def _why_restarted(rec: dict[str, Any], argv: list[str], env: dict[str, str]) -> str:
    """What changed between the recorded run and this one, as far as the record tells (it keeps the names of the
    environment's variables, not their values: some are secrets)."""
    if rec.get("argv") != argv:
        return "its command changed"
    if "env_names" not in rec:
        return "its environment changed (recorded before the stack kept its variables' names)"
    before, now = set(rec["env_names"]), set(env)
    parts = [f"{', '.join(sorted(now - before))} added"] if now - before else []
    parts += [f"{', '.join(sorted(before - now))} removed"] if before - now else []
    return "its environment changed: " + ("; ".join(parts) if parts else "the value of one of its settings")


def start_service(name: str, argv: list[str], env: dict[str, str], supervised: bool = True,
                  about: dict[str, Any] | None = None) -> int:
    """`ensure_service`, returning the recorded pid (the supervisor's when supervised)."""
    return ensure_service(name, argv, env, supervised, about).pid


def ensure_service(name: str, argv: list[str], env: dict[str, str], supervised: bool = True,
                   about: dict[str, Any] | None = None) -> Started:
    """Have ``name`` run ``argv`` with ``env``: a detached process (own session, survives the caller) logging to
    ``logs/<name>.log``.

    ``supervised`` (the default) runs it under deploy/supervisor.py, which restarts it when it dies; the
    recorded pid is then the supervisor's (`status` shows the service's own).

    ``env`` is laid over the current environment; it and ``argv`` are the service's fingerprint. If ``name``
    already runs with the same fingerprint, nothing is started (so a repeated ``flows stack up`` is harmless); if
    it runs with another one it is stopped and started again. ``about`` (e.g. the service a replica belongs to,
    its health port) is recorded with it and shown by `status`. A new record drops the mark of a service the
    operator stopped (`stop_service(by=...)`)."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"bad service name {name!r}")
    sd = state_dir()
    with _locked(sd):
        state = _load_state(sd)
        rec = state["services"].get(name)
        print_ = fingerprint(argv, env, fingerprint_key(sd))
        action, why = "started", ""
        if rec and _alive(rec):
            if rec.get("fingerprint") == print_:
                return Started("running", int(rec["pid"]))
            if rec.get("fingerprint") == _unkeyed_fingerprint(argv, env):  # recorded before the key: the same run
                rec["fingerprint"] = print_
                _save_state(sd, state)
                return Started("running", int(rec["pid"]))
            action, why = "restarted", _why_restarted(rec, argv, env)
            stop_service(name)
            state = _load_state(sd)
        log = sd / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        status_file = sd / "supervisor" / f"{name}.json"
        command = argv
        if supervised:
            status_file.unlink(missing_ok=True)
            max_bytes, keep = log_rotation()
            command = [sys.executable, "-m", "deploy.supervisor", "--status", str(status_file), "--log", str(log),
                       "--log-max-bytes", str(max_bytes), "--log-keep", str(keep), "--", *argv]
        with open(log, "ab") as fh:  # appending: the supervisor rotates it by copy and truncation
            stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            fh.write((json.dumps({"event": "stack.service_starting", "service": name, "argv": argv, "logger": "stack",
                                  "level": "info", "timestamp": stamp}) + "\n").encode())
            fh.flush()
            proc = subprocess.Popen(
                command, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **env}, cwd=REPO_ROOT, start_new_session=True,
            )  # fmt: skip
        state["services"][name] = {
            "pid": proc.pid,
            **_identity(proc.pid),
            "argv": argv,
            "fingerprint": print_,
            "env_names": sorted(env),
            "log": str(log),
            "status_file": str(status_file) if supervised else None,
            **(about or {}),
        }
        _save_state(sd, state)
        return Started(action, proc.pid, why)


def stop_service(name: str, by: str | None = None, timeout: float = 20.0) -> Stopped | None:
    """SIGTERM the service's process group (its supervisor first stops restarting it, then waits for it), SIGKILL
    after ``timeout`` s; no error if it is not running, None if no such service is recorded. ``by`` (who stopped
    it, `flows stack stop`) is recorded with the time: `status` shows it stopped by the operator, not crashed,
    until something starts it again."""
    from deploy.supervisor import read_status

    sd = state_dir()
    with _locked(sd):
        state = _load_state(sd)
        rec = state["services"].get(name)
        if rec is None:
            return None
        status_file = Path(rec["status_file"]) if rec.get("status_file") else None
        supervisor = int(rec["pid"]) if _alive(rec) else None
        child = (read_status(status_file).get("child_pid") if status_file else supervisor) if supervisor else None
        began = time.monotonic()
        killed = _terminate(rec, timeout=timeout, group=True)
        seconds = time.monotonic() - began
        rec["pid"] = None
        if by is not None:
            rec["stopped_by"], rec["stopped_at"] = by, time.time()
        _save_state(sd, state)
        last_exit = read_status(status_file).get("last_exit") if status_file and supervisor else None
        return Stopped(name, supervisor, child, killed, last_exit, seconds)


def remove_service(name: str) -> None:
    """Stop the service (see stop_service) and forget it: `status` no longer lists it."""
    sd = state_dir()
    with _locked(sd):
        stop_service(name)
        state = _load_state(sd)
        rec = state["services"].pop(name, None)
        if rec and rec.get("status_file"):
            Path(rec["status_file"]).unlink(missing_ok=True)
        _save_state(sd, state)
