"""The platform's CSV as it writes it (the load's feedback, the esiti exports): `;`-separated, quoted only where
a field needs it, `\\n` line ends, UTF-8, produced in chunks so that a file of millions of lines is never held."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Sequence


def semicolon_csv(rows: Iterable[Sequence[object]], chunk_lines: int = 10_000) -> Iterator[bytes]:
    """`rows` (the header first, if any) as CSV bytes, a chunk every `chunk_lines` rows and one at the end."""
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=";", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    pending = 0
    for row in rows:
        writer.writerow(row)
        pending += 1
        if pending >= chunk_lines:
            yield buf.getvalue().encode("utf-8")
            buf.seek(0)
            buf.truncate()
            pending = 0
    yield buf.getvalue().encode("utf-8")
