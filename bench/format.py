"""Benchmark: Flusso C (C1 + C2) of N services, the columnar writer against PostgreSQL COPY.

    uv run python bench/format.py [--services 1000000] [--also 3000000]

PostgreSQL: $DATABASE_URL, else 127.0.0.1:$FLOWS_PG_PORT (default 15432), the stack's server.

On a fresh database of the local stack it generates N services (prescriptions of 1..4 services),
then measures (a) the baseline: two `COPY (SELECT rpad/lpad ...) TO STDOUT` producing C1 and C2
(row 99 through UNION ALL + GROUP BY) into files, and (b) the writer (services.formatter.writer)
writing the same two files into a FileStore (hashing as it writes), in a subprocess so that its
peak RSS (ru_maxrss) is its own. That subprocess first loads the writer's compiled kernels
(services.formatter.fastpath.warm_up, which the formatter service runs once at start), outside the clock;
the time it took is printed. Prints records/s, seconds, peak RSS, the speed ratio writer vs baseline,
whether both produced the same bytes, and with --also the RSS ratio between the two sizes.
The database is dropped at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.formatter.fastpath import warm_up
from services.formatter.layouts import load_layout
from services.formatter.writer import write_flusso_c
from services.runtime.filestore import FileStore
from tests.fixtures.sample_snapshot import create_tables, generate_services

STACK_URL = (os.environ.get("DATABASE_URL")
             or f"postgresql://postgres@127.0.0.1:{os.environ.get('FLOWS_PG_PORT', '15432')}/flows")

_ROWS = """
WITH s AS (SELECT * FROM snapshot_service WHERE snapshot_id = {sid}),
closing AS (
    SELECT prescription_id, min(region) AS region, min(ente) AS ente, min(structure_sts11) AS structure_sts11,
           min(prescriber_code) AS prescriber_code, min(patient_surname) AS patient_surname,
           min(patient_name) AS patient_name, min(patient_cf) AS patient_cf, min(patient_sex) AS patient_sex,
           min(patient_birth_date) AS patient_birth_date, min(patient_residence_istat) AS patient_residence_istat,
           min(patient_residence_asl) AS patient_residence_asl, min(prescription_number) AS prescription_number,
           min(delivery_type) AS delivery_type, min(priority) AS priority, min(exemption_code) AS exemption_code,
           min(structure_type) AS structure_type, sum(ticket) AS ticket,
           greatest(sum(quantity * tariff) - sum(ticket), 0) AS total
    FROM s GROUP BY prescription_id),
rows AS (
    SELECT false AS closing, row_number AS rn, prescription_id, region, ente, structure_sts11, prescriber_code,
           patient_surname, patient_name, patient_cf, patient_sex, patient_birth_date, patient_residence_istat,
           patient_residence_asl, prescription_number, delivery_date, catalogue_coding, catalogue_code, quantity,
           0::numeric AS ticket, quantity * tariff AS total, NULL AS delivery_type, discipline, NULL AS priority,
           exemption_code, structure_type
    FROM s
    UNION ALL
    SELECT true, 99, prescription_id, region, ente, structure_sts11, prescriber_code, patient_surname, patient_name,
           patient_cf, patient_sex, patient_birth_date, patient_residence_istat, patient_residence_asl,
           prescription_number, NULL, NULL, NULL, 0, ticket, total, delivery_type, NULL, priority, exemption_code,
           structure_type
    FROM closing)
"""

BASELINE_C1 = _ROWS + """
SELECT rpad(region, 3) || rpad(ente, 3) || rpad(structure_sts11, 6) || rpad(coalesce(upper(prescriber_code), ''), 16)
    || rpad(upper(replace(patient_surname, 'Ò', 'O''')), 30) || rpad(upper(replace(patient_name, 'Ò', 'O''')), 20)
    || repeat(' ', 16) || rpad(coalesce(patient_cf, ''), 16) || CASE patient_sex WHEN 'M' THEN '1' ELSE '2' END
    || to_char(patient_birth_date, 'DDMMYYYY') || rpad(patient_residence_istat, 6)
    || rpad(coalesce(patient_residence_asl, ''), 3) || lpad(rn::text, 2, '0') || rpad(prescription_id, 20)
