"""The contract types refuse what their published schema refuses, naming the field."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from contracts import flows, schemagen
from contracts.sources import DeliveredService


def _refused_fields(model: Any, data: dict[str, Any]) -> set[str]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    return {".".join(str(p) for p in e["loc"]) for e in caught.value.errors()}


def _load(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"request_id": str(uuid.uuid4()), "flow_type": "FLUSSO_C", "ente": "201",
                            "period": {"start": "2026-10-01", "end": "2026-10-31"}, "requested_by": "op.rossi"}
    return {**data, **changes}


def test_a_command_from_outside_has_bounded_strings() -> None:
    assert flows.LoadRequested.model_validate(_load()).requested_by == "op.rossi"
    assert _refused_fields(flows.LoadRequested, _load(requested_by="x" * 100_000)) == {"requested_by"}
    assert _refused_fields(flows.LoadRequested, _load(requested_by="op\nrossi")) == {"requested_by"}
    schema = json.loads((schemagen.SCHEMA_DIR / "flows.load-requested.json").read_text())
    assert schema["properties"]["requested_by"]["maxLength"] == 100


SERVICE: dict[str, Any] = {
    "source_id": "S-1", "ente": "201", "structure_sts11": "001101", "patient_surname": "ROSSI",
    "patient_name": "MARIO", "patient_sex": "M", "patient_birth_date": "1980-01-01",
    "patient_residence_istat": "063049", "prescription_id": "RX-1", "prescription_number": "150A1",
    "catalogue_code": "89.7", "quantity": 1, "delivery_date": "2026-10-05", "tariff": "20.66"}


@pytest.mark.parametrize(("field", "value"), [
    ("tariff", 20.66), ("tariff", "20.666"), ("tariff", "-1.00"), ("tariff", "10000000.00"), ("tariff", "020.66"),
    ("ticket", "1e3"), ("quantity", "1"), ("quantity", True), ("quantity", 1.5), ("quantity", 1000),
    ("patient_birth_date", 315532800), ("patient_birth_date", "1980-02-30"), ("patient_birth_date", "1980-1-01"),
    ("pacc", "true"), ("pacc", 1), ("patient_surname", "R" * 61), ("patient_surname", ""),
    ("patient_name", "MA\x00RIO"), ("patient_cf", "rssmra80a01f839w"), ("ente", " 201"), ("schema_version", True),
])
def test_what_intake_refuses_names_the_field(field: str, value: Any) -> None:
    assert _refused_fields(DeliveredService, {**SERVICE, field: value}) == {field}


def test_what_intake_takes() -> None:
    record = DeliveredService.model_validate({**SERVICE, "ticket": "0", "quantity": 2.0, "patient_cf": None})
    assert (record.tariff, record.ticket, record.quantity) == (Decimal("20.66"), Decimal("0"), 2)
