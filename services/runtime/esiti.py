"""The esiti (feedback files) of an instance: one list, and all of them as one CSV.

An instance can have several esiti: the load's feedback (`feedback_N.csv`, kind `feedback`, the checks' problems)
and Sistema TS's errors of each part of a 730 (`ts_errors_N_pK.csv`, kind `ts-errors`). The console's instance and
feedback pages, its feedback download, the API's and `flows feedback` all take them from `esiti`, in the same order
(by name: the load's first, then the parts in order), so none of them can show one set and export another: the
download kept only the first, `flows feedback --out` only the last (each file written over the one before).

`esiti_csv` is every line of every esito in one `;`-separated CSV, each once:
- one esito: its file, byte for byte (the load's feedback keeps its published contract, contracts.feedback);
- several: each esito in turn, its own header line and then its lines, every line led by a column `esito` that
  names its file as the pages name it (`feedback_1951.csv`, `ts_errors_1951_p2.csv`). Each esito keeps its own
  header because the load's columns (record_key;field;code;severity;message) are not Sistema TS's.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path

import asyncpg

from services.runtime.csvout import semicolon_csv

FEEDBACK_KINDS = ("feedback", "ts-errors")
ESITO_COLUMN = "esito"
_READ_BYTES = 1 << 20
_CHUNK_LINES = 10_000


async def esiti(pool: asyncpg.Pool | asyncpg.Connection, instance: int) -> list[asyncpg.Record]:
    """The instance's esiti (their instance_files rows), by name."""
    return await pool.fetch("SELECT * FROM instance_files WHERE instance = $1 AND kind = ANY($2::text[]) "
                            "ORDER BY name", instance, list(FEEDBACK_KINDS))


def esiti_csv_name(instance: int, names: Sequence[str]) -> str:
    """The file name of `esiti_csv`: the esito's own when there is one."""
    return names[0] if len(names) == 1 else f"esiti_{instance}.csv"


def esiti_csv(files: Sequence[tuple[str, Path]]) -> Iterator[bytes]:
    """Every esito of `files` ((name, path) in the order of `esiti`) as one CSV, in chunks (a load's feedback may
    have millions of lines: never held whole)."""
    if len(files) == 1:
        with files[0][1].open("rb") as src:
            while chunk := src.read(_READ_BYTES):
                yield chunk
        return
    def rows() -> Iterator[Sequence[str]]:
        for name, path in files:
            # newline="": a quoted message may hold a line break, which the csv reader keeps inside its field
            with path.open(encoding="utf-8", errors="replace", newline="") as src:
                for n, row in enumerate(csv.reader(src, delimiter=";")):
                    yield [ESITO_COLUMN if n == 0 else name, *row]
    yield from semicolon_csv(rows(), _CHUNK_LINES)