FROM rows ORDER BY prescription_id, rn
"""

BASELINE_C2 = _ROWS + """
SELECT rpad(region, 3) || rpad(ente, 3) || rpad(structure_sts11, 6) || rpad(prescription_number, 16)
    || lpad(rn::text, 2, '0') || coalesce(to_char(delivery_date, 'DDMMYYYY'), repeat(' ', 8))
    || rpad(coalesce(catalogue_coding, ''), 1) || rpad(coalesce(catalogue_code, ''), 7) || lpad(quantity::text, 3, '0')
    || CASE WHEN coalesce(exemption_code, '') <> '' THEN '01' ELSE '02' END
    || replace(to_char(ticket, 'FM0000.00'), '.', ',') || replace(to_char(total, 'FM00000.00'), '.', ',')
    || '1' || '0000000000' || rpad(prescription_id, 20) || '   ' || rpad(coalesce(delivery_type, ''), 2)
    || rpad(coalesce(discipline, ''), 3) || rpad(coalesce(priority, ''), 1)
    || rpad(CASE WHEN closing THEN coalesce(exemption_code, '') ELSE '' END, 6) || lpad(structure_type, 1, '0')
FROM rows ORDER BY prescription_id, rn
"""


# The floor of PostgreSQL's own work: the same expressions on the service rows only (no row 99,
# no GROUP BY, no sort). Not a valid Flusso C; printed to show what the full baseline costs.
_PLAIN_ROWS = _ROWS.split("closing AS (")[0] + """rows AS (
    SELECT false AS closing, row_number AS rn, prescription_id, region, ente, structure_sts11, prescriber_code,
           patient_surname, patient_name, patient_cf, patient_sex, patient_birth_date, patient_residence_istat,
           patient_residence_asl, prescription_number, delivery_date, catalogue_coding, catalogue_code, quantity,
           0::numeric AS ticket, quantity * tariff AS total, NULL AS delivery_type, discipline, NULL AS priority,
           exemption_code, structure_type
    FROM s)
