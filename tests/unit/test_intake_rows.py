"""The rows intake stages for COPY (services.loader.intake.row_maker): the columns in table order, and the JSON
columns as the very text intake has always written (it is part of the content hash that tells a duplicate from a
correction: another text would make every stored payment document look corrected when it comes again)."""

from __future__ import annotations

from decimal import Decimal

from contracts.sources import PaymentDocument, SpendingItem
from services.loader.intake import KINDS, json_text, row_maker
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
