"""Source intake throughput: the loader's batched intake against two baselines, measured in one run.

    uv run python bench/intake.py [--messages 200000] [--max-records 5000]

Publishes N source messages (the CUP generator's mix of delivered services, payment documents and
intramoenia bookings, as `flows sources generate` publishes them) on three fresh topics of the local
stack, then consumes them three times with three fresh consumer groups, each timed from its consumer's
start (group join included, the same for all three) until all N are done:
  consume   a plain aiokafka consumer (getmany), no database: the broker's floor
  copy      a plain pipeline (what a quick script would do, the fastest of those bench/intake_baselines.py
            times): getmany, orjson, operator.itemgetter, one COPY in text format per topic and poll into the
            same source tables (content_hash: sha256 of the body), the poll's COPYs in flight while the next
            poll is fetched and decoded; no validation, no dedup, no upsert; the collector tuned as the intake's
            process has it (services.runtime.batch.tune_gc). It must leave all N rows in the tables.
  intake    services.loader.batch_intake: parse + contract validation of every message, one transaction
            per batch (processed_message dedup, COPY into staging, one upsert, watermarks, outbox),
            offsets committed after it. Done when its totals account for all N messages.
  intake xR (with --replicas R > 1) the same intake in R processes of one consumer group, as
            `flows stack up --replicas R` runs the loader: the partitions are shared, each process its own
            event loop, so the Python work of validation spreads over the cores. Timed from the moment
            all R have started (imports done) until the source tables hold all N records.
Prints messages/s of each and the ratios intake/consume and intake/copy. Targets (issue 14):
intake >= 20,000 msg/s and >= 0.25x of copy. Each pipeline writes into a fresh database of the stack's
PostgreSQL (dropped at the end). Kafka: $FLOWS_KAFKA_BOOTSTRAP, else 127.0.0.1:$FLOWS_KAFKA_PORT_BASE
(default 19092); PostgreSQL: $DATABASE_URL, else 127.0.0.1:$FLOWS_PG_PORT (default 15432).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import operator
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import orjson
import uvloop
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from contracts.envelope import Envelope
from contracts.topics import DLQ_MAX_MESSAGE_BYTES, INTAKE_TOPICS, Topic
from services.loader.batch_intake import BatchIntake
from services.loader.intake import KINDS
from services.runtime.batch import BatchConsumer, tune_gc
from services.runtime.db import create_database, create_pool, drop_database
from services.runtime.eventstore import EventStore
from services.runtime.kafkarecords import aiokafka_reader

KAFKA = os.environ.get("FLOWS_KAFKA_BOOTSTRAP") or f"127.0.0.1:{os.environ.get('FLOWS_KAFKA_PORT_BASE', '19092')}"
SERVER_URL = (os.environ.get("DATABASE_URL")
              or f"postgresql://postgres@127.0.0.1:{os.environ.get('FLOWS_PG_PORT', '15432')}/flows")
PARTITIONS = 6


def _generator() -> Any:
    """The CUP generator (simulators/cup/)."""
    from simulators.cup import generator

    return generator


def messages(n: int, prefix: str) -> list[tuple[str, bytes, bytes, list[tuple[str, bytes]]]]:
    """(topic, key, value, headers) of n generated records, on the bench's topics `<prefix>.<kind>`."""
    gen = _generator()
    out: list[tuple[str, bytes, bytes, list[tuple[str, bytes]]]] = []
    services = n  # more than enough: a service brings ~1.3 messages
    for record in gen.generate("204", "2020-08", services, seed=1947):
        kind = gen.SOURCE_FILES[type(record)][0]
        topic = f"{prefix}.{kind}"
        source_id = str(record.source_id)
        headers = Envelope.new(topic, "/cup/bench", subject=source_id).to_headers()
        out.append((topic, source_id.encode(), record.model_dump_json().encode(), headers))
        if len(out) >= n:
            break
    return out


async def create_topics(prefix: str) -> list[str]:
    names = [f"{prefix}.{kind}" for kind in KINDS]
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in names] + [
            NewTopic(f"{n}.dlq", 1, 1, topic_configs={"max.message.bytes": str(DLQ_MAX_MESSAGE_BYTES)})
            for n in names])
        for _ in range(100):
            described = await admin.describe_topics(names)
            if all(not t["error_code"] and t["partitions"] for t in described):
                return names
            await asyncio.sleep(0.1)
        raise RuntimeError(f"bench topics {names} not in the metadata after 10 s")
    finally:
        await admin.close()


