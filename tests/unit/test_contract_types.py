"""The contract types refuse what their published schema refuses, naming the field."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Annotated, Any

import pytest
from pydantic import Field, TypeAdapter, ValidationError
from pydantic_core import SchemaValidator

from contracts import flows, jsontypes, schemagen
from contracts.sources import SOURCE_MODELS, Amount, DeliveredService


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


# What intake's fast path validates with (contracts.jsontypes.rust_only): every JSON value below given to the
# type and to its rust_only copy; the copy may refuse what the type takes (a caller then asks the type), never
# the reverse, and what both take is the same value.
_EDGES: dict[str, list[Any]] = {
    "date": ["1980-01-01", "2024-02-29", "2023-02-29", "1980-02-30", "1980-13-01", "1980-00-10", "1980-01-00",
             "0000-01-01", "0001-01-01", "9999-12-31", "1980-1-01", "1980-01-01\n", " 1980-01-01", "19800101",
             "1980-01-01T00:00:00", "1980-01-01Z", "١٩٨٠-٠١-٠١", 315532800, 1980.5, True, None, [], {}, ""],
    "money": ["0", "0.00", "0.01", "12.5", "12.50", "9999999.99", "10000000", "99999.99", "100000.00", "020.66",
              "-1.00", "+1", "1.234", "1e3", "NaN", "Infinity", " 1", "1 ", "1.", ".5", "1,5", "12.5\n", "١٢",
              20.66, 0, True, None, ""],
    "int": [0, 1, 2, 999, 1000, -1, 1.0, 2.0, 1.5, "1", True, False, None, 10**30, []],
}
_TYPES: list[tuple[Any, str]] = [
    (jsontypes.IsoDate, "date"), (jsontypes.IsoDate | None, "date"), (Amount, "money"),
    (Annotated[Decimal, jsontypes.Money(5, positive=True)], "money"), (jsontypes.SchemaVersion1, "int"),
    (Annotated[jsontypes.StrictInt, Field(ge=1, le=999)], "int"), (jsontypes.StrictInt, "int"),
]


@pytest.mark.parametrize(("annotation", "edges"), _TYPES)
def test_the_rust_only_copy_takes_nothing_the_type_refuses_and_gives_the_same_values(annotation: Any,
                                                                                     edges: str) -> None:
    adapter = TypeAdapter(annotation)
    fast = SchemaValidator(jsontypes.rust_only(adapter.core_schema))
    taken = 0
    for value in _EDGES[edges] + [None]:
        body = json.dumps(value, ensure_ascii=False).encode()
        try:
            got = fast.validate_json(body)
        except ValidationError:
            continue
        expected = adapter.validate_json(body)  # raises if the copy took what the type refuses
        assert (type(got), repr(got)) == (type(expected), repr(expected)), value
        taken += 1
    assert taken, "the copy takes the common values (else intake would never use it)"


def test_the_rust_only_copy_of_each_source_model_calls_no_python() -> None:
    def functions(schema: Any) -> list[Any]:
        if isinstance(schema, list):
            return [f for item in schema for f in functions(item)]
        if not isinstance(schema, dict):
            return []
        own = [schema["function"]] if str(schema.get("type", "")).startswith("function") else []
        return own + [f for k, v in schema.items() if k not in ("cls", "metadata", "function") for f in functions(v)]
    for model in SOURCE_MODELS.values():
        assert functions(model.__pydantic_core_schema__), "the contract has Python validators to replace"
        assert functions(jsontypes.rust_only(model.__pydantic_core_schema__)) == [], model.__name__
