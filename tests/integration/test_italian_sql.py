"""contracts.italian's SQL twins write on a real PostgreSQL what its Python functions write: the loader's check
messages (PostgreSQL) and the console's pages (Python) show an amount or a day the same way."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import asyncpg
import pytest

from contracts.italian import italian_amount, italian_amount_sql, italian_date, italian_date_sql

pytestmark = pytest.mark.integration

AMOUNTS = ["0", "0.5", "11.62", "-1", "-1.00", "1234.5", "99999.99", "902516.58", "1000000", "-1234567.89",
           "36.155", "0.004", "123456789012.34"]
DAYS = [date(2024, 3, 1), date(2020, 8, 5), date(1980, 12, 31), date(2099, 1, 9)]


async def test_amounts_written_by_postgresql_equal_the_python_ones(conn: asyncpg.Connection) -> None:
    written = await conn.fetch(f"SELECT {italian_amount_sql('v')} AS text FROM unnest($1::numeric[]) AS v",
                               [Decimal(a) for a in AMOUNTS])
    assert dict(zip(AMOUNTS, [r["text"] for r in written], strict=True)) == {a: italian_amount(a) for a in AMOUNTS}
    assert italian_amount("1234.5") == "1.234,50 €" and italian_amount("-1") == "-1,00 €"
    assert await conn.fetchval(f"SELECT {italian_amount_sql('NULL::numeric')}") is None


async def test_days_written_by_postgresql_equal_the_python_ones(conn: asyncpg.Connection) -> None:
    written = await conn.fetch(f"SELECT {italian_date_sql('d')} AS text FROM unnest($1::date[]) AS d", DAYS)
    assert [r["text"] for r in written] == [italian_date(d) for d in DAYS]
    assert italian_date(date(2024, 3, 1)) == "01/03/2024"
