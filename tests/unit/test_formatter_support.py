"""Memorable snapshot rows for the formatter's unit tests (no database)."""

from __future__ import annotations

from datetime import date
from typing import Any

import pyarrow as pa


def service(prescription: str, row: int, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = dict(
        source_id=f"CUP-{prescription}-{row}", region="150", ente="201", structure_sts11="000123",
        structure_type="1", prescriber_code="DOC42", patient_surname="Esposito", patient_name="Gennaro",
        patient_cf="SPSGNR80A01F839X", patient_sex="M", patient_birth_date=date(1980, 1, 1),
        patient_residence_istat="063049", patient_residence_asl="201", row_number=row,
        prescription_id=prescription, prescription_number="1500A4000000001", prescription_date=date(2026, 10, 28),
        priority="B", exemption_code=None, delivery_type="S", access_type="1", catalogue_code="89.7",
        catalogue_coding="N", quantity=1, delivery_date=date(2026, 11, 3), booking_date=date(2026, 10, 30),
        first_offered_date=date(2026, 11, 2), discipline="008", tariff=20.66, ticket=0.0)
    values.update(overrides)
    return values


def table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows)
