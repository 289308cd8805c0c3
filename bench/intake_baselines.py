"""Plain consume-and-COPY scripts, the candidates for bench/intake.py's `copy` baseline, timed against each other.

    uv run python bench/intake_baselines.py [--messages 200000] [--rounds 2] [--only csv,binary,binary@20000,...]

Issue 14 asks that the intake's baseline be no slower than a plain aiokafka + COPY script would be. Each variant
below is such a script: getmany, decode every body, COPY the rows into the same source tables (content_hash: a
sha256 of the message's bytes; the tables hold it NOT NULL), no validation, no dedup, no upsert. They differ in
how they decode, how they hand rows to PostgreSQL and whether the next poll overlaps the previous COPY:
  csv           json.loads, csv.writer with a per-cell function, hexdigest, CSV COPY; strictly serial (the
                baseline bench/intake.py had until 2026-12-07)
  csv-orjson    the same with orjson
  text          orjson, tab-joined COPY text lines handed to asyncpg in one piece (NULL written 'None' by
                str(): a body holding a backslash or the string "None" takes the careful per-cell path), serial
  binary        orjson, operator.itemgetter tuples, dates parsed (date.fromisoformat), asyncpg
                copy_records_to_table (binary COPY), serial
  binary-ovl    binary with the poll's COPYs in flight while the next poll is fetched and decoded (the decoding
                lets the event loop turn every YIELD_EVERY records, so that the COPY's data goes out meanwhile)
  text-ovl      text, overlapped the same way
  server        the bodies COPYed as they are into a temporary table, decoded by PostgreSQL
                (jsonb_populate_record) in one INSERT ... SELECT per topic and poll: not a COPY of decoded rows
  server-ovl    server, overlapped
  binary-ovl3   binary-ovl with each table's COPY on its own connection, the three concurrently
  bench         bench/intake.py's copy baseline: text-ovl with the collector tuned as the intake's process has it
                (in this process from then on: run it last, or alone, or give --gc-tuned to every variant)
Every variant runs in a fresh database and consumer group on the same N published messages, and must leave all N
rows in the source tables. `--rounds` repeats the set in rotated order (this machine is shared: alternating is what
makes two figures comparable). Prints messages/s per run and the best and median per variant.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime
import gc
import hashlib
import io
import json
import operator
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import orjson
import uvloop
from intake import (  # bench/intake.py: the script's folder is on sys.path
    SERVER_URL,
    _consumer,
    _copy_line,
    _one,
    create_topics,
    delete_topics,
    messages,
    plain_copy,
    plain_start,
    publish,
)

from services.loader.intake import KINDS
from services.runtime.batch import tune_gc
from services.runtime.db import create_database, drop_database

YIELD_EVERY = 250  # records decoded between two turns of the event loop while a COPY is in flight
Row = Callable[[bytes], Any]
Copy = Callable[[asyncpg.Connection, str, list[Any]], Awaitable[None]]


def _kinds(topics: list[str]) -> dict[str, Any]:
    return {topic: KINDS[topic.rsplit(".", 1)[1]] for topic in topics}


async def _column_types(conn: asyncpg.Connection, table: str) -> dict[str, str]:
    rows = await conn.fetch("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = $1",
                            table)
    return {r["column_name"]: r["data_type"] for r in rows}


# --- row makers: bytes of one message -> what its table's COPY takes ------------------------------------------

def _csv_cell(value: Any) -> Any:
    if isinstance(value, list | dict):
        return json.dumps(value)
    return value


async def csv_rows(conn: asyncpg.Connection, spec: Any, loads: Callable[[bytes], Any]) -> tuple[Row, Copy]:
    cols = spec.columns

    def row(value: bytes) -> list[Any]:
        body = loads(value)
        return [_csv_cell(body.get(c)) for c in cols] + ["\\x" + hashlib.sha256(value).hexdigest()]

    async def copy(conn: asyncpg.Connection, table: str, rows: list[Any]) -> None:
        buf = io.StringIO()
        csv.writer(buf).writerows(rows)
        await conn.copy_to_table(table, source=io.BytesIO(buf.getvalue().encode()), columns=[*cols, "content_hash"],
                                 format="csv")
    return row, copy


async def text_rows(conn: asyncpg.Connection, spec: Any) -> tuple[Row, Copy]:
    """bench/intake.py's lines of COPY text (`_copy_line`), handed to asyncpg in one piece."""
    cols = spec.columns

    async def copy(conn: asyncpg.Connection, table: str, rows: list[Any]) -> None:
        await conn.copy_to_table(table, source=_one(("\n".join(rows) + "\n").encode()), columns=[*cols, "content_hash"],
                                 null="None")
    return _copy_line(cols, spec.json_columns), copy


