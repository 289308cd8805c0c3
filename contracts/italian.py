"""Numbers, amounts and dates as the platform's Italian readers write them: 597.507, 1.234,50 €, 01/03/2024.

Every text an operator reads goes through here: the console's pages (services/console/web.py's `numero` and
`giorno` filters) and the loader's check messages (the feedback), which PostgreSQL writes set-wise, so each form
has its SQL twin (`*_sql`, an expression over a column) that gives the same text; a test holds the two together
on a real server (tests/integration/test_italian_sql.py). Identifiers stay as they are: codes, field names,
record keys, catalogue codes with their dots (89.52) are not numbers to an operator.

`to_char` is given the pattern characters `,` and `.` (not the locale's G and D, which follow the server's
lc_numeric) and the two are swapped after: the same text on any server.
"""

from __future__ import annotations

from datetime import date
from decimal import ROUND_HALF_UP, Decimal

EURO = "€"
_SWAP = str.maketrans(",.", ".,")
# wide enough for any amount a source row can hold (contracts.jsontypes.Amount) times any quantity
_AMOUNT_PATTERN = "FM999,999,999,999,999,990.00"


def italian_number(n: int) -> str:
    """A whole number, thousands grouped by a dot: 597.507."""
    return f"{n:,}".replace(",", ".")


def italian_amount(value: Decimal | int | str) -> str:
    """An amount in euro, two decimals after a comma, thousands grouped by a dot: 1.234,50 € (half a cent rounds
    away from zero, as PostgreSQL's to_char does)."""
    cents = Decimal(value).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    return f"{cents:,.2f}".translate(_SWAP) + f" {EURO}"


def italian_date(day: date) -> str:
    """A day: 01/03/2024."""
    return f"{day:%d/%m/%Y}"


def italian_amount_sql(expression: str) -> str:
    """SQL: `expression` (numeric) as `italian_amount` writes it; NULL stays NULL."""
    return f"(translate(to_char({expression}, '{_AMOUNT_PATTERN}'), ',.', '.,') || ' {EURO}')"


def italian_date_sql(expression: str) -> str:
    """SQL: `expression` (date) as `italian_date` writes it; NULL stays NULL."""
    return f"to_char({expression}, 'DD/MM/YYYY')"
