"""Flusso C, MEF and ALPI TA from snapshot rows in a real PostgreSQL (our own database on the stack).

These tests FAIL when no server answers: start it with `flows stack up` (or deploy.localstack.up()).
"""

from __future__ import annotations

import asyncio
import errno
import io
import re
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from services.formatter.engine import run_format
from services.formatter.fixedwidth import iter_table
from services.formatter.layouts import load_layout
from services.formatter.writer import write_flusso_c, write_layout
from services.runtime.filestore import FileStore
from tests.fault_disk import small_disk
from tests.fixtures.sample_snapshot import create_tables, generate_services
from tests.stack_urls import DATABASE_URL

pytestmark = pytest.mark.integration

FLUSSO_C = load_layout("FLUSSO_C", "2020")
SNAPSHOT = 1948  # the seed's source instance of flow instance 1947


@pytest.fixture(scope="module")
async def pool() -> AsyncIterator[asyncpg.Pool]:
    name = f"test_formatter_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(DATABASE_URL)
    await admin.execute(f"CREATE DATABASE {name}")
    db_pool = await asyncpg.create_pool(DATABASE_URL.rsplit("/", 1)[0] + f"/{name}", min_size=1, max_size=4)
    try:
        async with db_pool.acquire() as conn:
            await create_tables(conn)
            await generate_services(conn, SNAPSHOT, 3000)
        yield db_pool
    finally:
        await db_pool.close()
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


async def c_files(pool: asyncpg.Pool, snapshot: int, **kw: object) -> tuple[bytes, bytes, object]:
    c1, c2 = io.BytesIO(), io.BytesIO()
    stats = await write_layout(pool, snapshot, FLUSSO_C, {"C1": c1, "C2": c2}, **kw)  # type: ignore[arg-type]
    return c1.getvalue(), c2.getvalue(), stats


async def test_c1_and_c2_have_fixed_length_lines_and_the_same_count(pool: asyncpg.Pool) -> None:
    c1, c2, stats = await c_files(pool, SNAPSHOT)
    c1_lines, c2_lines = c1.split(b"\n")[:-1], c2.split(b"\n")[:-1]
    assert {len(line) for line in c1_lines} == {150} and {len(line) for line in c2_lines} == {113}
    services = await pool.fetchval("SELECT count(*) FROM snapshot_service WHERE snapshot_id = $1", SNAPSHOT)
    prescriptions = await pool.fetchval(
        "SELECT count(DISTINCT prescription_id) FROM snapshot_service WHERE snapshot_id = $1", SNAPSHOT)
    assert len(c1_lines) == len(c2_lines) == stats.records == services + prescriptions  # type: ignore[attr-defined]
    assert stats.error_count == 0  # type: ignore[attr-defined]


async def test_every_prescription_ends_with_row_99_and_the_keys_join(pool: asyncpg.Pool) -> None:
    c1, c2, _ = await c_files(pool, SNAPSHOT)
    c1_rows = list(iter_table(FLUSSO_C, "C1", c1.splitlines()))
    c2_rows = list(iter_table(FLUSSO_C, "C2", c2.splitlines()))
    key1 = [(r["charging_region"], r["sending_asl"], r["id"], r["row_number"]) for r in c1_rows]
    key2 = [(r["charging_region"], r["sending_asl"], r["id"], r["row_number"]) for r in c2_rows]
    assert key1 == key2 and len(set(key1)) == len(key1)
    last: dict[str, int] = {}
    for _region, _asl, pid, row in key2:
        last[pid] = row
    assert set(last.values()) == {99}
    counts = Counter(pid for _, _, pid, _ in key2)
    assert min(counts.values()) >= 2


async def test_ticket_and_net_totals_match_the_snapshot_arithmetic(pool: asyncpg.Pool) -> None:
    _, c2, _ = await c_files(pool, SNAPSHOT)
    closing = {r["id"]: r for r in iter_table(FLUSSO_C, "C2", c2.splitlines()) if r["row_number"] == 99}
    expected = await pool.fetch(
        "SELECT prescription_id, sum(ticket) AS ticket, greatest(sum(quantity * tariff) - sum(ticket), 0) AS net "
        "FROM snapshot_service WHERE snapshot_id = $1 GROUP BY prescription_id", SNAPSHOT)
    assert len(expected) == len(closing)
    assert any(e["net"] == 0 for e in expected) and any(e["net"] > 0 for e in expected)
    for e in expected:
        assert (closing[e["prescription_id"]]["ticket"], closing[e["prescription_id"]]["total"]) == (
            e["ticket"], e["net"])
    rows = [r for r in iter_table(FLUSSO_C, "C2", c2.splitlines()) if r["row_number"] != 99]
    assert {r["ticket"] for r in rows} == {Decimal("0.00")}


async def test_the_writer_streams_in_chunks_and_never_splits_a_prescription(pool: asyncpg.Pool) -> None:
    whole_c1, whole_c2, whole = await c_files(pool, SNAPSHOT)
    c1, c2, streamed = await c_files(pool, SNAPSHOT, chunk_bytes=16 * 1024)
    assert (c1, c2) == (whole_c1, whole_c2)
    assert streamed.chunks >= 20  # type: ignore[attr-defined]
    assert streamed.peak_chunk_rows * 10 < streamed.records  # type: ignore[attr-defined]
    assert whole.chunks <= 2  # type: ignore[attr-defined]  # all but the tail group, then the tail