async def binary_rows(conn: asyncpg.Connection, spec: Any) -> tuple[Row, Copy]:
    cols = spec.columns
    types = await _column_types(conn, spec.table)
    get = operator.itemgetter(*cols)
    date_idx = [i for i, c in enumerate(cols) if types[c] == "date"]
    json_idx = [i for i, c in enumerate(cols) if types[c] in ("json", "jsonb")]
    loads, dumps, sha, day = orjson.loads, orjson.dumps, hashlib.sha256, datetime.date.fromisoformat

    def row(value: bytes) -> list[Any]:
        r = [*get(loads(value)), sha(value).digest()]
        for i in date_idx:
            if (v := r[i]) is not None:
                r[i] = day(v)
        for i in json_idx:
            r[i] = dumps(r[i]).decode()  # asyncpg's jsonb codec takes the text
        return r

    async def copy(conn: asyncpg.Connection, table: str, rows: list[Any]) -> None:
        await conn.copy_records_to_table(table, records=rows, columns=[*cols, "content_hash"])
    return row, copy


async def server_rows(conn: asyncpg.Connection, spec: Any) -> tuple[Row, Copy]:
    """The bodies as they came, COPYed into a temporary table; PostgreSQL decodes them (jsonb_populate_record)
    in the INSERT ... SELECT into the source table, in the same transaction."""
    cols = ", ".join(spec.columns)
    temp = f"raw_{spec.table}"
    insert = (f"INSERT INTO {spec.table} ({cols}, content_hash) "
              f"SELECT {', '.join(f'r.{c}' for c in spec.columns)}, sha256(convert_to(s.body, 'UTF8')) "
              f"FROM {temp} s, jsonb_populate_record(NULL::{spec.table}, s.body::jsonb) r")

    def row(value: bytes) -> bytes:  # COPY text: backslash, newline, tab, CR escaped (JSON holds them outside strings)
        if b"\\" in value or b"\n" in value or b"\t" in value or b"\r" in value:
            return value.replace(b"\\", b"\\\\").replace(b"\n", b"\\n").replace(b"\t", b"\\t").replace(b"\r", b"\\r")
        return value

    async def copy(conn: asyncpg.Connection, table: str, rows: list[Any]) -> None:
        async with conn.transaction():
            await conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {temp} (body text) ON COMMIT DELETE ROWS")
            await conn.copy_to_table(temp, source=_one(b"\n".join(rows) + b"\n"), columns=["body"])
            await conn.execute(insert)
    return row, copy


# --- the pipelines ------------------------------------------------------------------------------------------

Maker = Callable[[asyncpg.Connection, Any], Awaitable[tuple[Row, Copy]]]


async def serial(topics: list[str], n: int, url: str, maker: Maker, max_records: int) -> float:
    """poll -> decode -> COPY per topic, one after the other."""
    conn = await asyncpg.connect(url)
    makers = {t: (spec.table, *(await maker(conn, spec))) for t, spec in _kinds(topics).items()}
    consumer = _consumer(topics)
    started = time.perf_counter()
    await plain_start(consumer)
    seen = 0
    try:
        while seen < n:
            polled = await consumer.getmany(timeout_ms=500, max_records=max_records)
            by_topic: dict[str, list[Any]] = {}
            for tp, records in polled.items():
                table, row, _ = makers[tp.topic]
                by_topic.setdefault(tp.topic, []).extend(row(r.value) for r in records)
            for topic, rows in by_topic.items():
                table, _, copy = makers[topic]
                await copy(conn, table, rows)
                seen += len(rows)
        await consumer.commit()
    finally:
        await consumer.stop()
        await conn.close()
    return time.perf_counter() - started


async def overlapped(topics: list[str], n: int, url: str, maker: Maker, max_records: int,
                     per_table: bool = False) -> float:
    """The poll's COPYs run as a task while the next poll is fetched and decoded; one poll's COPYs in flight at a
    time (`per_table`: each table's on its own connection, concurrently; else one after the other on one)."""
    kinds = _kinds(topics)
    conns = {t: await asyncpg.connect(url) for t in (topics if per_table else topics[:1])}
    first = next(iter(conns.values()))
    makers = {t: (spec.table, *(await maker(first, spec))) for t, spec in kinds.items()}
    consumer = _consumer(topics)

    async def store(by_topic: dict[str, list[Any]]) -> None:
        if per_table:
            await asyncio.gather(*(makers[t][2](conns[t], makers[t][0], rows) for t, rows in by_topic.items()))
        else:
            for t, rows in by_topic.items():
                await makers[t][2](first, makers[t][0], rows)

    started = time.perf_counter()
    await plain_start(consumer)
    seen = 0
    pending: asyncio.Task[None] | None = None
    try:
        while seen < n:
            polled = await consumer.getmany(timeout_ms=20 if pending else 500, max_records=max_records)
            by_topic: dict[str, list[Any]] = {}
            for tp, records in polled.items():
                row, rows = makers[tp.topic][1], by_topic.setdefault(tp.topic, [])
                for start in range(0, len(records), YIELD_EVERY):
                    if pending:
                        await asyncio.sleep(0)  # the COPY in flight sends its data and reads its answer meanwhile
                    rows.extend(row(r.value) for r in records[start:start + YIELD_EVERY])
            if pending:
                await pending
                pending = None
            if by_topic:
                pending = asyncio.create_task(store(by_topic))
                seen += sum(map(len, by_topic.values()))
        if pending:
            await pending
        await consumer.commit()
    finally:
        if pending and not pending.done():
            pending.cancel()
        await consumer.stop()
        for c in conns.values():
            await c.close()
    return time.perf_counter() - started


