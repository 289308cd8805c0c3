"""Row-99 arithmetic of Flusso C, for one prescription and for whole columns of prescriptions.

All amounts are integer euro cents: no binary floating point reaches a total.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def row_total_cents(quantity: int, tariff_cents: int) -> int:
    # row totals: quantity x tariff (mobility agreement 2012, C2 "importo totale")
    return quantity * tariff_cents


def net_total_cents(row_totals_cents: Iterable[int], ticket_cents: int) -> int:
    # row 99 total = sum of row totals - ticket, floor 0: mobility agreement 2012 p.40
    return max(sum(row_totals_cents) - ticket_cents, 0)


def net_totals_cents(sums_cents: np.ndarray, tickets_cents: np.ndarray) -> np.ndarray:
    """Column form of `net_total_cents`: one value per prescription."""
    return np.maximum(sums_cents - tickets_cents, 0)


def ticket_position(exemption_code: str | None) -> str:
    # 01 exempt, 02 not exempt (C2 positions 50-51)
    return "01" if exemption_code and exemption_code.strip() else "02"
