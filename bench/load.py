"""Benchmark: a Flusso C load (snapshot + checks + feedback -> outcome) against PostgreSQL copying the rows.

    uv run python bench/load.py [--services 10000 1000000] [--database-url URL] [--no-bad]

Default URL: $DATABASE_URL, else the operators' stack postgresql://postgres@127.0.0.1:15432/flows; a fresh
database `bench_load_<hex>` is created next to it and dropped at the end.

Per size, on an entity of its own (generate + bulk intake not timed):
- baseline: `INSERT INTO <table LIKE snapshot_service> SELECT ... FROM source_service` of exactly the rows
  the snapshot takes (the entity's SSN, non-PACC services), i.e. what PostgreSQL alone takes to copy them,
  measured in the same run right before the load;
- clean: `run_load` (snapshot, every check, feedback, counts) on generator output with no planted
  problem. The outcome must be Checked (0 errors; warnings are allowed);
- bad (unless --no-bad): the same on another entity with 0.1% planted bad records (at most 1000). The
  outcome must be Failed loading, with the feedback file written to the file store.
Prints seconds and the ratio load / baseline per row, and the outcome. Aim: 10k under 5 s and 1M under
30 s (clean path, 2 cores). Exits 1, saying so, when a row does not reach the outcome it must.

--cpu (PostgreSQL on this machine, as the local stack's): also the CPU seconds of the baseline and of each step of
the load, PostgreSQL's (every process of the cluster, exited parallel workers included) and this process's, and
the load's CPU floor: its CPU seconds spread over every core (os.cpu_count()) as a ratio of the baseline's wall
time, the best ratio any scheduling of that work could reach on this machine.
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import asyncpg
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from contracts.flows import FlowType
from contracts.sources import DeliveredService
from services.loader.intake import store_services
from services.loader.pipeline import LoadOutcome, run_load
from services.loader.snapshot import SELECTIONS
from services.runtime.db import create_database, drop_database
from services.runtime.filestore import FileStore
from simulators.cup.generator import generate

DEFAULT_URL = "postgresql://postgres@127.0.0.1:15432/flows"
ENTES = ("201", "204", "207", "205", "206", "203")  # one per row: 3 sizes with the bad row, 6 without
MONTH, PERIOD = "2020-08", (date(2020, 8, 1), date(2020, 8, 31))
TARGETS = {10_000: 5.0, 1_000_000: 30.0}  # seconds, clean path


async def _intake(pool: asyncpg.Pool, ente: str, services: int, bad: int) -> int:
    """Generate and store the services; returns how many problems were planted."""
    batch: list[DeliveredService] = []
    generation = generate(ente, MONTH, services, seed=11, bad=bad)
    async with pool.acquire() as conn:
        for record in generation:
            if isinstance(record, DeliveredService):
                batch.append(record)
                if len(batch) >= 20_000:
                    await store_services(conn, batch)
                    batch = []
        await store_services(conn, batch)
        await conn.execute("ANALYZE source_service")
    return len(generation.planted)


async def _baseline(pool: asyncpg.Pool, ente: str) -> tuple[float, int]:
    """Seconds and rows of PostgreSQL copying the rows a Flusso C snapshot of `ente` takes."""
    condition = SELECTIONS[FlowType.FLUSSO_C].condition
    async with pool.acquire() as conn:
        await conn.execute("DROP TABLE IF EXISTS bench_copy")
        await conn.execute("CREATE TABLE bench_copy (LIKE snapshot_service)")
        cols = [r["attname"] for r in await conn.fetch(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'bench_copy'::regclass AND attnum > 0 "
            "AND NOT attisdropped AND attname NOT IN ('snapshot_id', 'row_number') ORDER BY attnum")]
        started = time.perf_counter()
        status = await conn.execute(
            f"INSERT INTO bench_copy (snapshot_id, row_number, {', '.join(cols)}) "
            f"SELECT 0, 1, {', '.join(f's.{c}' for c in cols)} FROM source_service s "
            f"WHERE s.ente = $1 AND {condition}", ente)
        elapsed = time.perf_counter() - started
        await conn.execute("DROP TABLE bench_copy")
    return elapsed, int(status.split()[-1])


class ClusterCpu:
    """CPU seconds of the PostgreSQL cluster a connection belongs to (it runs on this machine): its postmaster's
    children now running plus those it has reaped (its cutime/cstime: exited backends and parallel workers)."""

    TICK = os.sysconf("SC_CLK_TCK")

    def __init__(self, postmaster: int) -> None:
        self.postmaster = postmaster

    @classmethod
    async def of(cls, conn: asyncpg.Connection) -> ClusterCpu:
        backend = int(await conn.fetchval("SELECT pg_backend_pid()"))
        return cls(int(cls._stat(backend)[1]))

    @staticmethod
    def _stat(pid: int | str) -> list[str]:
        with open(f"/proc/{pid}/stat") as f:  # the fields after "(comm)"; [1] is the parent's pid
            return f.read().rsplit(")", 1)[1].split()

    def seconds(self) -> float:
        postmaster = self._stat(self.postmaster)
        ticks = int(postmaster[11]) + int(postmaster[12]) + int(postmaster[13]) + int(postmaster[14])
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    stat = self._stat(pid)
                except OSError:  # gone meanwhile: reaped into the postmaster's cutime
                    continue
                if int(stat[1]) == self.postmaster:
                    ticks += int(stat[11]) + int(stat[12])
        return ticks / self.TICK


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class StepCpu:
    """run_load's progress callback: at the start of each step (and at the end), the time, the cluster's CPU seconds
    and this process's."""

    def __init__(self, cluster: ClusterCpu) -> None:
        self.cluster = cluster
        self.marks: list[tuple[str, float, float, float]] = []
        self("start")

    def __call__(self, step: str, *_: int) -> None:
        self.marks.append((step, time.perf_counter(), self.cluster.seconds(), _own_cpu()))


