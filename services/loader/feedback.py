"""The feedback of a load: one CSV line per problem, and a one-line human summary.

Format (`;`-separated, RFC 4180 quoting, LF line ends, UTF-8):

    record_key;field;code;severity;message
    CUP-201-202008-S7-0000012@201202008007000004/01;patient_cf;CF_CHECK_CHAR;error;il carattere di controllo ...

The columns, the codes, the fields and the severities (`error`, `warning`) are identifiers of the published
contract (contracts.feedback); the message is for the operators, in Italian.

A load may have millions of problems, so the file is streamed: from PostgreSQL with COPY straight
into the file store (`export_feedback`), or from Python problems (`feedback_chunks`) with the same
bytes, which the unit tests pin.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import asyncpg

from services.runtime.csvout import semicolon_csv
from services.runtime.filestore import FileStore

FEEDBACK_COLUMNS = ("record_key", "field", "code", "severity", "message")
FEEDBACK_MEDIA_TYPE = "text/csv"


@dataclass(frozen=True)
class RecordProblem:
    record_key: str  # names the record: '<source_id>@<prescription_id>/<row>' or '<source_id>'
    field: str
    code: str
    severity: str  # 'error' | 'warning'
    message: str


@dataclass(frozen=True)
class CodeCount:
    code: str
    severity: str
    problems: int


@dataclass(frozen=True)
class ProblemCounts:
    errors: int
    warnings: int
    error_records: int  # distinct records with at least one error
    by_code: tuple[CodeCount, ...]


@dataclass(frozen=True)
class FeedbackFile:
    sha256: str
    bytes: int


def feedback_chunks(problems: Iterable[RecordProblem], chunk_lines: int = 10_000) -> Iterator[bytes]:
    """The feedback file as byte chunks (header first), never holding more than one chunk."""
    return semicolon_csv(itertools.chain([FEEDBACK_COLUMNS], ((p.record_key, p.field, p.code, p.severity, p.message)
                                                              for p in problems)), chunk_lines)


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def summarise(counts: ProblemCounts) -> str:
    """The load's one line for the operators (the console's instance page), in Italian:
    '3 errori in 2 record: 2 x CF_CHECK_CHAR, 1 x UNKNOWN_SERVICE_CODE; 1 avviso: 1 x SURNAME_TOO_LONG'.
    The codes stay as they are: they are the identifiers the feedback file and the contract use."""
    def listing(severity: str) -> str:
        items = sorted((c for c in counts.by_code if c.severity == severity), key=lambda c: (-c.problems, c.code))
        return ", ".join(f"{c.problems} x {c.code}" for c in items)

    parts = []
    if counts.errors:
        parts.append(f"{_count(counts.errors, 'errore', 'errori')} in {counts.error_records} record: "
                     f"{listing('error')}")
    if counts.warnings:
        parts.append(f"{_count(counts.warnings, 'avviso', 'avvisi')}: {listing('warning')}")
    return "; ".join(parts) if parts else "nessun problema"


async def problem_counts(conn: asyncpg.Connection, snapshot_id: int, *, mark_checked: str | None = None,
                         ) -> ProblemCounts:
    """The snapshot's problems counted by code and severity, in one round trip (the records with an error ride on
    every row; no row: no problem, so no error record). With `mark_checked` (the load's counts as JSON) the same
    statement records the snapshot as checked, with how many problems its checks left (pipeline.mark_checked), and
    makes its transaction commit without waiting for the WAL flush (set_config(..., true): this transaction only;
    run outside a transaction block, the statement is its own transaction: one round trip instead of four)."""
    mark = ("WITH marked AS (UPDATE source_snapshot SET checked_counts = $2::jsonb, checked_problems = "
            "(SELECT count(*) FROM load_problem WHERE snapshot_id = $1) WHERE snapshot_id = $1 "
            "AND set_config('synchronous_commit', 'off', true) = 'off') "
            if mark_checked is not None else "")
    rows = await conn.fetch(f"{mark}SELECT code, severity, count(*) AS n, (SELECT count(DISTINCT record_key) "
                            "FROM load_problem WHERE snapshot_id = $1 AND severity = 'error') AS error_records "
                            "FROM load_problem WHERE snapshot_id = $1 GROUP BY code, severity", snapshot_id,
                            *(() if mark_checked is None else (mark_checked,)))
    error_records = rows[0]["error_records"] if rows else 0
    by_code = tuple(CodeCount(r["code"], r["severity"], int(r["n"])) for r in rows)
    return ProblemCounts(errors=sum(c.problems for c in by_code if c.severity == "error"),
                         warnings=sum(c.problems for c in by_code if c.severity == "warning"),
                         error_records=int(error_records), by_code=by_code)


async def export_feedback(conn: asyncpg.Connection, snapshot_id: int, store: FileStore) -> FeedbackFile:
    """Stream the snapshot's problems (sorted by record, then code) into the file store with COPY."""
    columns = ", ".join(FEEDBACK_COLUMNS)
    query = (f"SELECT {columns} FROM load_problem WHERE snapshot_id = $1 "
             f"ORDER BY record_key, code, field, message")
    with store.writer() as w:
        failed = False

        async def sink(chunk: bytes) -> None:
            nonlocal failed
            try:
                w.write(chunk)
            except BaseException:
                failed = True
                raise

        try:
            await conn.copy_from_query(query, snapshot_id, output=sink, format="csv", delimiter=";", header=True)
        except BaseException:
            if failed:
                # asyncpg answers a failing sink with a cancel request; when the server had already sent the
                # whole COPY, that cancel never completes and the connection's next use (even the pool's reset)
                # waits forever: found with a real full disk (tests/integration/test_full_disk.py). Closed here,
                # the pool opens a fresh one.
                conn.terminate()
            raise
    return FeedbackFile(sha256=w.sha256, bytes=w.size)
