"""A finding: one reason a document is not compliant, located by sheet, row, column and cell."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Finding:
    message: str
    sheet: str | None = None
    row: int | None = None  # spreadsheet row number, the header being row 1
    column: str | None = None
    cell: str | None = None  # A1 reference, e.g. "E4"

    def where(self) -> str:
        parts = [p for p in (self.sheet, f"row {self.row}" if self.row else None, self.column) if p]
        cell = f" [{self.cell}]" if self.cell else ""
        return (" ".join(parts) + cell + ": " if parts else "") + self.message