def _verdict(outcome: LoadOutcome, clean: bool, store: FileStore) -> str | None:
    """None when the outcome is the one the row must reach, else what is wrong."""
    if clean:
        return None if outcome.checked and outcome.errors == 0 else \
            f"expected Checked, got Failed loading with {outcome.errors} errors: {outcome.summary}"
    if outcome.checked:
        return "expected Failed loading (planted bad records), got Checked"
    if outcome.feedback_sha256 is None or not store.exists(outcome.feedback_sha256):
        return "Failed loading but no feedback file in the file store"
    return None


async def main(sizes: list[int], url: str, with_bad: bool, cpu: bool = False) -> int:
    rows = [(size, clean) for size in sizes for clean in ((True, False) if with_bad else (True,))]
    if len(rows) > len(ENTES):
        raise SystemExit(f"at most {len(ENTES)} rows (one entity each): got {len(rows)}")
    scratch = await create_database(url, "bench_load")
    failures: list[str] = []
    try:
        pool = await asyncpg.create_pool(scratch, min_size=1, max_size=4)
        with tempfile.TemporaryDirectory(prefix="bench_load_") as root:
            store = FileStore(Path(root))
            print(f"{'services':>10} {'path':<6} {'rows':>9} {'baseline s':>11} {'load s':>8} {'ratio':>6}  outcome")
            for ente, (size, clean) in zip(ENTES, rows, strict=False):
                started = time.perf_counter()
                planted = await _intake(pool, ente, size, bad=0 if clean else min(max(1, size // 1000), 1000))
                intake_s = time.perf_counter() - started
                async with pool.acquire() as conn:
                    cluster = await ClusterCpu.of(conn) if cpu else None
                base_cpu = cluster.seconds() if cluster else 0.0
                baseline, copied = await _baseline(pool, ente)
                base_cpu = cluster.seconds() - base_cpu if cluster else 0.0
                async with pool.acquire() as conn:
                    instance = int(await conn.fetchval("SELECT nextval('flow_instance_seq')"))
                    snapshot = int(await conn.fetchval("SELECT nextval('flow_instance_seq')"))
                steps = StepCpu(cluster) if cluster else None
                started = time.perf_counter()
                outcome = await run_load(pool, store, instance, snapshot, FlowType.FLUSSO_C, "2020", ente, *PERIOD,
                                         steps)
                load_s = time.perf_counter() - started
                state = "Checked" if outcome.checked else "Failed loading"
                path = "clean" if clean else "bad"
                target = TARGETS.get(size) if clean else None
                aim = "" if target is None else f", aim < {target:.0f} s: {'met' if load_s < target else 'MISSED'}"
                print(f"{size:>10} {path:<6} {outcome.counts['services']:>9} {baseline:>11.2f} {load_s:>8.2f} "
                      f"{load_s / baseline:>6.1f}  {state}: errors={outcome.errors} warnings={outcome.warnings}"
                      + (f" planted={planted}" if not clean else "")
                      + (f" feedback={outcome.feedback_bytes} B" if outcome.feedback_sha256 else "")
                      + f"{aim} (generate+intake {intake_s:.1f} s, not timed)", flush=True)
                if steps is not None:
                    marks = steps.marks
                    for (step, t0, pg0, own0), (_, t1, pg1, own1) in itertools.pairwise(marks[1:]):
                        print(f"    {step:<15} {t1 - t0:6.2f} s, CPU s: PostgreSQL {pg1 - pg0:6.2f}, "
                              f"this process {own1 - own0:5.2f}")
                    pg, own = marks[-1][2] - marks[0][2], marks[-1][3] - marks[0][3]
                    cores = os.cpu_count() or 1
                    print(f"    CPU s: baseline PostgreSQL {base_cpu:.2f}; load PostgreSQL {pg:.2f} + this process "
                          f"{own:.2f} = {pg + own:.2f}, {(pg + own) / max(base_cpu, 1e-9):.1f}x the baseline's; "
                          f"floor on {cores} cores {(pg + own) / cores:.2f} s = "
                          f"{(pg + own) / cores / baseline:.2f}x the baseline's wall", flush=True)
                if copied != outcome.counts["services"]:
                    print(f"  note: baseline copied {copied} rows, the snapshot took {outcome.counts['services']}")
                wrong = _verdict(outcome, clean, store)
                if wrong is not None:
                    failures.append(f"{size} services, {path} path: {wrong}")
                    print(f"  !!! {failures[-1]}", flush=True)
        await pool.close()
    finally:
        await drop_database(url, scratch)
    if failures:
        print("\nFAILED: " + "; ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", DEFAULT_URL))
    parser.add_argument("--no-bad", action="store_true", help="only the clean path (no planted bad records)")
    parser.add_argument("--cpu", action="store_true",
                        help="also CPU seconds per step and the CPU floor (PostgreSQL on this machine)")
    args = parser.parse_args()
    sys.exit(uvloop.run(main(args.services, args.database_url, not args.no_bad, args.cpu)))
