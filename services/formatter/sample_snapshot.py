"""Generated snapshot rows for the formatter's tests and benchmark, fast (SQL generate_series).

The tables are the real ones (services/runtime/migrations/0011_loader_snapshots.sql): one column per
field of `contracts.sources.DeliveredService`, plus `snapshot_id` and `row_number` (01..98 inside
the prescription; row 99 is never stored, the formatter derives it).
"""

from __future__ import annotations

from typing import Any

# N services in prescriptions of 1..4 services (2.5 on average), a realistic mix: a few accented
# names, exemptions on one prescription in five, two regional codes in ten, nulls where optional.
GENERATE_SERVICES_SQL = """
INSERT INTO snapshot_service (
    snapshot_id, row_number, source_id, ente, region, structure_sts11, structure_type,
    patient_cf, patient_surname, patient_name, patient_sex, patient_birth_date,
    patient_residence_istat, patient_residence_asl, prescription_id, prescription_number,
    prescription_date, prescriber_code, priority, exemption_code, delivery_type, access_type,
    catalogue_code, catalogue_coding, quantity, delivery_date, booking_date, first_offered_date,
    discipline, tariff, ticket, pacc, revision, schema_version, patient_objection, regime)
SELECT $1, r, 'CUP-' || p || '-' || r, '201', '150', lpad((p % 40)::text, 6, '0'), '1',
       'RSSMRA80A01F839W',
       (ARRAY['ROSSI','ESPOSITO','RUSSO','DE LUCA','D''ANGELO','CAPUTO','DI MARTINO','COPPOLA'])[1 + p % 8],
       CASE WHEN p % 997 = 0 THEN 'NICOLÒ'
            ELSE (ARRAY['MARIO','ANNA','GIUSEPPE','LUCIA','ANTONIO','MARIA'])[1 + p % 6] END,
       CASE WHEN p % 2 = 0 THEN 'M' ELSE 'F' END, date '1940-01-01' + (p % 25000),
       '063049', CASE WHEN p % 10 = 0 THEN NULL ELSE '201' END,
       'P' || lpad(p::text, 12, '0'), '1500A' || lpad(p::text, 10, '0'),
       date '2026-11-01' + (p % 28), CASE WHEN p % 3 = 0 THEN NULL ELSE 'DOC' || (p % 5000) END,
       (ARRAY['U','B','D','P'])[1 + p % 4], CASE WHEN p % 5 = 0 THEN 'E0' || (p % 4) END,
       'S', CASE WHEN p % 2 = 0 THEN '1' ELSE '2' END,
       (ARRAY['89.7','89.13','90.62.2','87.03','88.74.1','91.49.2','95.02','93.01.2'])[1 + (p + r) % 8],
       CASE WHEN (p + r) % 10 < 2 THEN 'c' ELSE 'N' END, 1 + (p + r) % 3,
       date '2026-11-01' + ((p + r) % 28), date '2026-10-01' + (p % 28), date '2026-10-15' + (p % 28),
       CASE WHEN r % 2 = 0 THEN '008' END,
       round((5 + ((p * 37 + r * 11) % 9000) / 100.0)::numeric, 2),
       CASE WHEN r = 1 AND p % 5 <> 0 THEN round((((p * 613) % 3616) / 100.0)::numeric, 2) ELSE 0 END,
       p % 50 = 0, 1, 1, false, 'SSN'
FROM generate_series($2::int, $3::int) AS p, generate_series(1, 1 + (p * 7) % 4) AS r
"""


async def create_tables(conn: Any) -> None:
    """The real schema: the loader's migrations own the snapshot tables the formatter reads."""
    from services.runtime.migrations import migrate

    await migrate(conn)


async def generate_services(conn: Any, snapshot_id: int, services: int, batch_prescriptions: int = 200_000) -> int:
    """Inserts about `services` services (whole prescriptions); returns the number inserted."""
    first = 1
    while True:
        done = await conn.fetchval("SELECT count(*) FROM snapshot_service WHERE snapshot_id = $1", snapshot_id)
        if done >= services:
            return int(done)
        remaining = services - done
        last = first + min(batch_prescriptions, max(remaining * 2 // 5, 1)) - 1
        await conn.execute(GENERATE_SERVICES_SQL, snapshot_id, first, last)
        first = last + 1
