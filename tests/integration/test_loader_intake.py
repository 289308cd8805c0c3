"""Source intake on PostgreSQL: idempotent by source_id, corrections bump the revision, CSV import."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from contracts.sources import DeliveredService
from services.loader.intake import import_csv, store_services
from services.loader.snapshot import take_snapshot
from simulators.cup.generator import generate, write_csv

pytestmark = pytest.mark.integration


def rossi(**changes: Any) -> DeliveredService:
    """Mario Rossi's ECG in a Naples district, August 2020."""
    values: dict[str, Any] = dict(
        source_id="CUP-204-ROSSI-01", ente="204", structure_sts11="004101", patient_cf="RSSMRA80A01F839W",
        patient_surname="ROSSI", patient_name="MARIO", patient_sex="M", patient_birth_date=date(1980, 1, 1),
        patient_residence_istat="063049", prescription_id="RX-ROSSI-1", prescription_number="150A000000000001",
        prescription_date=date(2020, 8, 1), priority="D", catalogue_code="89.52", quantity=1,
        delivery_date=date(2020, 8, 10), booking_date=date(2020, 8, 2), tariff=Decimal("11.62"),
        ticket=Decimal("11.62"))
    values.update(changes)
    return DeliveredService(**values)


async def test_the_same_record_twice_is_stored_once(conn: asyncpg.Connection) -> None:
    first = await store_services(conn, [rossi()])
    again = await store_services(conn, [rossi()])
    assert (first.stored, first.duplicates, first.corrected) == (1, 0, 0)
    assert (again.stored, again.duplicates, again.corrected) == (0, 1, 0)
    assert await conn.fetchval("SELECT revision FROM source_service WHERE source_id = 'CUP-204-ROSSI-01'") == 1


async def test_a_correction_replaces_the_row_and_bumps_the_revision(conn: asyncpg.Connection) -> None:
    await store_services(conn, [rossi()])
    corrected = await store_services(conn, [rossi(quantity=2)])
    assert (corrected.stored, corrected.duplicates, corrected.corrected) == (0, 0, 1)
    row = await conn.fetchrow("SELECT quantity, revision FROM source_service WHERE source_id = 'CUP-204-ROSSI-01'")
    assert (row["quantity"], row["revision"]) == (2, 2)


async def test_a_snapshot_taken_before_a_correction_keeps_the_old_values(conn: asyncpg.Connection) -> None:
    await store_services(conn, [rossi()])
    await conn.execute("INSERT INTO ente_structure VALUES ('204', '004101', 'DISTRETTO 24', '1')")
    await take_snapshot(conn, 1948, "FLUSSO_C", "204", date(2020, 8, 1), date(2020, 8, 31), instance=1947)
    await store_services(conn, [rossi(quantity=3)])
    row = await conn.fetchrow("SELECT quantity, revision FROM snapshot_service WHERE snapshot_id = 1948")
    assert (row["quantity"], row["revision"]) == (1, 1)


async def test_within_one_batch_the_later_record_wins(conn: asyncpg.Connection) -> None:
    result = await store_services(conn, [rossi(quantity=1), rossi(quantity=4)])
    assert (result.stored, result.duplicates) == (1, 1)
    assert await conn.fetchval("SELECT quantity FROM source_service") == 4


async def test_columns_are_native_types(conn: asyncpg.Connection) -> None:
    await store_services(conn, [rossi()])
    row = await conn.fetchrow("SELECT tariff, delivery_date, quantity, pacc FROM source_service")
    assert row["tariff"] == Decimal("11.62") and row["delivery_date"] == date(2020, 8, 10)
    assert row["quantity"] == 1 and row["pacc"] is False


async def test_a_generated_csv_imports_everything_and_twice_is_all_duplicates(conn: asyncpg.Connection,
                                                                              tmp_path: Path) -> None:
    paths = write_csv(tmp_path, generate("204", "2020-08", 1200, seed=9))
    lines = len(paths["delivered-service"].read_text().splitlines()) - 1
    first = await import_csv(conn, "delivered-service", paths["delivered-service"], chunk_size=500)
    assert first.rejections == [] and first.intake.stored == lines == 1200
    again = await import_csv(conn, "delivered-service", paths["delivered-service"], chunk_size=500)
    assert again.intake.duplicates == 1200 and again.intake.stored == 0
    docs = await import_csv(conn, "payment-document", paths["payment-document"])
    assert docs.rejections == [] and docs.intake.stored > 0
    items = await conn.fetchval("SELECT items FROM source_payment_document LIMIT 1")
    assert '"spending_type"' in items


async def test_bad_csv_rows_are_rejected_by_record_and_field_and_the_rest_is_stored(conn: asyncpg.Connection,
                                                                                     tmp_path: Path) -> None:
    paths = write_csv(tmp_path, generate("204", "2020-08", 300, seed=9))
    lines = paths["delivered-service"].read_text().splitlines()
    header = lines[0].split(";")
    sex = header.index("patient_sex")
    broken = lines[5].split(";")
    broken[sex] = "X"
    lines[5] = ";".join(broken)
    paths["delivered-service"].write_text("\n".join(lines) + "\n")
    result = await import_csv(conn, "delivered-service", paths["delivered-service"])
    assert [(r.record, r.field) for r in result.rejections] == [(broken[0], "patient_sex")]
    assert result.intake.stored == 299