async def delete_topics(names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        await admin.delete_topics(names + [f"{n}.dlq" for n in names])
    finally:
        await admin.close()


async def publish(batch: list[tuple[str, bytes, bytes, list[tuple[str, bytes]]]]) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, enable_idempotence=True, acks="all", linger_ms=20,
                                max_batch_size=512 * 1024)
    await producer.start()
    started = time.perf_counter()
    try:
        futures = [await producer.send(topic, value, key=key, headers=headers) for topic, key, value, headers in batch]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - started


def _consumer(topics: list[str]) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(*topics, bootstrap_servers=KAFKA, group_id=f"bench-{uuid.uuid4().hex[:8]}",
                            enable_auto_commit=False, auto_offset_reset="earliest",
                            max_partition_fetch_bytes=4 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024)


async def plain_start(consumer: AIOKafkaConsumer) -> None:
    """Starts a baseline's consumer with aiokafka's own record reader (not the services' tolerant one,
    services.runtime.kafkarecords): the baselines are what a plain aiokafka script does."""
    with aiokafka_reader():
        await consumer.start()


async def plain_consume(topics: list[str], n: int) -> float:
    consumer = _consumer(topics)
    started = time.perf_counter()
    await plain_start(consumer)
    seen = 0
    try:
        while seen < n:
            polled = await consumer.getmany(timeout_ms=500, max_records=5000)
            seen += sum(len(rs) for rs in polled.values())
    finally:
        await consumer.stop()
    return time.perf_counter() - started


def _copy_cell(value: Any) -> str:
    """A cell of COPY text format with NULL 'None', the careful way (see `_copy_line`)."""
    if value is None:
        return "None"
    if value == "None":
        return "\\None"  # backslash + a plain character is that character; NULL is matched before escapes are read
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, list | dict):
        value = orjson.dumps(value).decode()
    return str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _copy_line(columns: tuple[str, ...], json_columns: frozenset[str]) -> Callable[[bytes], str]:
    """A message body -> its line of COPY text format (the columns, then content_hash: sha256 of the body).

    The quick way: str() of each value, tab-joined, COPY's NULL written 'None' (PostgreSQL reads True/False as
    booleans). Right when no string holds a backslash, a tab, a newline, a CR or is "None": a JSON body holds
    none of the first four unescaped, so a body without a backslash and without the string "None" takes it; any
    other body takes the per-cell path (`_copy_cell`)."""
    get = operator.itemgetter(*columns)
    json_at = [i for i, c in enumerate(columns) if c in json_columns]
    loads, dumps, sha256, join = orjson.loads, orjson.dumps, hashlib.sha256, "\t".join

    def line(value: bytes) -> str:
        cells = get(loads(value))
        if b"\\" in value or b'"None"' in value:
            return join([*map(_copy_cell, cells), "\\\\x" + sha256(value).hexdigest()])
        if json_at:
            cells = list(cells)
            for i in json_at:
                cells[i] = dumps(cells[i]).decode()
        return join([*map(str, cells), "\\\\x" + sha256(value).hexdigest()])
    return line


async def _one(data: bytes) -> AsyncIterator[bytes]:
    """COPY data for asyncpg in one piece (a file object it would read in a thread, 512 KB a read)."""
    yield data


COPY_YIELD_EVERY = 250  # bodies decoded between two turns of the event loop while a COPY is in flight


