"""Kafka (KRaft) nodes from Maven-resolved jars: configuration, storage format, start, readiness."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import socket
import struct
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from deploy.localstack.processes import _alive, _identity, _port_in_use, _tail
from deploy.localstack.state import HOST, REPO_ROOT, Progress, StackError, _broker_port, _kafka_port_base, _mode_name

POM_PATH = Path(__file__).resolve().parents[1] / "kafka" / "pom.xml"
JAVA = shutil.which("java") or "/usr/bin/java"

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

LOG4J_PROPERTIES = """\
# Written by deploy/localstack/kafka.py. The file name comes from -Dflows.kafka.log (one file per node).
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
    props = {
        "node.id": node_id,
        "controller.quorum.voters": voters,
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{port + 1}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
        "log.dirs": _node_dir(sd, brokers, node_id) / "data",
        **broker_settings(brokers),
    }
    return "# Written by deploy/localstack/kafka.py on every start; edit the module, not this file.\n" + "".join(
        f"{k}={v}\n" for k, v in props.items()
    )


def broker_settings(brokers: int) -> dict[str, object]:
    """What every broker runs with beyond its own node id, ports and folder, whether these processes run it
    or a container does (deploy/localstack/containers.py): the two stacks cannot drift apart."""
    rf, isr = (1, 1) if brokers == 1 else (3, 2)
    return {
        "process.roles": "broker,controller",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
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
        **_identity(proc.pid),
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