async def test_crlf_line_ends_are_configurable(pool: asyncpg.Pool) -> None:
    c1, _, stats = await c_files(pool, SNAPSHOT, eol=b"\r\n")
    assert c1.count(b"\r\n") == stats.records and len(c1) == 152 * stats.records  # type: ignore[attr-defined]


async def test_run_format_stores_both_files_under_their_names(pool: asyncpg.Pool, tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    outcome = await run_format(pool, store, 1947, SNAPSHOT, "FLUSSO_C", "2020")
    assert outcome.ok, outcome.reasons
    assert [f.name for f in outcome.files] == ["C1_150201_202611_1947.txt", "C2_150201_202611_1947.txt"]
    for f in outcome.files:
        assert store.path(f.sha256).stat().st_size == f.bytes
        assert f.records == outcome.stats.records  # type: ignore[union-attr]


async def test_run_format_fails_naming_the_record_and_the_field(pool: asyncpg.Pool, tmp_path: Path) -> None:
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO snapshot_service SELECT 7001, row_number, 'CUP-BAD', revision, schema_version, ente, region, "
            "structure_sts11, structure_type, patient_cf, patient_surname, patient_name, patient_sex, "
            "patient_birth_date, patient_residence_istat, patient_residence_asl, patient_objection, prescription_id, "
            "prescription_number, prescription_date, 'A-PRESCRIBER-CODE-TOO-LONG', priority, exemption_code, "
            "delivery_type, access_type, catalogue_code, catalogue_coding, quantity, delivery_date, booking_date, "
            "first_offered_date, discipline, tariff, ticket, pacc, pacc_start_date, regime "
            "FROM snapshot_service WHERE snapshot_id = $1 AND row_number = 1 LIMIT 1", SNAPSHOT)
    outcome = await run_format(pool, FileStore(tmp_path), 1950, 7001, "FLUSSO_C", "2020")
    assert not outcome.ok and outcome.files == []
    # the record, the field and the code as identifiers; the rest for the operators, in Italian
    assert re.fullmatch(r"source_id CUP-BAD \(prescription_id \S+ riga 01\): C1\.prescriber TOO_LONG: "
                        r"'A-PRESCRIBER-CODE-TOO-LONG' ha 26 caratteri, il campo ne contiene 16",
                        outcome.reasons[0]), outcome.reasons


async def test_an_unknown_layout_version_is_a_failed_outcome(pool: asyncpg.Pool, tmp_path: Path) -> None:
    outcome = await run_format(pool, FileStore(tmp_path), 1951, SNAPSHOT, "FLUSSO_C", "1999")
    assert not outcome.ok and outcome.reasons == [
        "il tracciato dei file FLUSSO C versione 1999 non è disponibile o non è leggibile: nessun file è stato "
        "prodotto; avvisi l'esercizio (il dettaglio è nel log del formattatore)"]


async def test_a_snapshot_without_rows_is_a_failed_outcome_that_says_so_in_italian(pool: asyncpg.Pool,
                                                                                   tmp_path: Path) -> None:
    outcome = await run_format(pool, FileStore(tmp_path), 1954, 987654, "FLUSSO_MEF", "2020")
    assert not outcome.ok and outcome.reasons == [
        "l'istanza fonte 987654 non contiene prestazioni: non c'è alcun file da produrre; verifichi il periodo "
        "caricato e i dati inviati dalle fonti"]