async def _csv_json(conn: asyncpg.Connection, spec: Any) -> tuple[Row, Copy]:
    return await csv_rows(conn, spec, json.loads)


async def _csv_orjson(conn: asyncpg.Connection, spec: Any) -> tuple[Row, Copy]:
    return await csv_rows(conn, spec, orjson.loads)


VARIANTS: dict[str, Callable[[list[str], int, str, int], Awaitable[float]]] = {
    "csv": lambda t, n, u, m: serial(t, n, u, _csv_json, m),
    "csv-orjson": lambda t, n, u, m: serial(t, n, u, _csv_orjson, m),
    "text": lambda t, n, u, m: serial(t, n, u, text_rows, m),
    "binary": lambda t, n, u, m: serial(t, n, u, binary_rows, m),
    "binary-ovl": lambda t, n, u, m: overlapped(t, n, u, binary_rows, m),
    "text-ovl": lambda t, n, u, m: overlapped(t, n, u, text_rows, m),
    "server": lambda t, n, u, m: serial(t, n, u, server_rows, m),
    "server-ovl": lambda t, n, u, m: overlapped(t, n, u, server_rows, m),
    "binary-ovl3": lambda t, n, u, m: overlapped(t, n, u, binary_rows, m, per_table=True),
    "bench": lambda t, n, u, m: plain_copy(t, n, u),  # bench/intake.py's copy (text-ovl, the collector tuned)
}


async def rows_stored(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return sum([int(await conn.fetchval(f"SELECT count(*) FROM {k.table}")) for k in KINDS.values()])
    finally:
        await conn.close()


async def main(n: int, rounds: int, only: list[str], max_records: int, gc_tuned: bool) -> None:
    prefix = f"bench-{os.urandom(3).hex()}"
    print(f"intake baselines: {n:,} messages, max_records {max_records}, gc {'tuned' if gc_tuned else 'default'}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    if gc_tuned:
        tune_gc(max_records)
    batch = messages(n, prefix)
    topics = await create_topics(prefix)
    rates: dict[str, list[float]] = {v: [] for v in only}
    try:
        print(f"  published in {await publish(batch):.1f} s", flush=True)
        del batch
        for r in range(rounds):
            order = only[r % len(only):] + only[:r % len(only)]
            for name in order:
                variant, _, size = name.partition("@")  # name@5000: that poll size (max_records)
                url = await create_database(SERVER_URL, "bench_baseline")
                try:
                    cpu = time.process_time()
                    seconds = await VARIANTS[variant](topics, n, url, int(size or max_records))
                    cpu = time.process_time() - cpu
                    stored = await rows_stored(url)
                finally:
                    await drop_database(SERVER_URL, url)
                if stored != n:
                    raise RuntimeError(f"{name} stored {stored:,} rows of {n:,}")
                rates[name].append(n / seconds)
                print(f"  round {r + 1} {name:<12} {n / seconds:>9,.0f} msg/s ({seconds:6.2f} s, {stored:,} rows, "
                      f"{cpu:5.2f} CPU s here; load {os.getloadavg()[0]:.1f})", flush=True)
        for name, values in rates.items():
            print(f"{name:<12} best {max(values):>9,.0f} median {statistics.median(values):>9,.0f} msg/s "
                  f"over {len(values)} runs")
    finally:
        await delete_topics(topics)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-records", type=int, default=5000)
    parser.add_argument("--only", default=",".join(VARIANTS), help="variants, comma-separated")
    parser.add_argument("--gc-tuned", action="store_true", help="services.runtime.batch.tune_gc first, as intake")
    args = parser.parse_args()
    gc.collect()
    uvloop.run(main(args.messages, args.rounds, args.only.split(","), args.max_records, args.gc_tuned))
