"""contracts.italian: numbers, amounts and days as Italian readers write them (the console's pages, the loader's
messages). The SQL twins are held to these on a real PostgreSQL in tests/integration/test_italian_sql.py."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from contracts.italian import italian_amount, italian_date, italian_number


@pytest.mark.parametrize(("n", "text"), [
    (0, "0"), (999, "999"), (1000, "1.000"), (597507, "597.507"), (1234567, "1.234.567"), (-1234, "-1.234"),
])
def test_a_whole_number_groups_its_thousands_with_a_dot(n: int, text: str) -> None:
    assert italian_number(n) == text


@pytest.mark.parametrize(("value", "text"), [
    ("0", "0,00 €"), ("999.99", "999,99 €"), ("1234.5", "1.234,50 €"), ("99999.99", "99.999,99 €"),
    ("-1", "-1,00 €"), (Decimal("11.62"), "11,62 €"), (1000, "1.000,00 €"),
])
def test_an_amount_has_two_decimals_after_a_comma_and_its_thousands_grouped(value: Decimal | int | str,
                                                                              text: str) -> None:
    assert italian_amount(value) == text


@pytest.mark.parametrize(("value", "text"), [
    ("0.125", "0,13 €"),  # half a cent up, even when the cent before is even (not banker's rounding)
    ("0.135", "0,14 €"),
    ("-0.125", "-0,13 €"),  # away from zero, as PostgreSQL's to_char
    ("0.1249", "0,12 €"),  # under half a cent: down
    ("0.004", "0,00 €"),
])
def test_half_a_cent_rounds_away_from_zero_as_postgresql_does(value: str, text: str) -> None:
    """The loader's messages are written by PostgreSQL's to_char, the console's by this function: the same amount
    must read the same in both, and to_char rounds half a cent away from zero."""
    assert italian_amount(value) == text


def test_a_day_is_written_day_month_year_with_leading_zeros() -> None:
    assert italian_date(date(2024, 3, 1)) == "01/03/2024"
    assert italian_date(date(1980, 12, 31)) == "31/12/1980"