async def test_mef_file_has_one_record_per_service_and_a_record_99_per_prescription(pool: asyncpg.Pool,
                                                                                   tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    outcome = await run_format(pool, store, 1952, SNAPSHOT, "FLUSSO_MEF", "2020")
    assert outcome.ok, outcome.reasons
    (mef,) = outcome.files
    services, prescriptions = await pool.fetchrow(
        "SELECT count(*), count(DISTINCT prescription_id) FROM snapshot_service WHERE snapshot_id = $1", SNAPSHOT)
    assert prescriptions < services  # some prescriptions have several services
    assert mef.records == services + prescriptions and mef.name == "MEF_150201_202611_1952.txt"
    lines = store.path(mef.sha256).read_bytes().splitlines()
    rows = list(iter_table(load_layout("FLUSSO_MEF", "2020"), "MEF", lines))
    assert len(rows) == services + prescriptions
    details = [r for r in rows if r["row_number"] != 99]
    assert len(details) == services and all(r["booking_date"] is not None for r in details)
    # each prescription's rows, then its record 99, whose ticket is theirs
    closing_at = [i for i, r in enumerate(rows) if r["row_number"] == 99]
    assert len(closing_at) == prescriptions
    start = 0
    for at in closing_at:
        group, closing = rows[start:at], rows[at]
        assert group and {r["prescription_id"] for r in group} == {closing["prescription_id"]}
        assert [r["row_number"] for r in group] == list(range(1, len(group) + 1))
        assert closing["ticket"] == sum(r["ticket"] for r in group) and closing["booking_date"] is None
        start = at + 1
    assert start == len(rows)


async def test_alpi_ta_file_from_bookings(pool: asyncpg.Pool, tmp_path: Path) -> None:
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO snapshot_booking (snapshot_id, source_id, ente, structure_sts11, catalogue_code, booking_date,"
            " appointment_date, priority, index_week, revision, schema_version)"
            " SELECT 8001, 'ALPI-' || i, '201', '000123', '89.7',"
            " date '2026-04-01' + i % 5, date '2026-04-25' + i % 9, 'D', i % 2 = 0, 1, 1 FROM generate_series(1, 40) i")
    store = FileStore(tmp_path)
    outcome = await run_format(pool, store, 1953, 8001, "FLUSSO_ALPI_TA", "2020")
    assert outcome.ok, outcome.reasons
    (alpi,) = outcome.files
    # April's bookings, their appointments up to 3 May: the file is April's, the month the load selects by
    assert alpi.name == "ALPI_TA_201_202604_1953.txt" and alpi.records == 40
    assert store.path(alpi.sha256).read_bytes().count(b"\n") == 40


async def test_write_flusso_c_takes_two_sinks(pool: asyncpg.Pool) -> None:
    c1, c2 = io.BytesIO(), io.BytesIO()
    stats = await write_flusso_c(pool, SNAPSHOT, FLUSSO_C, c1, c2)
    assert c1.getvalue().count(b"\n") == c2.getvalue().count(b"\n") == stats.records
    assert stats.prescriptions == await pool.fetchval(
        "SELECT count(DISTINCT prescription_id) FROM snapshot_service WHERE snapshot_id = $1", SNAPSHOT)


async def test_accented_names_from_the_database_are_transliterated(pool: asyncpg.Pool) -> None:
    c1, _, _ = await c_files(pool, SNAPSHOT, chunk_bytes=32 * 1024)
    names = {r["name"] for r in iter_table(FLUSSO_C, "C1", c1.splitlines()) if r["id"] == "P000000000997"}
    assert names == {"NICOLO'"}


async def test_a_backslash_or_tab_in_the_database_is_an_error_naming_the_field(pool: asyncpg.Pool,
                                                                               tmp_path: Path) -> None:
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO snapshot_service (snapshot_id, row_number, source_id, ente, region, structure_sts11, "
            "structure_type, patient_surname, patient_name, patient_sex, patient_birth_date, patient_residence_istat, "
            "prescription_id, prescription_number, delivery_type, catalogue_code, catalogue_coding, quantity, "
            "delivery_date, tariff, ticket, revision, schema_version, patient_objection, pacc, regime) VALUES "
            "(7002, 1, 'CUP-SLASH', '201', '150', '000123', '1', E'ROS\\\\SI', E'AN\\tNA', 'F', '1970-01-01', "
            "'063049', 'RX-SLASH', '1500A4000000009', 'S', '89.7', 'N', 1, '2026-11-03', 20.66, 0, 1, 1, false, false, "
            "'SSN')")
    outcome = await run_format(pool, FileStore(tmp_path), 1954, 7002, "FLUSSO_C", "2020")
    assert not outcome.ok
    assert {r.split(": ")[1] for r in outcome.reasons} == {"C1.surname CHARSET", "C1.name CHARSET"}
    assert all(r.endswith("' contiene un carattere di controllo o una barra rovesciata") for r in outcome.reasons), \
        outcome.reasons


async def test_a_failing_sink_stops_the_writer_with_its_error_instead_of_hanging(pool: asyncpg.Pool,
                                                                                 tmp_path: Path) -> None:
    """The writer's own contract with ANY sink (a BinaryIO, not only the file store): one sink failing while the
    other takes everything stops the COPY and the worker with that error, and the pool stays usable (the
    abandoned COPY's connection is closed, a fresh one serves). The failure is a REAL full disk: C1's sink is a
    plain file on a 4 KB tmpfs (tests/fault_disk.py), which the kernel refuses with ENOSPC long before C1
    (thousands of 150-character records) is written; C2's takes everything. The real formatter and the file
    store on a tmpfs that fills up: tests/integration/test_full_disk.py (and test_filestore_full.py for the
    store's writer at each step). The waits only stop a hang."""
    with small_disk(tmp_path / "full", size_kb=4) as disk:
        full = (disk.path / "C1.txt").open("wb")
        try:
            with pytest.raises(OSError) as failed:
                await asyncio.wait_for(write_layout(pool, SNAPSHOT, FLUSSO_C, {"C1": full, "C2": io.BytesIO()},
                                                    chunk_bytes=16 * 1024), timeout=60)
            assert failed.value.errno == errno.ENOSPC, failed.value
        finally:
            disk.grow(4 * 1024)  # the space freed: what the file still buffers is written as it closes
            full.close()
    assert await pool.fetchval("SELECT 1") == 1  # the pool is still usable
    async with pool.acquire() as conn:  # ... every connection of it: none waits on the abandoned COPY
        assert await asyncio.wait_for(conn.fetchval("SELECT 2"), timeout=10) == 2
