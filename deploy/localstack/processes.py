"""Child processes: liveness that survives pid reuse, termination, ports, log tails, async from sync."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import psutil

from deploy.localstack.state import HOST

T = TypeVar("T")



# --------------------------------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------------------------------


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _started(pid: int) -> float | None:
    """Seconds from boot to the process's start (Linux: `starttime` of /proc/<pid>/stat), or None elsewhere.

    What a record is checked against (`_alive`). psutil's create_time is the boot time AS THE WALL CLOCK NOW
    SAYS plus that: a clock step (NTP, a VM resumed) moves it for every running process. One step of 10 s
    during a test run made up() take the stack's own running Kafka for a dead one and fail to start another
    on its port ("in use by a process this stack does not know")."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _identity(pid: int) -> dict[str, float | None]:
    """What a process record holds to tell this process from a later one that got the same pid."""
    return {"create_time": _create_time(pid), "started": _started(pid)}


def _reap(pid: int) -> None:
    """Collect a zombie if it is our own child (happens when up() and down() run in one process)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _alive(rec: dict[str, Any] | None) -> bool:
    """True if the recorded process still runs. The recorded start time guards against a recycled pid
    (after a reboot or a long time, another process may carry the same number): the time since boot
    (`_started`), which clock steps do not move."""
    if not rec or not rec.get("pid"):
        return False
    pid = int(rec["pid"])
    try:
        proc = psutil.Process(pid)
        started, now_started = rec.get("started"), _started(pid)
        if started is not None and now_started is not None:
            if abs(now_started - float(started)) > 0.05:  # clock ticks: exact; a recycled pid started later
                return False
        else:  # a record written before "started" existed, or no /proc: the wall-clock start time, +-1 s
            created = rec.get("create_time")
            if created is not None and abs(proc.create_time() - float(created)) >= 1.0:
                return False
        if proc.status() == psutil.STATUS_ZOMBIE:
            _reap(pid)
            return _threads_still_exiting(pid)
        return True
    except psutil.Error:
        return False


def _threads_still_exiting(pid: int) -> bool:
    """A killed JVM shows its main thread as a zombie while the other threads are still tearing down and
    its sockets are still bound; only when every thread is gone is the process really over."""
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
            if state not in ("Z", "X"):
                return True
    except (FileNotFoundError, ProcessLookupError, IndexError, OSError):
        pass
    return False


def _terminate(rec: dict[str, Any] | None, timeout: float = 20.0, group: bool = False, hard: bool = False) -> bool:
    """SIGTERM (or SIGKILL when ``hard``), wait up to ``timeout``, then SIGKILL. ``group`` signals the whole
    process group (services are session leaders; their children must not outlive them). True when the process
    had to be killed (still running ``timeout`` after the SIGTERM), False when it ended on the SIGTERM or was not
    running."""
    if not _alive(rec):
        return False
    assert rec is not None
    pid = int(rec["pid"])

    def send(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)

    send(signal.SIGKILL if hard else signal.SIGTERM)
    deadline = time.monotonic() + timeout
    killed = hard
    while time.monotonic() < deadline:
        if not _alive(rec):
            break
        time.sleep(0.1)
    else:
        killed = True
        send(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _alive(rec) and time.monotonic() < deadline:
            time.sleep(0.1)
    if group:  # members of the group may still be finishing after the leader exited: grace, then kill
        deadline = time.monotonic() + 5
        while _group_members(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    _reap(pid)
    return killed


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    members = []
    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) == pgid:
                members.append(proc.pid)
    return members


def _port_in_use(port: int, host: str = HOST) -> bool:
    """Something accepts connections on host:port (a listener of ours, or of someone else)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            return s.connect_ex((host, port)) == 0
        except OSError:  # e.g. an unresolvable host in an external DATABASE_URL
            return False


def _tail(path: Path, lines: int = 40) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            text = fh.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return f"(no {path})"
    return f"--- last lines of {path} ---\n" + "\n".join(text.splitlines()[-lines:])


def _run_async(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine from sync code, even when the caller already sits inside an event loop
    (e.g. an async pytest fixture): then it runs in a helper thread with its own loop."""

    async def main() -> T:
        return await factory()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    box: dict[str, Any] = {}

    def runner() -> None:
        try:
            box["value"] = asyncio.run(main())
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=runner, name="localstack-async")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]
