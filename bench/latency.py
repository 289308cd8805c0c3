"""Latency of a small load, command on Kafka -> `flows.load-checked` seen by a consumer, against a raw
aiokafka produce -> consume round trip, measured in one run.

    uv run python bench/latency.py [--loads 200] [--services 20]

Runs the real loader (`python -m services.loader`, a process of its own, as deployed) on a fresh database of
the local stack's PostgreSQL (dropped at the end), with `--services` delivered services of one entity stored
beforehand (not timed). Then, `--loads` times, alternating so that whatever else the machine does hits both:
  raw   one message produced to a bench topic (1 partition) and consumed by a plain aiokafka consumer;
  load  one `flows.load-requested` command produced (the CLI's envelope), until the consumer sees the
        `flows.load-checked` of the instance the loader made for that request (the loader's own
        `flows.load-running` names request and instance). Each load takes a snapshot, runs every check,
        appends Running and Checked with their outbox rows; the relay publishes them.
Both sides use the same idempotent acks=all producer and consumers with the same settings; each round trip is
timed from just before the send to the consumer's receipt. Prints p50 and p95 of each and the ratios, and the
loader process's CPU time per load.
Aim (issue 14): load p95 within 5x of the raw p95. Kafka: $FLOWS_KAFKA_BOOTSTRAP, else
127.0.0.1:$FLOWS_KAFKA_PORT_BASE (default 19092); PostgreSQL: $DATABASE_URL, else 127.0.0.1:$FLOWS_PG_PORT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import date, datetime
from pathlib import Path

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import GroupCoordinatorNotAvailableError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from contracts import flows
from contracts.envelope import Envelope
from contracts.sources import DeliveredService
from services.loader.intake import store_services
from services.runtime.db import create_database, drop_database
from services.runtime.kafkarecords import aiokafka_reader
from simulators.cup.generator import generate

KAFKA = os.environ.get("FLOWS_KAFKA_BOOTSTRAP") or f"127.0.0.1:{os.environ.get('FLOWS_KAFKA_PORT_BASE', '19092')}"
SERVER_URL = (os.environ.get("DATABASE_URL")
              or f"postgresql://postgres@127.0.0.1:{os.environ.get('FLOWS_PG_PORT', '15432')}/flows")
ENTE, MONTH, PERIOD = "201", "2020-08", (date(2020, 8, 1), date(2020, 8, 31))
WARMUP = 5
RUNNING, CHECKED, FAILED = (flows.TYPE_OF[t] for t in (flows.LoadRunning, flows.LoadChecked, flows.LoadFailed))
CONSUMER_OPTIONS: dict[str, object] = {"enable_auto_commit": False}  # the same on both sides


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of process `pid` so far, from /proc (Linux): the loader's work per load."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


class Watcher:
    """One plain consumer (no group) from the end of its partitions; resolves futures by a key of each message."""

    def __init__(self, topics: list[str], key_of: object) -> None:
        self._topics = topics
        self._key_of = key_of
        self.waiting: dict[str, asyncio.Future[float]] = {}
        self.seen: dict[str, float] = {}
        self._consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA, **CONSUMER_OPTIONS)  # type: ignore[arg-type]
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        parts = [TopicPartition(t, p) for t in self._topics
                 for p in sorted(self._consumer.partitions_for_topic(t) or await self._partitions(t))]
        self._consumer.assign(parts)
        await self._consumer.seek_to_end(*parts)
        for tp in parts:
            await self._consumer.position(tp)
        self._task = asyncio.create_task(self._run())

    async def _partitions(self, topic: str) -> set[int]:
        for _ in range(100):
            await self._consumer._client.force_metadata_update()
            found = self._consumer.partitions_for_topic(topic)
            if found:
                return found
            await asyncio.sleep(0.1)
        raise RuntimeError(f"topic {topic} not found")

    async def _run(self) -> None:
        while True:
            message = await self._consumer.getone()
            now = time.perf_counter()
            for key in self._key_of(message):  # type: ignore[operator]
                future = self.waiting.pop(key, None)
                if future is not None and not future.done():
                    future.set_result(now)
                else:
                    self.seen[key] = now

    def expect(self, key: str) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if key in self.seen:
            future.set_result(self.seen.pop(key))
        else:
            self.waiting[key] = future
        return future

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self._consumer.stop()


async def store_sources(url: str, services: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        records = [r for r in generate(ENTE, MONTH, services, seed=7) if isinstance(r, DeliveredService)]
        await store_services(conn, records)
    finally:
        await conn.close()


def start_loader(url: str, files: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DATABASE_URL": url, "FLOWS_KAFKA_BOOTSTRAP": KAFKA, "FLOWS_FILES_DIR": str(files),
           "FLOWS_LOG_LEVEL": "WARNING", "FLOWS_LOG_FORMAT": "json"}
    root = Path(__file__).resolve().parent.parent
    return subprocess.Popen([sys.executable, "-m", "services.loader"], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(files / "loader.log", "wb"))


async def loader_group_members(admin: AIOKafkaAdminClient) -> int:
    """Members of the consumer group `loader` now: a running platform loader would take part of the bench's
    commands (and make instances in ITS database)."""
    for attempt in range(50):  # a fresh broker creates __consumer_offsets (the coordinators) on first use
        try:
            described = await admin.describe_consumer_groups(["loader"])
            break
        except GroupCoordinatorNotAvailableError:
            if attempt == 49:
                raise
            await asyncio.sleep(0.2)
    # DescribeGroupsResponse groups: (error_code, group, state, protocol_type, protocol, members)
    return sum(len(group[5]) for response in described for group in response.groups)


async def main(loads: int, services: int) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    if members := await loader_group_members(admin):
        await admin.close()
        print(f"the consumer group 'loader' has {members} member(s) on {KAFKA}: a platform loader is running there. "
              "Stop the platform's services (`flows stack down`, then `flows stack up --no-services`) or point the "
              "bench at another stack (FLOWS_KAFKA_PORT_BASE, FLOWS_PG_PORT)", file=sys.stderr)
        return 2
    url = await create_database(SERVER_URL, "bench_latency")
    raw_topic = f"bench.latency-{uuid.uuid4().hex[:8]}"
    await admin.create_topics([NewTopic(raw_topic, 1, 1)])
    loader: subprocess.Popen[bytes] | None = None
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, enable_idempotence=True, acks="all")
    instance_of: dict[str, str] = {}  # request id -> instance (from flows.load-running)
    # "<type>:<instance>" -> (ce_time = recorded_at, wall clock when seen): where a load's time goes
    recorded: dict[str, tuple[float, float]] = {}
    stages: list[tuple[float, float, float, float]] = []

    def load_keys(message: object) -> list[str]:
        headers = dict(message.headers)  # type: ignore[attr-defined]
        kind = headers.get("ce_type", b"").decode()
        body = json.loads(message.value)  # type: ignore[attr-defined]
        at = datetime.fromisoformat(headers["ce_time"].decode()).timestamp()
        if kind == RUNNING:
            instance_of[body["request_id"]] = str(body["instance"])
            recorded[f"{kind}:{body['instance']}"] = (at, time.time())
            return [f"request:{body['request_id']}"]
        recorded[f"{kind}:{body['instance']}"] = (at, time.time())
        return [f"{kind}:{body['instance']}"]

    raw = Watcher([raw_topic], lambda m: [m.key.decode()])
    outcomes = Watcher([RUNNING, CHECKED, FAILED], load_keys)
    try:
        with tempfile.TemporaryDirectory(prefix="bench_latency_") as folder:
            await store_sources(url, services)
            loader = start_loader(url, Path(folder))
            await producer.start()
            with aiokafka_reader():  # the bench's consumers read as plain aiokafka ones (services.runtime.kafkarecords)
                await raw.start()
                await outcomes.start()

            async def raw_trip() -> float:
                key = uuid.uuid4().hex
                started = time.perf_counter()
                await producer.send_and_wait(raw_topic, b'{"ping": 1}', key=key.encode())
                return await asyncio.wait_for(raw.expect(key), 30) - started

            async def load_trip() -> float:
                request = flows.LoadRequested(request_id=uuid.uuid4(), flow_type=flows.FlowType.FLUSSO_C,
                                              version="2020", ente=ENTE,
                                              period=flows.Period(start=PERIOD[0], end=PERIOD[1]),
                                              requested_by="bench")
                topic = flows.TYPE_OF[flows.LoadRequested]
                envelope = Envelope.new(topic, "/flows/bench", subject=str(request.request_id))
                started, wall = time.perf_counter(), time.time()
                await producer.send_and_wait(topic, request.model_dump_json().encode(),
                                             key=str(request.request_id).encode(), headers=envelope.to_headers())
                # Running precedes Checked (same partition). Awaited, not polled: a poll every 0.5 ms woke this
                # process ~2,000 times a second during every load, CPU taken from the loader, PostgreSQL and Kafka
                # on the same cores, and only on the load's side of the comparison.
                try:
                    await asyncio.wait_for(outcomes.expect(f"request:{request.request_id}"), 60)
                except TimeoutError:
                    raise TimeoutError(f"no flows.load-running for request {request.request_id}") from None
                instance = instance_of[str(request.request_id)]
                checked = outcomes.expect(f"{CHECKED}:{instance}")
                failed = outcomes.expect(f"{FAILED}:{instance}")
                done, _ = await asyncio.wait({checked, failed}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    raise TimeoutError(f"instance {instance}: no outcome in 60 s")
                if failed in done:
                    raise RuntimeError(f"instance {instance}: Failed loading (the bench's load must be Checked)")
                running, checked_at = recorded[f"{RUNNING}:{instance}"], recorded[f"{CHECKED}:{instance}"]
                stages.append((running[0] - wall, checked_at[0] - running[0], running[1] - running[0],
                               checked_at[1] - checked_at[0]))
                return checked.result() - started

            for _ in range(WARMUP):  # the loader's start (group join, first queries) is not a latency
                await asyncio.wait_for(load_trip(), 120)
                await raw_trip()
            stages.clear()
            raw_s: list[float] = []
            load_s: list[float] = []
            cpu_before = cpu_seconds(loader.pid)
            for _ in range(loads):
                raw_s.append(await raw_trip())
                load_s.append(await load_trip())
            loader_cpu_ms = (cpu_seconds(loader.pid) - cpu_before) / loads * 1000
            if loader.poll() is not None:
                raise RuntimeError(f"the loader exited ({loader.returncode}) during the bench")
    finally:
        await raw.stop()
        await outcomes.stop()
        await producer.stop()
        if loader is not None:
            loader.terminate()
            try:
                loader.wait(15)
            except subprocess.TimeoutExpired:
                loader.kill()
        await admin.delete_topics([raw_topic])
        await admin.close()
        await drop_database(SERVER_URL, url)

    figures = {name: {"p50_ms": round(percentile(v, 50) * 1000, 2), "p95_ms": round(percentile(v, 95) * 1000, 2)}
               for name, v in (("raw", raw_s), ("load", load_s))}
    p50 = figures["load"]["p50_ms"] / figures["raw"]["p50_ms"]
    p95 = figures["load"]["p95_ms"] / figures["raw"]["p95_ms"]
    print(f"{'round trip':<44}{'n':>5}{'p50 ms':>9}{'p95 ms':>9}")
    print(f"{'raw aiokafka produce -> consume':<44}{loads:>5}{figures['raw']['p50_ms']:>9.1f}"
          f"{figures['raw']['p95_ms']:>9.1f}")
    print(f"{f'load ({services} services) -> load-checked seen':<44}{loads:>5}{figures['load']['p50_ms']:>9.1f}"
          f"{figures['load']['p95_ms']:>9.1f}")
    print(f"ratio load/raw: p50 {p50:.1f}x, p95 {p95:.1f}x (aim p95 <= 5x: {'met' if p95 <= 5 else 'MISSED'})")
    names = ("command sent -> Running recorded", "Running -> Checked recorded (the load)",
             "Running recorded -> seen", "Checked recorded -> seen (relay + Kafka)")
    for index, name in enumerate(names):  # wall clock of one machine: the parts, not an exact sum
        column = [s[index] for s in stages]
        print(f"  {name:<42} p50 {percentile(column, 50) * 1000:7.1f} ms  p95 {percentile(column, 95) * 1000:7.1f} ms")
    print(f"  loader process CPU (its relay's too)       {loader_cpu_ms:7.2f} ms a load")
    print(json.dumps({**figures, "ratio_p50": round(p50, 2), "ratio_p95": round(p95, 2), "loads": loads,
                      "services": services, "loader_cpu_ms": round(loader_cpu_ms, 2)}))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loads", type=int, default=200)
    parser.add_argument("--services", type=int, default=20, help="delivered services the load takes")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.loads, args.services)))