async def plain_copy(topics: list[str], n: int, url: str) -> float:
    """The fastest plain consume-and-COPY script measured here (bench/intake_baselines.py, 2026-12-07): getmany,
    orjson, one COPY (text format) per topic and poll, the poll's COPYs in flight while the next poll is fetched
    and decoded; no validation, no dedup, no upsert. The collector tuned as the intake's process has it."""
    kinds = {topic: KINDS[topic.rsplit(".", 1)[1]] for topic in topics}
    lines = {topic: _copy_line(spec.columns, spec.json_columns) for topic, spec in kinds.items()}
    conn = await asyncpg.connect(url)
    consumer = _consumer(topics)

    async def copy(by_topic: dict[str, list[str]]) -> None:
        for topic, rows in by_topic.items():
            spec = kinds[topic]
            await conn.copy_to_table(spec.table, source=_one(("\n".join(rows) + "\n").encode()),
                                     columns=[*spec.columns, "content_hash"], null="None")

    tune_gc()
    started = time.perf_counter()
    await plain_start(consumer)
    seen = 0
    pending: asyncio.Task[None] | None = None
    try:
        while seen < n:
            polled = await consumer.getmany(timeout_ms=20 if pending else 500, max_records=5000)
            by_topic: dict[str, list[str]] = {}
            for tp, records in polled.items():
                line, rows = lines[tp.topic], by_topic.setdefault(tp.topic, [])
                for start in range(0, len(records), COPY_YIELD_EVERY):
                    if pending:
                        await asyncio.sleep(0)  # the COPY in flight sends its data and reads its answer meanwhile
                    rows.extend([line(r.value) for r in records[start:start + COPY_YIELD_EVERY]])
            if pending:
                await pending
                pending = None
            if by_topic:
                pending = asyncio.create_task(copy(by_topic))
                seen += sum(map(len, by_topic.values()))
        if pending:
            await pending
            pending = None
        await consumer.commit()
    finally:
        if pending:
            pending.cancel()
        await consumer.stop()
        await conn.close()
    return time.perf_counter() - started


async def rows_stored(url: str) -> int:
    """Rows in the source tables of the database of `url`."""
    conn = await asyncpg.connect(url)
    try:
        return sum([int(await conn.fetchval(f"SELECT count(*) FROM {k.table}")) for k in KINDS.values()])
    finally:
        await conn.close()


def _bench_topics(topics: list[str]) -> list[Topic]:
    """The bench's topics with the contract of the intake topic of the same kind."""
    registry = {t.payload: t for t in INTAKE_TOPICS}
    return [Topic(name, registry[KINDS[name.rsplit(".", 1)[1]].model].payload, "source_id", "bench", ("bench",))
            for name in topics]


async def _loader_intake(topics: list[str], url: str, group: str,
                         max_records: int) -> tuple[asyncpg.Pool, BatchIntake, BatchConsumer]:
    """The loader's batched intake (its sink and consumer, as services.loader.batch_intake.batch_consumer makes
    them) on the bench's topics."""
    pool = await create_pool(url, min_size=1, max_size=4)
    sink = BatchIntake(EventStore(pool, source="/flows/loader"), pool)
    return pool, sink, BatchConsumer([KAFKA], _bench_topics(topics), group, sink, pool, max_records=max_records)


async def batched_intake(topics: list[str], n: int, url: str, max_records: int) -> tuple[float, BatchIntake]:
    pool, sink, consumer = await _loader_intake(topics, url, f"bench-{uuid.uuid4().hex[:8]}", max_records)
    stop = asyncio.Event()
    started = time.perf_counter()
    task = asyncio.create_task(consumer.run(stop))
    try:
        while True:
            t = sink.totals
            if t.stored + t.corrected + t.duplicates + sink.rejected >= n:
                break
            if task.done():
                task.result()
                raise RuntimeError("the intake consumer stopped before the end")
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await pool.close()
    return elapsed, sink


async def replica(topics: list[str], url: str, group: str, max_records: int) -> None:
    """One intake process of `replicated_intake`: says READY, waits for GO on stdin, consumes until killed."""
    _, _, consumer = await _loader_intake(topics, url, group, max_records)
    print("READY", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await consumer.run(asyncio.Event())


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


async def replicated_intake(topics: list[str], n: int, url: str, max_records: int, replicas: int) -> float:
    group = f"bench-{uuid.uuid4().hex[:8]}"
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--replica-of", ",".join(topics), "--database-url", url, "--group", group,
        "--max-records", str(max_records), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL) for _ in range(replicas)]
    conn = await asyncpg.connect(url)
    try:
        for p in procs:
            assert p.stdout is not None
            if (await asyncio.wait_for(p.stdout.readline(), 120)).strip() != b"READY":
                raise RuntimeError("an intake replica did not start")
        drains = [asyncio.create_task(_drain(p.stdout)) for p in procs if p.stdout is not None]  # their log lines
        started = time.perf_counter()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(b"GO\n")
            await p.stdin.drain()
        count = " + ".join(f"(SELECT count(*) FROM {k.table})" for k in KINDS.values())
        while int(await conn.fetchval(f"SELECT {count}")) < n:
            if any(p.returncode is not None for p in procs):
                raise RuntimeError("an intake replica stopped before the end")
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
        for d in drains:
            d.cancel()
        return elapsed
    finally:
        await conn.close()
        for p in procs:
            if p.returncode is None:
                p.kill()
            await p.wait()


