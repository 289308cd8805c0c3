"""Event-store append throughput against raw asyncpg inserts of the same rows, measured in one run.

Raw and store alternate in ten slices, so load from elsewhere on the machine hits both sides alike.

    uv run python bench/eventstore.py [--events N]

Runs on a fresh database of the local stack's PostgreSQL (dropped at the end). One writer, fsync
on (the stack keeps PostgreSQL's durability defaults). Modes:
  single   one event per append / one row per commit; the store takes a pool connection per append
           ("held conn": one connection passed to every append, no pool acquire/reset round trip)
  batched  100 events per append / 100 rows per transaction
The store's figure includes everything an append does: head read, hash chain, events, outbox
row, NOTIFY. The baseline inserts the same columns into a plain table with no constraints but
its primary key. Both sides run on uvloop, the event loop the services run on (services.runtime.host).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import uvloop

from services.runtime.db import create_database, create_pool, drop_database
from services.runtime.eventstore import EventStore, NewEvent
from services.runtime.migrations import MIGRATIONS_DIR, migrate

SERVER_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:15432/flows")
STREAM_LENGTH = 50  # events per stream: an instance's history is tens of events
ROUNDS = 10

RAW_TABLE = """
CREATE TABLE raw_events (
    stream_id text, version int, event_id uuid, type text, data jsonb, actor text, metadata jsonb,
    recorded_at timestamptz, PRIMARY KEY (stream_id, version))
"""
RAW_INSERT = "INSERT INTO raw_events VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"


def payload(n: int) -> dict[str, object]:
    return {"instance": 1947, "rows": n, "ente": "ASL Napoli 1", "period": "2024-03"}


async def store_appends(store: EventStore, first: int, events: int, per_append: int,
                        conn: asyncpg.Connection | None = None) -> float:
    """Seconds to append events number first..first+events."""
    started = time.perf_counter()
    for start in range(first, first + events, per_append):
        stream_no, version = divmod(start, STREAM_LENGTH * per_append)
        batch = [NewEvent(type="flows.load-checked", data=payload(start + i)) for i in range(per_append)]
        await store.append(f"instance-{per_append}-{stream_no}{'c' if conn else ''}", batch,
                           expected_version=version, key=str(stream_no), conn=conn)
    return time.perf_counter() - started


async def raw_inserts(pool: asyncpg.Pool, first: int, rows: int, per_tx: int) -> float:
    """Seconds to insert rows number first..first+rows."""
    def row(n: int) -> tuple[object, ...]:
        return (f"raw-{n // STREAM_LENGTH}", n % STREAM_LENGTH + 1, uuid.uuid4(), "flows.load-checked",
                payload(n), "system", {}, datetime.now(UTC))

    async with pool.acquire() as conn:
        started = time.perf_counter()
        if per_tx == 1:
            for n in range(first, first + rows):
                await conn.execute(RAW_INSERT, *row(n))
        else:
            for start in range(first, first + rows, per_tx):
                async with conn.transaction():
                    await conn.executemany(RAW_INSERT, [row(n) for n in range(start, start + per_tx)])
        return time.perf_counter() - started


async def main(events: int) -> None:
    url = await create_database(SERVER_URL, "bench_eventstore", migrated=False)  # the event store's migrations only
    try:
        pool = await create_pool(url, min_size=1, max_size=2)
        with tempfile.TemporaryDirectory() as folder:
            for path in MIGRATIONS_DIR.glob("000[1-9]_*.sql"):
                shutil.copy(path, Path(folder) / path.name)
            await migrate(pool, Path(folder))
        await pool.execute(RAW_TABLE)
        store = EventStore(pool, source="/flows/bench")
        results = []
        held = await pool.acquire()  # "single, held conn": no pool acquire/reset round trip per append
        # One untimed append on each connection and one raw insert before the clock, as a service has done long before
        # its appends are counted: the first append imports the outbox's and tracing's modules (lazily, in
        # EventStore._write; a service imports them at its start) and prepares its statement, 0.25-0.45 s once, which
        # was counted in the single mode's 3,000 appends (~100 us each; the raw side's first insert costs ~1 ms).
        for warm, conn in (("warm-up-pool", None), ("warm-up-held", held)):
            await store.append(warm, [NewEvent(type="flows.load-checked", data=payload(0))], expected_version=0,
                               key="warm-up", conn=conn)
        await raw_inserts(pool, 0, 1, 1)
        for mode, per, count, conn in (("single", 1, events, None), ("single, held conn", 1, events, held),
                                       ("batched", 100, events * 10, None)):
            await pool.execute("TRUNCATE raw_events")
            # Alternating slices, so that both sides share whatever else the machine is doing.
            raw_seconds = store_seconds = 0.0
            slice_ = max(per, count // ROUNDS // per * per)
            for first in range(0, count, slice_):
                raw_seconds += await raw_inserts(pool, first, slice_, per)
                store_seconds += await store_appends(store, first, slice_, per, conn)
            done = len(range(0, count, slice_)) * slice_
            results.append((mode, per, done, done / store_seconds, done / raw_seconds))
        await pool.release(held)
        chain_ok = not await store.verify_all()
        await pool.close()
    finally:
        await drop_database(SERVER_URL, url)

    print(f"{'mode':<19}{'per tx':>7}{'events':>9}{'store ev/s':>12}{'raw rows/s':>12}{'ratio':>8}")
    for mode, per, count, stored, raw in results:
        print(f"{mode:<19}{per:>7}{count:>9}{stored:>12,.0f}{raw:>12,.0f}{stored / raw:>8.2f}")
    print(f"hash chains verified after the run: {'ok' if chain_ok else 'BROKEN'}")
    print(json.dumps({m: {"store": round(s), "raw": round(r), "ratio": round(s / r, 3)}
                      for m, _, _, s, r in results}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=3000, help="events in single mode (batched: 10x)")
    uvloop.run(main(parser.parse_args().events))
