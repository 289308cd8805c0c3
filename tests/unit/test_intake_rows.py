"""The rows intake stages for COPY (services.loader.intake.row_maker, and body_row_maker straight from a message
body): the columns in table order, and the JSON
columns as the very text intake has always written (it is part of the content hash that tells a duplicate from a
correction: another text would make every stored payment document look corrected when it comes again)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from contracts.envelope import Envelope
from contracts.sources import DeliveredService, PaymentDocument, SpendingItem
from contracts.topics import INTAKE_TOPICS, Topic
from services.loader.batch_intake import BatchIntake
from services.loader.intake import KINDS, body_row_maker, json_text, row_maker
from services.runtime.broker import Poison, parse, parse_valid
from simulators.cup import generator


def _documents() -> list[PaymentDocument]:
    return [r for r in generator.generate("204", "2020-08", 400, seed=5) if isinstance(r, PaymentDocument)]


def test_a_row_is_the_records_columns_in_table_order() -> None:
    for record in generator.generate("204", "2020-08", 50, seed=2):
        kind = generator.SOURCE_FILES[type(record)][0]
        spec = KINDS[kind]
        row = row_maker(kind)(record)
        assert len(row) == len(spec.columns)
        for column, value in zip(spec.columns, row, strict=True):
            expected = getattr(record, column)
            assert value == (json_text(expected) if column in spec.json_columns else expected), column


def test_the_items_text_is_the_text_intake_always_wrote_even_for_non_ascii_ids() -> None:
    odd = ["è", '"quoted"', "back\\slash", "\u2028", "😀", "a/b", "\u00a0", "日本", "~"]
    documents = _documents()
    assert documents, "the generator makes payment documents"
    base = documents[0]
    documents.append(base.model_copy(update={"items": [
        SpendingItem(spending_type="TK", amount=Decimal("12.50"), service_source_ids=odd),
        SpendingItem(spending_type="SR", flag_spending_type="2", amount=Decimal("0.01")),
        SpendingItem(spending_type="SP", amount=Decimal("99999.99"), service_source_ids=["S-1", "S-2"])]}))
    make = row_maker("payment-document")
    position = KINDS["payment-document"].columns.index("items")
    for document in documents:
        assert make(document)[position] == json_text(document.items)
    assert "\\u00e8" in make(documents[-1])[position], "non-ASCII written as escapes, as json.dumps does"


def test_the_row_of_a_body_is_the_row_of_its_model() -> None:
    """Batched intake makes the row straight from the body (`body_row_maker`, no model): the very row, value for
    value and type for type, that `row_maker` makes of the model the contract validates from the same bytes."""
    records = list(generator.generate("204", "2020-08", 300, seed=3))
    documents = _documents()
    records.append(documents[0].model_copy(update={"items": [
        SpendingItem(spending_type="TK", amount=Decimal("12.50"), service_source_ids=["è", '"q"', "😀", "\u2028"])]}))
    kinds = set()
    for record in records:
        kind = generator.SOURCE_FILES[type(record)][0]
        body = record.model_dump_json().encode()
        expected = row_maker(kind)(KINDS[kind].model.model_validate_json(body))
        got = body_row_maker(kind)(body)
        assert [(type(v), repr(v)) for v in got] == [(type(v), repr(v)) for v in expected], body
        kinds.add(kind)
    assert kinds == set(KINDS)


_SERVICE = next(r for r in generator.generate("204", "2020-08", 5, seed=4) if isinstance(r, DeliveredService))


def _service_body(**changes: Any) -> bytes:
    return json.dumps({**_SERVICE.model_dump(mode="json"), **changes}).encode()


def test_a_body_the_contract_refuses_is_refused_with_the_contracts_reason() -> None:
    """What the row maker refuses goes to the contract: the batch parser's verdict and reason are `parse`'s."""
    topic = next(t for t in INTAKE_TOPICS if t.payload is DeliveredService)
    decoder = BatchIntake.decoder(topic)
    bad = [_service_body(quantity=True), _service_body(extra="x"), _service_body(delivery_date="2020-02-30"),
           _service_body(tariff=20.5), _service_body(patient_surname=""), _service_body(schema_version=True),
           b"[]", b"{", _service_body(tariff="020.00")]
    for body in bad:
        with pytest.raises(ValidationError):
            body_row_maker("delivered-service")(body)
        raw = _record(topic, body)
        with pytest.raises(Poison) as caught:
            parse_valid(raw, topic, decoder)
        with pytest.raises(Poison) as by_parse:
            parse(raw, topic)
        assert caught.value.reason == by_parse.value.reason


def test_a_body_only_the_contract_takes_is_stored_as_its_models_row() -> None:
    """The row maker may refuse what the contract takes (1.0 for an integer, a byte-order mark): the parser
    then takes the contract's model and makes its row. A body both take gives the same row either way."""
    topic = next(t for t in INTAKE_TOPICS if t.payload is DeliveredService)
    decoder = BatchIntake.decoder(topic)
    make = row_maker("delivered-service")
    for body in (_service_body(quantity=2.0), "\ufeff".encode() + _service_body(), _service_body()):
        raw = _record(topic, body)
        key, envelope, _, model = parse(raw, topic)
        assert isinstance(model, DeliveredService)
        assert parse_valid(raw, topic, decoder) == (key, envelope, make(model))
    with pytest.raises(ValidationError):
        body_row_maker("delivered-service")(_service_body(quantity=2.0))


def _record(topic: Topic, body: bytes) -> ConsumerRecord:
    return ConsumerRecord(topic=topic.name, partition=0, offset=1, timestamp=0, timestamp_type=0, key=b"k",
                          value=body, checksum=None, serialized_key_size=1, serialized_value_size=len(body),
                          headers=Envelope.new(topic.name, "/t").to_headers())
