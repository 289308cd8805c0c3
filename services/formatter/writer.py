"""Snapshot rows in PostgreSQL -> fixed-width files, streamed in chunks on two cores.

How it is fast (design.md "Performance facts"):
- ONE `COPY (SELECT <the layout's columns> ... ORDER BY <group>, <row>) TO STDOUT` feeds every
  file of the layout (C1 and C2 together); PostgreSQL produces text on its own core.
- The stream is cut into chunks of whole lines, and then of whole groups (a prescription never
  spans two chunks: the tail group is carried into the next chunk).
- Each chunk is parsed by pyarrow's CSV reader (columnar, multi-threaded) and rendered
  column-wise (columnar.py); a worker thread formats chunk k while the event loop receives k+1.
- Memory is bounded by the chunk size and a queue of two chunks, not by the snapshot size: the
  COPY reader awaits the bounded queue, so PostgreSQL is throttled by TCP back-pressure.

Text COPY escapes backslash and control characters; a chunk whose raw bytes are printable ASCII
only (no backslash) skips the per-value character checks, any other chunk gets them all.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from services.formatter.chunks import ChunkFormatter, group_starts
from services.formatter.columnar import Problem, ProblemLog
from services.formatter.layouts import Layout

CHUNK_BYTES = 8 * 1024 * 1024
_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")
_PG_TO_ARROW = {
    "text": pa.string(), "character varying": pa.string(), "character": pa.string(),
    "smallint": pa.int64(), "integer": pa.int64(), "bigint": pa.int64(),
    "numeric": pa.float64(), "double precision": pa.float64(), "real": pa.float64(),
    "date": pa.date32(), "boolean": pa.bool_(),
}


@dataclass
class FormatStats:
    records: int = 0  # per file: every file of a layout has the same number of records
    prescriptions: int = 0  # groups closed by a row 99 (0 for layouts without grouping)
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    error_count: int = 0  # all of them; the lists keep the first ProblemLog.limit
    warning_count: int = 0
    chunks: int = 0
    peak_chunk_rows: int = 0


def check_identifiers(layout: Layout) -> None:
    names = [layout.source, *layout.columns(), *layout.order_by]
    bad = [n for n in names if not _IDENT.match(n)]
    if bad:
        raise ValueError(f"layout {layout.flow_type} {layout.version}: not plain SQL identifiers: {bad}")


async def source_types(conn: Any, layout: Layout) -> dict[str, pa.DataType]:
    check_identifiers(layout)
    rows = await conn.fetch(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = $1 AND table_schema = current_schema()", layout.source)
    found = {r["column_name"]: r["data_type"] for r in rows}
    types: dict[str, pa.DataType] = {}
    for name in layout.columns():
        if name not in found:
            raise ValueError(f"layout {layout.flow_type} {layout.version}: "
                             f"table {layout.source} has no column {name!r}")
        if found[name] not in _PG_TO_ARROW:
            raise ValueError(f"table {layout.source} column {name!r}: type {found[name]} is not supported")
        types[name] = _PG_TO_ARROW[found[name]]
    return types


def copy_query(layout: Layout, snapshot_id: int) -> str:
    check_identifiers(layout)
    order = list(layout.order_by)
    if layout.grouping:  # the group must come first: a chunk is cut between groups
        order = [layout.grouping.by, layout.grouping.row_number]
    return (f"SELECT {', '.join(layout.columns())} FROM {layout.source} "
            f"WHERE snapshot_id = {int(snapshot_id)} ORDER BY {', '.join(order)}")


class ChunkPipeline:
    """Runs in a worker thread: raw COPY text -> arrow table -> records -> sinks."""

    def __init__(self, layout: Layout, types: dict[str, pa.DataType], sinks: dict[str, BinaryIO],
                 eol: bytes) -> None:
        self.layout = layout
        self.names = list(layout.columns())
        self.types = types
        self.sinks = sinks
        self.log = ProblemLog()
        self.formatter = ChunkFormatter(layout, self.log, eol)
        self.stats = FormatStats()
        self.carry = b""

    def _parse(self, data: bytes) -> pa.Table:
        return pacsv.read_csv(
            pa.py_buffer(data),
            read_options=pacsv.ReadOptions(column_names=self.names, block_size=1 << 22),
            parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False, double_quote=False,
                                             escape_char=False, newlines_in_values=False),
            convert_options=pacsv.ConvertOptions(column_types=self.types, null_values=["\\N"],
                                                 strings_can_be_null=True, true_values=["t"],
                                                 false_values=["f"]))

    def _charset(self, data: bytes, rows: int) -> tuple[np.ndarray, bool]:
        """(rows holding a byte >= 0x80, no control character / DEL / backslash) of the raw chunk."""
        raw = np.frombuffer(data, dtype=np.uint8)
        if len(raw) == 0:
            return np.zeros(0, dtype=np.int64), True
        high = np.flatnonzero(raw >= 0x80)
        non_ascii_rows = np.zeros(0, dtype=np.int64)
        if len(high):
            line_ends = np.flatnonzero(raw == 10)
            non_ascii_rows = np.unique(np.searchsorted(line_ends, high))
        # Text COPY writes NULL as \N and escapes a real backslash as \\: so the chunk is free of
        # backslashes in values when every backslash starts a \N. Every line has len(names)-1 tabs
        # and one newline: any other byte below 32 is a control character.
        controls = (data.count(b"\\") != data.count(b"\\N") or data.find(b"\x7f") >= 0
                    or int(np.count_nonzero(raw < 32)) != rows * len(self.names))
        return non_ascii_rows, not controls

    def process(self, chunk: bytes, final: bool) -> None:
        data = self.carry + chunk if self.carry else chunk
        self.carry = b""
        if not data:
            return
        table = self._parse(data)
        n = table.num_rows
        keep = n
        if self.layout.grouping is not None and not final and n:
            # the last group may continue in the next chunk: carry its lines over
            starts = group_starts(table.column(self.layout.grouping.by).combine_chunks())
            keep = int(starts[-1])
            cut = len(data)
            for _ in range(n - keep):  # back to the start of the group's first line
                cut = data.rfind(b"\n", 0, cut - 1) + 1
            self.carry = data[cut:]
            data = data[:cut]
            table = table.slice(0, keep)
        if keep == 0:
            return
        non_ascii_rows, no_controls = self._charset(data, keep)
        result = self.formatter.format(table, non_ascii_rows=non_ascii_rows, no_controls=no_controls)
        for kind, matrix in result.records.items():
            self.sinks[kind].write(matrix.tobytes() if not matrix.flags.c_contiguous else matrix.data.cast("B"))
        self.stats.records += next(iter(result.records.values())).shape[0]
        self.stats.prescriptions += result.groups
        self.stats.chunks += 1
        self.stats.peak_chunk_rows = max(self.stats.peak_chunk_rows, keep)

    def finish(self) -> FormatStats:
        self.stats.errors, self.stats.warnings = self.log.errors, self.log.warnings
        self.stats.error_count, self.stats.warning_count = self.log.error_count, self.log.warning_count
        return self.stats


async def write_layout(conn_or_pool: Any, snapshot_id: int, layout: Layout, sinks: dict[str, BinaryIO], *,
                       eol: bytes = b"\n", chunk_bytes: int = CHUNK_BYTES) -> FormatStats:
    """Writes every record kind of `layout` for one snapshot to `sinks[kind]`."""
    missing = set(layout.kinds) - set(sinks)
    if missing:
        raise ValueError(f"no sink for record kinds {sorted(missing)}")
    if hasattr(conn_or_pool, "acquire"):
        async with conn_or_pool.acquire() as conn:
            return await _write(conn, snapshot_id, layout, sinks, eol, chunk_bytes)
    return await _write(conn_or_pool, snapshot_id, layout, sinks, eol, chunk_bytes)


async def _write(conn: Any, snapshot_id: int, layout: Layout, sinks: dict[str, BinaryIO], eol: bytes,
                 chunk_bytes: int) -> FormatStats:
    pipeline = ChunkPipeline(layout, await source_types(conn, layout), sinks, eol)
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=2)

    async def consume() -> None:
        while (chunk := await queue.get()) is not None:
            await asyncio.to_thread(pipeline.process, chunk, False)
        await asyncio.to_thread(pipeline.process, b"", True)

    received: list[bytes] = []
    size = 0

    async def receive(data: bytes) -> None:
        nonlocal size
        received.append(data)
        size += len(data)
        if size < chunk_bytes:
            return
        joined, start = b"".join(received), 0
        while len(joined) - start >= chunk_bytes:  # whole lines, about chunk_bytes each
            cut = joined.rfind(b"\n", start, start + chunk_bytes) + 1
            if cut <= start:  # one line longer than a chunk
                cut = joined.find(b"\n", start + chunk_bytes) + 1
                if cut == 0:
                    break
            await queue.put(joined[start:cut])
            start = cut
        received[:] = [joined[start:]]
        size = len(received[0])

    async def produce() -> None:
        await conn.copy_from_query(copy_query(layout, snapshot_id), output=receive, format="text")
        await queue.put(b"".join(received))
        await queue.put(None)

    # Either side may fail (a sink raising, the server going away): the other must not wait forever.
    tasks = {asyncio.create_task(produce()), asyncio.create_task(consume())}
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return pipeline.finish()


async def write_flusso_c(conn_or_pool: Any, snapshot_id: int, layout: Layout, sink_c1: BinaryIO,
                         sink_c2: BinaryIO, *, eol: bytes = b"\n") -> FormatStats:
    """C1 + C2 of one snapshot (FLUSSO_C or FLUSSO_C_PACC layouts), same records, same order."""
    return await write_layout(conn_or_pool, snapshot_id, layout, {"C1": sink_c1, "C2": sink_c2}, eol=eol)