"""
PLAIN_C1 = _PLAIN_ROWS + BASELINE_C1[len(_ROWS):].replace("ORDER BY prescription_id, rn", "")
PLAIN_C2 = _PLAIN_ROWS + BASELINE_C2[len(_ROWS):].replace("ORDER BY prescription_id, rn", "")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


async def plain_copy(dsn: str, snapshot_id: int, out: Path) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        for kind, sql in (("C1", PLAIN_C1), ("C2", PLAIN_C2)):
            await conn.copy_from_query(sql.format(sid=int(snapshot_id)), output=str(out / f"plain-{kind}.txt"))
        return time.perf_counter() - started
    finally:
        await conn.close()


async def baseline(dsn: str, snapshot_id: int, out: Path) -> dict[str, object]:
    conn = await asyncpg.connect(dsn)
    try:
        # the UNION + ORDER BY must sort in memory, or the baseline measures disk spills, not formatting
        await conn.execute("SET work_mem = '1GB'")
        started = time.perf_counter()
        for kind, sql in (("C1", BASELINE_C1), ("C2", BASELINE_C2)):
            await conn.copy_from_query(sql.format(sid=int(snapshot_id)), output=str(out / f"{kind}.txt"))
        seconds = time.perf_counter() - started
    finally:
        await conn.close()
    records = sum(1 for _ in (out / "C1.txt").open("rb"))
    return {"seconds": seconds, "records": records,
            "sha256": {k: sha256_of(out / f"{k}.txt") for k in ("C1", "C2")}}


async def child(dsn: str, snapshot_id: int, root: Path) -> None:
    """The measured writer, alone in its process: prints one JSON line."""
    layout = load_layout("FLUSSO_C", "2020")
    store = FileStore(root)
    # the formatter service compiles (or loads from numba's disk cache) its kernels once, at start
    started = time.perf_counter()
    warm_up()
    warm = time.perf_counter() - started
    conn = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        with store.writer() as c1, store.writer() as c2:
            stats = await write_flusso_c(conn, snapshot_id, layout, c1, c2)  # type: ignore[arg-type]
        seconds = time.perf_counter() - started
    finally:
        await conn.close()
    print(json.dumps({"seconds": seconds, "warm_up": warm, "records": stats.records,
                      "prescriptions": stats.prescriptions,
                      "errors": stats.error_count, "warnings": stats.warning_count, "chunks": stats.chunks,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "sha256": {"C1": c1.sha256, "C2": c2.sha256}}))


def run_writer(dsn: str, snapshot_id: int, root: Path) -> dict[str, object]:
    cmd = [sys.executable, __file__, "--child", "--dsn", dsn, "--snapshot", str(snapshot_id), "--root", str(root)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"writer subprocess failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


async def main(args: argparse.Namespace) -> None:
    db = f"bench_format_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.dsn)
    await admin.execute(f"CREATE DATABASE {db}")
    dsn = args.dsn.rsplit("/", 1)[0] + f"/{db}"
    sizes = [args.services] + ([args.also] if args.also else [])
    results = []
    try:
        conn = await asyncpg.connect(dsn)
        await create_tables(conn)
        for snapshot_id, n in enumerate(sizes, start=1):
            started = time.perf_counter()
            inserted = await generate_services(conn, snapshot_id, n)
            elapsed = time.perf_counter() - started
            print(f"generated {inserted:,} services for snapshot {snapshot_id} in {elapsed:.1f} s")
        await conn.execute("VACUUM ANALYZE snapshot_service")
        await conn.close()
        for snapshot_id, n in enumerate(sizes, start=1):
            with tempfile.TemporaryDirectory() as tmp:
                base = await baseline(dsn, snapshot_id, Path(tmp))
                plain = await plain_copy(dsn, snapshot_id, Path(tmp))
                mine = run_writer(dsn, snapshot_id, Path(tmp) / "store")
            results.append((n, base, mine))
            same = base["sha256"] == mine["sha256"]
            rb, rw = int(base["records"]), int(mine["records"])  # type: ignore[call-overload]
            sb, sw = float(base["seconds"]), float(mine["seconds"])  # type: ignore[arg-type]
            print(f"\n{n:,} services -> {rw:,} records per file (C1 + C2), {mine['prescriptions']:,} prescriptions")
            print(f"  baseline COPY rpad/lpad : {sb:6.2f} s  {rb / sb:>10,.0f} records/s per file")
            print(f"  plain COPY, no row 99   : {plain:6.2f} s  (rows only, unsorted: PostgreSQL's floor, "
                  "not a valid file)")
            print(f"  columnar writer         : {sw:6.2f} s  {rw / sw:>10,.0f} records/s per file"
                  f"  peak RSS {mine['peak_rss_mb']:.0f} MB  ({mine['chunks']} chunks, {mine['errors']} errors)")
            print(f"  (kernels compiled or loaded from the disk cache before the clock, as the service does at "
                  f"start: {float(mine['warm_up']):.2f} s)")  # type: ignore[arg-type]
            # speed ratios: records/s of the writer over records/s of the baseline (> 1 = faster)
            print(f"  speed vs plain COPY     : {plain / sw:.2f}x")
            print(f"  speed vs baseline       : {sb / sw:.2f}x  "
                  f"(same bytes as the baseline: {'yes' if same else 'NO'})")
        if len(results) == 2:
            ratio = float(results[1][2]["peak_rss_mb"]) / float(results[0][2]["peak_rss_mb"])  # type: ignore[arg-type]
            print(f"\npeak RSS {sizes[1]:,} / {sizes[0]:,} services: {ratio:.2f}")
        print(f"\nload average during the run: {os.getloadavg()} on {os.cpu_count()} cores")
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1_000_000)
    parser.add_argument("--also", type=int, default=0, help="a second size, to compare peak RSS")
    parser.add_argument("--dsn", default=STACK_URL)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--snapshot", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        uvloop.run(child(args.dsn, args.snapshot, args.root))
    else:
        uvloop.run(main(args))
