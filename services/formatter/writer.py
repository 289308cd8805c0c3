"""Snapshot rows in PostgreSQL -> fixed-width files, streamed in chunks on two cores.

How it is fast (design.md "Performance facts"):
- ONE `COPY (SELECT <the layout's columns> ... ORDER BY <group>, <row>) TO STDOUT` feeds every
  file of the layout (C1 and C2 together); PostgreSQL produces text on its own core.
- The stream is cut into chunks of whole lines, and for a grouped layout of whole groups: the
  group column comes first in the COPY, so a line's group is the text before its first tab (text
  COPY escapes tabs and newlines inside values), and a prescription never spans two chunks.
- Each chunk is parsed by pyarrow's CSV reader (columnar) and rendered column-wise (columnar.py)
  on one worker thread while the event loop receives the next chunk.
- Flusso C and C PACC (issue 14: at least 2x PostgreSQL's plain COPY of the rows) take the fast path
  (fastpath.py): compiled kernels render, without the GIL and two chunks at a time, every prescription
  the engine would accept straight from the COPY text; the worker thread then hands the others to the
  engine, in chunk order, and writes the sinks. The engine stays the definition of every byte and problem.

How memory stays flat (issue 3: peak RSS at 1M and 3M services within 10%):
- The queue between the COPY and the worker holds two chunks; the COPY reader awaits it, so
  PostgreSQL is throttled by TCP back-pressure (asyncpg pauses reading while the sink awaits).
- The received bytes are copied once into one of a few reused buffers; a chunk is a memoryview of it, cut,
  queued and parsed without another copy, and the buffer is reused once its chunks are written. The fast
  path's output matrices are reused the same way (fastpath.Plan.take / give_back), and the file store writes
  large files past the page cache: after the first chunks the writer touches no fresh memory (on this kind of
  VM a fresh page costs a host fault, which made the run's system time, and its wall time, vary by seconds).
- Every chunk is rendered on the SAME thread, so numpy's allocations reuse one malloc arena
  instead of spreading over the default executor's threads.
- Arrow allocates from jemalloc (unless ARROW_DEFAULT_MEMORY_POOL says otherwise), which returns
  freed chunk buffers instead of keeping them per thread as mimalloc does. With these and 4 MB
  chunks, bench/format.py's writer peaks at about 180 MB at 1M and at 3M services; before, it
  peaked at 370-400 MB and varied by 30 MB from run to run.

Text COPY escapes backslash and control characters; a chunk whose raw bytes are printable ASCII
only (no backslash) skips the per-value character checks, any other chunk gets them all.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import os
import re
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from services.formatter.chunks import ChunkFormatter
from services.formatter.columnar import FieldProblem, ProblemLog
from services.formatter.layouts import Layout

CHUNK_BYTES = 4 * 1024 * 1024
RENDERING = 2  # chunks rendered at once by the fast path's kernels (2 cores)
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
    errors: list[FieldProblem] = field(default_factory=list)
    warnings: list[FieldProblem] = field(default_factory=list)
    error_count: int = 0  # all of them; the lists keep the first ProblemLog.limit
    warning_count: int = 0
    chunks: int = 0
    peak_chunk_rows: int = 0


def check_identifiers(layout: Layout) -> None:
    names = [layout.source, *layout.columns(), *layout.order_by]
    bad = [n for n in names if not _IDENT.match(n)]
    if bad:
        raise ValueError(f"layout {layout.flow_type} {layout.version}: not plain SQL identifiers: {bad}")


async def source_pg_types(conn: Any, layout: Layout) -> dict[str, str]:
    """PostgreSQL data type of every column of the layout's source table."""
    check_identifiers(layout)
    rows = await conn.fetch(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = $1 AND table_schema = current_schema()", layout.source)
    return {r["column_name"]: r["data_type"] for r in rows}


async def source_types(conn: Any, layout: Layout, found: dict[str, str] | None = None) -> dict[str, pa.DataType]:
    if found is None:
        found = await source_pg_types(conn, layout)
    types: dict[str, pa.DataType] = {}
    for name in layout.columns():
        if name not in found:
            raise ValueError(f"layout {layout.flow_type} {layout.version}: "
                             f"table {layout.source} has no column {name!r}")
        if found[name] not in _PG_TO_ARROW:
            raise ValueError(f"table {layout.source} column {name!r}: type {found[name]} is not supported")
        types[name] = _PG_TO_ARROW[found[name]]
    return types


def copy_columns(layout: Layout) -> list[str]:
    """The COPY's columns: a grouped layout's group column first, so a line starts with its group."""
    names = list(layout.columns())
    if layout.grouping:
        names.remove(layout.grouping.by)
        names.insert(0, layout.grouping.by)
    return names


def copy_query(layout: Layout, snapshot_id: int) -> str:
    check_identifiers(layout)
    order = list(layout.order_by)
    if layout.grouping:  # the group must come first: a chunk is cut between groups
        order = [layout.grouping.by, layout.grouping.row_number]
    return (f"SELECT {', '.join(copy_columns(layout))} FROM {layout.source} "
            f"WHERE snapshot_id = {int(snapshot_id)} ORDER BY {', '.join(order)}")


def chunk_end(buf: bytes | bytearray, start: int, size: int, grouped: bool, stop: int | None = None) -> int:
    """Where the chunk of about `size` bytes that starts at `start` ends (exclusive).

    Always after a whole line. For a grouped layout (lines start with the group key and a tab,
    sorted by it) also after a whole group: before the first line of the last group that starts
    inside the window, which may continue past it. A group longer than the window ends the chunk
    where the group ends. 0: `buf` does not hold that end yet (wait for more data). `stop`: where the data
    in `buf` ends (a reused buffer is longer), len(buf) by default.
    """
    stop = len(buf) if stop is None else stop
    limit = min(start + size, stop)
    end = buf.rfind(b"\n", start, limit) + 1
    if end <= start:  # one line longer than the window
        end = buf.find(b"\n", limit, stop) + 1
        if end == 0:
            return 0
    if not grouped:
        return end
    last = _line_start(buf, start, end)  # the last whole line
    key = _key(buf, last, end)
    cut = last
    while cut > start:
        previous = _line_start(buf, start, cut)
        if not buf.startswith(key, previous):
            return cut  # the line before `cut` belongs to another group
        cut = previous
    # the whole window is one group: it ends at the first line with another key
    line = end
    while line < stop:
        if not buf.startswith(key, line, stop):
            return line
        next_end = buf.find(b"\n", line, stop) + 1
        if next_end == 0:
            return 0
        line = next_end
    return 0


def _line_start(buf: bytes | bytearray, start: int, end: int) -> int:
    """First byte of the line that ends just before `end` (after its newline), never before `start`."""
    return max(buf.rfind(b"\n", start, end - 1) + 1, start)


def _key(buf: bytes | bytearray, line: int, end: int) -> bytes | bytearray:
    """The group key of the line at `line` with the tab after it (the whole line when it has no tab)."""
    tab = buf.find(b"\t", line, end)
    return buf[line:tab + 1] if tab >= 0 else buf[line:end]


@functools.cache
def use_jemalloc_for_arrow() -> None:
    """Arrow's default pool becomes jemalloc, unless the operator chose one (see the docstring).
    Process configuration: done by the first format run of the process, not by every one."""
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return
    try:
        pool = pa.jemalloc_memory_pool()
    except NotImplementedError:  # a pyarrow built without jemalloc: keep its default
        return
    if pa.default_memory_pool().backend_name != pool.backend_name:
        pa.set_memory_pool(pool)


class ChunkPipeline:
    """Runs on the worker thread: a chunk of raw COPY text (whole groups) -> arrow table -> records -> sinks."""

    def __init__(self, layout: Layout, types: dict[str, pa.DataType], sinks: dict[str, BinaryIO],
                 eol: bytes, pg_types: dict[str, str] | None = None) -> None:
        """`pg_types` (the source's PostgreSQL types) enables the compiled fast path where the layout allows."""
        self.layout = layout
        self.names = copy_columns(layout)
        self.types = types
        self.sinks = sinks
        self.log = ProblemLog()
        self.formatter = ChunkFormatter(layout, self.log, eol)
        self.stats = FormatStats()
        self.plan: Any = None
        if pg_types is not None:
            from services.formatter import fastpath  # numba: imported by the processes that format only

            self.plan = fastpath.plan(layout, self.names, pg_types, eol)

    def _parse(self, data: memoryview | bytes | np.ndarray) -> pa.Table:
        return pacsv.read_csv(
            pa.py_buffer(data),
            # one thread: the worker already runs beside the event loop and PostgreSQL on two cores,
            # and Arrow's own threads would each keep freed memory
            read_options=pacsv.ReadOptions(column_names=self.names, block_size=1 << 22, use_threads=False),
            parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False, double_quote=False,
                                             escape_char=False, newlines_in_values=False),
            convert_options=pacsv.ConvertOptions(column_types=self.types, null_values=["\\N"],
                                                 strings_can_be_null=True, true_values=["t"],
                                                 false_values=["f"]))

    def _charset(self, raw: np.ndarray, rows: int) -> tuple[np.ndarray, bool]:
        """(rows holding a byte >= 0x80, no control character / DEL / backslash) of the raw chunk."""
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
        backslash = raw == 92
        backslashes = int(np.count_nonzero(backslash))
        nulls = int(np.count_nonzero(backslash[:-1] & (raw[1:] == 78))) if backslashes else 0
        controls = (backslashes != nulls or bool((raw == 0x7F).any())
                    or int(np.count_nonzero(raw < 32)) != rows * len(self.names))
        return non_ascii_rows, not controls

    def process(self, data: memoryview | bytes) -> None:
        self.emit(self.prepare(data))

    def prepare(self, data: memoryview | bytes) -> Any:
        """What may run on several threads at once: the kernels of the fast path (they share nothing and
        release the GIL). The result goes to `emit`, in chunk order."""
        if self.plan is None or not len(data):
            return data
        from services.formatter import fastpath

        raw = np.frombuffer(data, dtype=np.uint8)
        return raw, fastpath.format_chunk(self.plan, raw)

    def emit(self, prepared: Any) -> None:
        """One chunk after the other, on one thread: the engine (problems in chunk order), the sinks, the stats."""
        if isinstance(prepared, tuple):
            self._emit_fast(*prepared)
            return
        data = prepared
        if not len(data):
            return
        table = self._parse(data)
        rows = table.num_rows
        if rows == 0:
            return
        non_ascii_rows, no_controls = self._charset(np.frombuffer(data, dtype=np.uint8), rows)
        result = self.formatter.format(table, non_ascii_rows=non_ascii_rows, no_controls=no_controls)
        del table
        for kind, matrix in result.records.items():
            self.sinks[kind].write(matrix.tobytes() if not matrix.flags.c_contiguous else matrix.data.cast("B"))
        self.stats.records += next(iter(result.records.values())).shape[0]
        self.stats.prescriptions += result.groups
        self.stats.chunks += 1
        self.stats.peak_chunk_rows = max(self.stats.peak_chunk_rows, rows)

    def _emit_fast(self, raw: np.ndarray, done: Any) -> None:
        """The kernels rendered the clean groups, the engine renders the others (fastpath.py) into the same matrices."""
        n, g, dirty = done.rows, len(done.starts), done.dirty
        if len(dirty):
            firsts, ends = done.starts[dirty], np.append(done.starts[1:], n)[dirty]
            if len(dirty) == g:
                sub = raw
            else:
                bounds = zip(done.line[firsts].tolist(), done.line[ends].tolist(), strict=True)
                sub = np.concatenate([raw[a:b] for a, b in bounds])
            table = self._parse(sub)
            non_ascii_rows, no_controls = self._charset(sub, table.num_rows)
            result = self.formatter.format(table, non_ascii_rows=non_ascii_rows, no_controls=no_controls)
            del table
            sizes = ends - firsts + 1  # the group's rows and its row 99
            positions = np.repeat(firsts + dirty - np.cumsum(sizes) + sizes, sizes) + np.arange(int(sizes.sum()))
            for k, kind in enumerate(self.layout.kinds):
                matrix = result.records[kind]
                if matrix.shape[0] != len(positions) or result.groups != len(dirty):
                    raise RuntimeError(f"the engine made {matrix.shape[0]} {kind} records of {result.groups} groups "
                                       f"where the fast path expected {len(positions)} of {len(dirty)}")
                done.records[k][positions] = matrix
        for kind, out in zip(self.layout.kinds, done.records, strict=True):
            self.sinks[kind].write(out.data.cast("B"))
        self.plan.give_back(done.records)  # written (a sink's write consumes the bytes): the next chunks reuse them
        self.stats.records += n + g
        self.stats.prescriptions += g
        self.stats.chunks += 1
        self.stats.peak_chunk_rows = max(self.stats.peak_chunk_rows, n)

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
    use_jemalloc_for_arrow()
    pg_types = await source_pg_types(conn, layout)
    pipeline = ChunkPipeline(layout, await source_types(conn, layout, pg_types), sinks, eol, pg_types)
    grouped = layout.grouping is not None
    # a chunk and the buffer it lies in (None: its own bytes)
    queue: asyncio.Queue[tuple[memoryview | bytes, bytearray | None] | None] = asyncio.Queue(maxsize=2)
    loop = asyncio.get_running_loop()
    # the engine and the sinks on ONE thread (problems in order, one malloc arena); the fast path's kernels
    # render up to RENDERING chunks ahead on their own threads, so that both cores work
    worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="formatter-chunks")
    renderers = concurrent.futures.ThreadPoolExecutor(max_workers=RENDERING, thread_name_prefix="formatter-render")
    # The received bytes are gathered into a few buffers reused from chunk to chunk: a fresh 4 MB object per
    # chunk is memory the kernel must fault in and zero every time (on this kind of VM, ~0.3 s of the event
    # loop's time at 1 M services). A buffer is reused once every chunk cut from it is written.
    free: list[bytearray] = []
    chunks_in: dict[int, int] = {}  # id(buffer) -> its chunks not yet written

    def done_with(buffer: bytearray | None) -> None:
        if buffer is None:
            return
        chunks_in[id(buffer)] -= 1
        if not chunks_in[id(buffer)]:
            del chunks_in[id(buffer)]
            if len(free) < RENDERING + 4:
                free.append(buffer)

    async def consume() -> None:
        pending: collections.deque[tuple[asyncio.Future[Any], bytearray | None]] = collections.deque()
        finished = False
        while not finished:
            item = await queue.get()
            finished = item is None
            if item is not None:
                chunk, buffer = item
                pending.append((loop.run_in_executor(renderers, pipeline.prepare, chunk)
                                if pipeline.plan is not None else _done(loop, chunk), buffer))
                del chunk, item  # the next chunk is awaited without this one alive
            while pending and (finished or len(pending) >= RENDERING):
                future, buffer = pending.popleft()
                await loop.run_in_executor(worker, pipeline.emit, await future)
                done_with(buffer)

    received: list[bytes] = []
    size = 0

    async def receive(data: bytes) -> None:
        nonlocal size
        received.append(data)
        size += len(data)
        if size < chunk_bytes:
            return
        buffer = next((free.pop(i) for i, b in enumerate(free) if len(b) >= size), None)
        if buffer is None:
            buffer = bytearray(size + chunk_bytes // 2)
        at = 0
        for piece in received:
            buffer[at:at + len(piece)] = piece
            at += len(piece)
        cuts, start = [], 0
        while size - start >= chunk_bytes:
            end = chunk_end(buffer, start, chunk_bytes, grouped, stop=size)
            if end == 0:  # a group (or line) longer than a chunk that has not ended yet
                break
            cuts.append((start, end))
            start = end
        view = memoryview(buffer)
        received[:] = [bytes(view[start:size])]  # the rest goes to the next buffer
        size = len(received[0])
        if not cuts:
            free.append(buffer)
            return
        chunks_in[id(buffer)] = len(cuts)  # counted before the first is queued (and maybe written)
        for start, end in cuts:
            await queue.put((view[start:end], buffer))

    copied = False

    async def produce() -> None:
        nonlocal copied
        await conn.copy_from_query(copy_query(layout, snapshot_id), output=receive, format="text")
        copied = True
        await queue.put((b"".join(received), None))  # the rest: whole lines, whole groups
        received.clear()
        await queue.put(None)

    # Either side may fail (a sink raising, the server going away): the other must not wait forever.
    producer = asyncio.create_task(produce())
    tasks = {producer, asyncio.create_task(consume())}
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
        if not copied:
            # The COPY was abandoned (the worker or a sink failed, e.g. a full disk): asyncpg answers with a
            # cancel request, and when the server had already sent everything that cancel never completes and
            # the connection's next use (even a pool's reset) waits forever. Closed, it is never reused.
            conn.terminate()
        worker.shutdown(wait=False)  # a chunk still on the thread finishes by itself
        renderers.shutdown(wait=False)
    return pipeline.finish()


def _done(loop: asyncio.AbstractEventLoop, value: Any) -> asyncio.Future[Any]:
    future = loop.create_future()
    future.set_result(value)
    return future


async def write_flusso_c(conn_or_pool: Any, snapshot_id: int, layout: Layout, sink_c1: BinaryIO,
                         sink_c2: BinaryIO, *, eol: bytes = b"\n") -> FormatStats:
    """C1 + C2 of one snapshot (FLUSSO_C or FLUSSO_C_PACC layouts), same records, same order."""
    return await write_layout(conn_or_pool, snapshot_id, layout, {"C1": sink_c1, "C2": sink_c2}, eol=eol)
