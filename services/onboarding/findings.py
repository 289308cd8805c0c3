"""A finding: one reason a document is not compliant, located by sheet, row, column and cell.

The message is Italian (the desk and the structures read it); `where()` is the contract's
`problem_where`, so a finding reads the same before and after it is recorded as a `Problem`.
"""

from __future__ import annotations

from dataclasses import dataclass

from contracts.onboarding import problem_where


@dataclass(frozen=True)
class Finding:
    message: str
    sheet: str | None = None
    row: int | None = None  # spreadsheet row number, the header being row 1
    column: str | None = None
    cell: str | None = None  # A1 reference, e.g. "E4"

    def where(self) -> str:
        return problem_where(self.message, self.sheet, self.row, self.column, self.cell)