async def _timed(what: str, fn: Callable[[], Awaitable[float]], n: int) -> float:
    """Wall seconds of `fn`; also prints this process's CPU seconds (the machine may be shared: its
    load slows all three alike, and the CPU figure shows what the Python side itself costs)."""
    cpu = time.process_time()
    seconds = await fn()
    cpu = time.process_time() - cpu
    print(f"  {what:<8} {n:>9,} messages in {seconds:7.2f} s = {n / seconds:>10,.0f} msg/s "
          f"(this process: {cpu:6.2f} CPU s = {n / cpu:>9,.0f} msg per CPU s)", flush=True)
    return seconds


async def main(n: int, max_records: int, replicas: int) -> None:
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    print(f"intake bench: {n:,} source messages, Kafka {KAFKA}, PostgreSQL {SERVER_URL.rsplit('@', 1)[-1]}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    batch = messages(n, prefix)
    sizes = sum(len(v) for _, _, v, _ in batch)
    kinds: dict[str, int] = {}
    for topic, *_ in batch:
        kinds[topic.rsplit(".", 1)[1]] = kinds.get(topic.rsplit(".", 1)[1], 0) + 1
    print(f"  mix: {kinds}; {sizes / len(batch):,.0f} bytes a body on average")
    topics = await create_topics(prefix)
    urls: list[str] = []
    try:
        print(f"  published in {await publish(batch):.1f} s")
        consume_s = await _timed("consume", lambda: plain_consume(topics, n), n)
        urls.append(await create_database(SERVER_URL, "bench_intake_copy"))
        copy_s = await _timed("copy", lambda: plain_copy(topics, n, urls[-1]), n)
        copied = await rows_stored(urls[-1])
        print(f"  copy: rows in the source tables: {copied:,}")
        if copied != n:
            raise RuntimeError(f"the plain consume+COPY stored {copied:,} rows of {n:,}")
        urls.append(await create_database(SERVER_URL, "bench_intake_intake"))
        result: list[BatchIntake] = []

        async def intake() -> float:
            seconds, sink = await batched_intake(topics, n, urls[-1], max_records)
            result.append(sink)
            return seconds
        intake_s = await _timed("intake", intake, n)
        t = result[0].totals
        rows = await rows_stored(urls[-1])
        print(f"  intake: stored {t.stored:,}, corrected {t.corrected:,}, duplicates {t.duplicates:,}, "
              f"rejected {result[0].rejected:,}; rows in the source tables: {rows:,}")
        rate = n / intake_s
        print(f"intake {rate:,.0f} msg/s (target >= 20,000): {intake_s / consume_s:.1f}x the time of a plain "
              f"consume = {consume_s / intake_s:.2f}x its rate; {copy_s / intake_s:.2f}x the rate of plain "
              f"consume+COPY (target >= 0.25x)")
        if replicas > 1:
            urls.append(await create_database(SERVER_URL, "bench_intake_replicas"))
            replicas_s = await _timed(f"intake x{replicas}",
                                      lambda: replicated_intake(topics, n, urls[-1], max_records, replicas), n)
            print(f"intake x{replicas} replicas {n / replicas_s:,.0f} msg/s (target >= 20,000): "
                  f"{consume_s / replicas_s:.2f}x the rate of a plain consume; {copy_s / replicas_s:.2f}x the rate "
                  f"of plain consume+COPY (target >= 0.25x); {intake_s / replicas_s:.2f}x one replica")
    finally:
        for url in urls:
            await drop_database(SERVER_URL, url)
        await delete_topics(topics)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--max-records", type=int, default=5000, help="intake's batch size (getmany max_records)")
    parser.add_argument("--replicas", type=int, default=1, help="also time the intake in this many processes")
    parser.add_argument("--replica-of", help=argparse.SUPPRESS)  # topics: run as one replica (internal)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--group", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.replica_of:
        uvloop.run(replica(args.replica_of.split(","), args.database_url, args.group, args.max_records))
    else:
        uvloop.run(main(args.messages, args.max_records, args.replicas))
