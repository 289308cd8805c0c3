"""Benchmark: a Flusso C load (snapshot + checks + feedback -> outcome) against PostgreSQL copying the rows.

    uv run python bench/load.py [--services 10000 1000000] [--database-url URL]

On a fresh database (created and dropped here): generate + bulk intake (not timed), then per size:
- baseline: `INSERT INTO <same-shaped table> SELECT ... FROM source_service` of the same rows, i.e.
  what PostgreSQL alone takes to copy them;
- load: `run_load` (snapshot, every check, feedback file, counts), with 0.1% planted bad records.
Prints seconds and the ratio load / baseline. Targets: 10k under 5 s, 1M under 30 s on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from datetime import date
from pathlib import Path

import asyncpg

from contracts.sources import DeliveredService
from services.loader.generator import generate
from services.loader.intake import store_services
from services.loader.pipeline import run_load
from services.runtime.filestore import FileStore
from services.runtime.migrations import migrate

DEFAULT_URL = "postgresql://postgres@127.0.0.1:15432/flows"
ENTES = ("201", "204", "207", "205", "206", "203")


async def _intake(pool: asyncpg.Pool, ente: str, services: int, bad: int) -> int:
    batch: list[DeliveredService] = []
    async with pool.acquire() as conn:
        for record in generate(ente, "2020-08", services, seed=11, bad=bad):
            if isinstance(record, DeliveredService):
                batch.append(record)
                if len(batch) >= 20_000:
                    await store_services(conn, batch)
                    batch = []
        await store_services(conn, batch)
        await conn.execute("ANALYZE source_service")
    return bad


async def _baseline(pool: asyncpg.Pool, ente: str) -> float:
    async with pool.acquire() as conn:
        await conn.execute("DROP TABLE IF EXISTS bench_copy")
        await conn.execute("CREATE TABLE bench_copy (LIKE snapshot_service)")
        cols = [r["attname"] for r in await conn.fetch(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'bench_copy'::regclass AND attnum > 0 "
            "AND NOT attisdropped AND attname NOT IN ('snapshot_id', 'row_number') ORDER BY attnum")]
        started = time.perf_counter()
        await conn.execute(f"INSERT INTO bench_copy (snapshot_id, row_number, {', '.join(cols)}) "
                           f"SELECT 0, 1, {', '.join(cols)} FROM source_service WHERE ente = $1", ente)
        elapsed = time.perf_counter() - started
        await conn.execute("DROP TABLE bench_copy")
    return elapsed


async def main(sizes: list[int], url: str) -> None:
    base, _, _ = url.rpartition("/")
    name = f"bench_load_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        pool = await asyncpg.create_pool(f"{base}/{name}", min_size=1, max_size=4)
        async with pool.acquire() as conn:
            await migrate(conn)
        store = FileStore(Path(tempfile.mkdtemp(prefix="bench_load_")))
        print(f"{'services':>10} {'baseline s':>11} {'load s':>8} {'ratio':>6}  outcome")
        for ente, size in zip(ENTES, sizes, strict=False):
            bad = max(1, size // 1000)
            started = time.perf_counter()
            await _intake(pool, ente, size, bad=min(bad, 1000))
            intake_s = time.perf_counter() - started
            baseline = await _baseline(pool, ente)
            async with pool.acquire() as conn:
                instance = int(await conn.fetchval("SELECT nextval('flow_instance_seq')"))
                snapshot = int(await conn.fetchval("SELECT nextval('flow_instance_seq')"))
            started = time.perf_counter()
            outcome = await run_load(pool, store, instance, snapshot, "FLUSSO_C", "2020", ente,
                                     date(2020, 8, 1), date(2020, 8, 31))
            load_s = time.perf_counter() - started
            print(f"{size:>10} {baseline:>11.2f} {load_s:>8.2f} {load_s / baseline:>6.2f}  "
                  f"{outcome.counts} errors={outcome.errors} warnings={outcome.warnings} "
                  f"(generate+intake {intake_s:.1f} s, not timed)")
        await pool.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", DEFAULT_URL))
    args = parser.parse_args()
    asyncio.run(main(args.services, args.database_url))
