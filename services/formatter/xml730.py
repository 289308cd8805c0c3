"""FLUSSO_730: payment documents of a snapshot -> zipped XML files for Sistema TS.

Shape of the output (domain.md §5; ws-asincrono-spec v2.5 §4.5 and §5):
- one submission per structure (codiceSSA): the proprietario block names region, ASL and
  structure, so an instance with several structures yields several series of files;
- each file is a zip holding exactly one XML valid on its own against 730_precompilata.xsd;
- a zip never exceeds `max_zip_bytes` (TS: 5 MB, error 108): when the next document could push
  the zip past it, the XML and the zip are closed and a new part begins;
- names follow `xml730_rules.part_file_name` (e.g. `730_150201_000123_2026S2_1947_p1.zip`); parts
  are numbered 1..N across the instance, whatever the structure: the part the TS gateway sends.

Memory stays flat however many documents there are: rows come from a server-side cursor in
batches, each document is serialised by lxml's incremental writer straight into a raw-deflate
stream on disk, and validation re-reads each part with lxml's streaming schema validation.
The budget check is an upper bound (bytes already compressed + the deflate worst case of what
is pending), made exact with a sync flush only when the bound gets near the limit.

A document that breaks a rule is never written and never crashes the run: every problem is
collected with its source id and field (the first 1,000 kept, all counted), and the run ends in
`Xml730Rejected` with them (the handler turns that into FormatFailed). No file is stored unless
the whole instance is good, because a 730 missing documents would silently under-report a
citizen's expenses.

Where the parts are built: in a work folder under the file store's own `tmp/` (`work-730-<instance>-...`), on
the disk the files go to, as the fixed-width files are; before, the process's temporary folder, a disk nobody
sized for zips of up to 5 MB each (in a container, its ephemeral storage). A full disk at any step (building a
part, or storing it) is StoreFull naming the store: the formatter keeps the instance Formatting in progress and
waits for space (services.formatter.handlers). The work folder goes with the attempt, its open part closed first
so its space is given back at once; a folder a killed process left is swept like the store's temporary files.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Protocol

from lxml import etree

from contracts.deadlines import ITALY
from contracts.ts730 import MAX_ZIP_BYTES, cf_proprietario_room, schema_path
from services.formatter.xml730_rules import (
    MAX_CIPHERTEXT,
    DocumentProblem,
    Owner,
    ProblemList,
    SpendingDocument,
    Xml730Rejected,
    document_element,
    document_from_row,
    document_size_bound,
    owner_element,
    part_file_name,
    period_label,
    problems_of,
)
from services.runtime.filestore import WORK_PREFIX, StoreFull, is_full
from services.runtime.sanitel import ciphertext_length, encrypt_for_ts, load_certificate

TS_MAX_ZIP_BYTES = MAX_ZIP_BYTES
KIND = "730-zip"
MEDIA_TYPE = "application/zip"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
BATCH = 2000


class FileStoreLike(Protocol):
    def put_stream(self, chunks: Iterable[bytes]) -> tuple[str, int]: ...


class Xml730Invalid(Exception):
    """A produced file failed the official XSD: a defect of this formatter, not of the source."""


@dataclass
class PartFile:
    path: Path
    name: str
    part: int
    records: int
    bytes: int


# --- zip: one deflated entry, written as a stream -------------------------------------------------


class _ZipEntryStream:
    """A one-entry zip on a seekable file; sizes and CRC patched into the header on close.

    Written by hand (not zipfile) because splitting needs the compressed size *so far*, which
    needs control over the deflate flushes.
    """

    def __init__(self, path: Path, entry_name: str, when: datetime) -> None:
        self._file: IO[bytes] = path.open("wb")
        self._name = entry_name.encode("ascii")
        self._dos_time = (when.hour << 11) | (when.minute << 5) | (when.second // 2)
        self._dos_date = ((when.year - 1980) << 9) | (when.month << 5) | when.day
        self._deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
        self._crc = 0
        self.uncompressed = 0
        self.compressed = 0
        self.pending = 0  # uncompressed bytes fed since the last flush
        self._file.write(self._local_header())

    @property
    def overhead(self) -> int:
        return 30 + 46 + 22 + 2 * len(self._name)  # local header, central directory, end record

    def write(self, data: bytes) -> int:
        self._crc = zlib.crc32(data, self._crc)
        self.uncompressed += len(data)
        self.pending += len(data)
        self._emit(self._deflate.compress(data))
        return len(data)

    def sync_flush(self) -> None:
        self._emit(self._deflate.flush(zlib.Z_SYNC_FLUSH))
        self.pending = 0

    def projected_size(self, extra: int) -> int:
        """Upper bound of the final zip size if `extra` more uncompressed bytes were written."""
        n = self.pending + extra
        return self.compressed + n + (n >> 10) + 64 + self.overhead  # deflate worst case + final block

    def close(self) -> int:
        self._emit(self._deflate.flush(zlib.Z_FINISH))
        if self.uncompressed >= 0xFFFFFFFF:
            raise OverflowError("730 XML part larger than 4 GiB: zip64 is not supported")
        central_offset = self._file.tell()
        self._file.write(struct.pack(
            "<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, self._dos_time, self._dos_date, self._crc,
            self.compressed, self.uncompressed, len(self._name), 0, 0, 0, 0, 0, 0) + self._name)
        central_size = self._file.tell() - central_offset
        self._file.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, central_size, central_offset, 0))
        size = self._file.tell()
        self._file.seek(0)
        self._file.write(self._local_header())
        self._file.close()
        return size

    def _local_header(self) -> bytes:
        return struct.pack(
            "<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, self._dos_time, self._dos_date, self._crc,
            self.compressed, self.uncompressed, len(self._name), 0) + self._name

    def _emit(self, data: bytes) -> None:
        if data:
            self._file.write(data)
            self.compressed += len(data)


# --- parts ---------------------------------------------------------------------------------------


class _PartWriter:
    """One XML inside one zip, open until `close`."""

    TAIL = len(b"</precompilata>\n")

    def __init__(self, path: Path, name: str, part: int, owner: Owner, when: datetime) -> None:
        self.path, self.name, self.part = path, name, part
        self.records = 0
        self._zip = _ZipEntryStream(path, name.removesuffix(".zip") + ".xml", when)
        self._stack = ExitStack()
        self._xf = self._stack.enter_context(etree.xmlfile(self._zip, encoding="UTF-8"))
        self._xf.write_declaration()
        location = {f"{{{XSI}}}noNamespaceSchemaLocation": "730_precompilata.xsd"}
        self._stack.enter_context(self._xf.element("precompilata", location, nsmap={"xsi": XSI}))
        self._xf.write("\n", owner_element(owner), "\n")
        self._xf.flush()

    def fits(self, size_bound: int, limit: int) -> bool:
        if self._zip.projected_size(size_bound + self.TAIL) <= limit:
            return True
        if self._zip.pending:
            self._zip.sync_flush()  # trade a few bytes of compression for an exact count
            return self._zip.projected_size(size_bound + self.TAIL) <= limit
        return False

    def write(self, element: etree._Element) -> None:
        self._xf.write(element, "\n")
        self._xf.flush()
        self.records += 1

    def close(self) -> PartFile:
        self._stack.close()
        size = self._zip.close()
        return PartFile(self.path, self.name, self.part, self.records, size)

    def abort(self) -> None:
        """The part's file closed as it is (its bytes are discarded with the work folder)."""
        with contextlib.suppress(OSError):  # a full disk fails the flush of the buffered tail: closed all the same
            self._zip._file.close()


@dataclass
class SubmissionWriter:
    """Push documents of ONE structure in; get back validated zip parts (see module docstring)."""

    owner: Owner
    encrypt: Callable[[str], str]
    workdir: Path
    name_part: Callable[[int], str]
    schema: etree.XMLSchema
    max_zip_bytes: int = TS_MAX_ZIP_BYTES
    first_part: int = 1  # parts are numbered across the instance: the part the TS gateway sends
    # the zip entry's DOS time has no zone: Italy's, where the file is received and read (the host runs in UTC)
    when: datetime = field(default_factory=lambda: datetime.now(ITALY))
    problems: list[DocumentProblem] = field(default_factory=ProblemList)
    parts: list[PartFile] = field(default_factory=list)
    _current: _PartWriter | None = None

    def add_all(self, docs: Iterable[SpendingDocument]) -> None:
        for doc in docs:
            self.add(doc)

    def add(self, doc: SpendingDocument) -> None:
        found = problems_of(doc)
        if found:
            self.problems.extend(found)
            return
        bound = document_size_bound(doc)
        if self._current is not None and not self._current.fits(bound, self.max_zip_bytes):
            self._close_current()
        if self._current is None:
            self._current = self._open(self.first_part + len(self.parts))
            if not self._current.fits(bound, self.max_zip_bytes):
                raise ValueError(f"max_zip_bytes={self.max_zip_bytes} cannot hold even one document "
                                 f"(payment document {doc.source_id} needs up to {bound} bytes)")
        self._current.write(document_element(doc, self.encrypt))

    def finish(self) -> list[PartFile]:
        if self._current is not None:
            self._close_current()
        return self.parts

    def abort(self) -> None:
        """The open part's file closed (the writer is not used after this; `written` still counts it)."""
        if self._current is not None:
            self._current.abort()

    def written(self) -> int:
        """Bytes of zip written so far (closed parts and the open one)."""
        return sum(p.bytes for p in self.parts) + (self._current._zip.compressed if self._current else 0)

    def _open(self, part: int) -> _PartWriter:
        name = self.name_part(part)
        return _PartWriter(self.workdir / name, name, part, self.owner, self.when)

    def _close_current(self) -> None:
        assert self._current is not None
        part = self._current.close()
        if part.bytes > self.max_zip_bytes:  # the budget is an upper bound: this is a defect if it happens
            raise Xml730Invalid(f"{part.name}: {part.bytes} bytes exceed max_zip_bytes={self.max_zip_bytes}")
        if not self.problems:  # a rejected run stores nothing: validating it would be wasted work
            validated = validate_part(part.path, self.schema)
            if validated != part.records:
                raise Xml730Invalid(f"{part.name}: {validated} documents read back, {part.records} written")
        self._current = None
        self.parts.append(part)


def load_schema(version: str) -> etree.XMLSchema:
    return etree.XMLSchema(file=str(schema_path(version)))


def validate_part(path: Path, schema: etree.XMLSchema) -> int:
    """Stream the zip's single XML through the XSD; returns the number of documentoSpesa."""
    with zipfile.ZipFile(path) as zf:
        entries = zf.namelist()
        if len(entries) != 1:
            raise Xml730Invalid(f"{path.name}: holds {len(entries)} entries, a 730 zip holds exactly one XML")
        count = 0
        try:
            with zf.open(entries[0]) as xml:
                for _, el in etree.iterparse(xml, events=("end",), tag="documentoSpesa", schema=schema):
                    count += 1
                    _forget(el)
        except etree.XMLSyntaxError as exc:
            raise Xml730Invalid(f"{path.name}: fails the 730 XSD: {_locate_error(zf, entries[0], schema) or exc}") \
                from exc
    return count


def _locate_error(zf: zipfile.ZipFile, entry: str, schema: etree.XMLSchema) -> str | None:
    """Find the first invalid documentoSpesa by validating each one alone with the proprietario.

    Streaming validation reports the error but not reliably which document it is in; this slow
    path only runs after a failure, and still holds one document at a time.
    """
    owner: etree._Element | None = None
    number = 0
    try:
        with zf.open(entry) as xml:
            for _, el in etree.iterparse(xml, events=("end",), tag=("proprietario", "documentoSpesa")):
                if el.tag == "proprietario":
                    owner = copy.deepcopy(el)
                    continue
                number += 1
                alone = etree.Element("precompilata")
                if owner is not None:
                    alone.append(copy.deepcopy(owner))
                alone.append(copy.deepcopy(el))
                if not schema.validate(alone):
                    fiscal_id = "/".join(t.strip() for t in el.find("idSpesa").itertext() if t.strip()) \
                        if el.find("idSpesa") is not None else "missing"
                    reason = "; ".join(e.message for e in schema.error_log)  # type: ignore[attr-defined]
                    return f"document #{number} (idSpesa {fiscal_id}): {reason}"
                _forget(el)
    except etree.XMLSyntaxError as exc:
        return f"not well-formed XML: {exc}"
    return None


def _forget(el: etree._Element) -> None:
    el.clear()
    while el.getprevious() is not None:
        del el.getparent()[0]  # type: ignore[union-attr]


# --- the database side ---------------------------------------------------------------------------

_GROUPS_SQL = """
SELECT ente, structure_sts11, min(payment_date) AS first_payment, max(payment_date) AS last_payment
FROM snapshot_payment_document WHERE snapshot_id = $1
GROUP BY ente, structure_sts11 ORDER BY ente, structure_sts11"""

# TS identifies a document by (pIva, dataEmissione, dispositivo, numDocumento): a repeat is rejected.
_DUPLICATES_SQL = """
SELECT array_agg(source_id ORDER BY source_id) AS source_ids
FROM snapshot_payment_document WHERE snapshot_id = $1
GROUP BY issuer_vat, issue_date, device, document_number HAVING count(*) > 1"""

_ROWS_SQL = """
SELECT source_id, ente, structure_sts11, issuer_vat, issue_date, device, document_number, payment_date,
       traced_payment, document_kind, patient_cf, patient_objection, items
FROM snapshot_payment_document WHERE snapshot_id = $1 AND ente = $2 AND structure_sts11 = $3
ORDER BY issue_date, device, document_number, source_id"""


async def format_730(pool: Any, filestore: FileStoreLike, instance: int, snapshot_id: int, version: str, *,
                     certificate_path: Path, max_zip_bytes: int = TS_MAX_ZIP_BYTES, region: str = "150",
                     period: str | None = None, cf_proprietario: str | None = None,
                     workdir: Path | None = None) -> list[dict[str, Any]]:
    """Write the 730 zips of a snapshot into the file store; one dict per zip (a FileRef plus `part`).

    `period` labels the names (e.g. "2026S2"); by default it comes from the payment dates of
    each structure. `cf_proprietario` (mandatory unless the sender is the Region, spec v2.5 §5) is encrypted like
    the CFs when given; the pipeline does not give it: the operator types it at the send, and the TS gateway adds
    it to the file then (services.ts_gateway.operations.with_cf_proprietario), in the room that each zip without it
    leaves below `max_zip_bytes` (contracts.ts730.cf_proprietario_room).
    Raises Xml730Rejected (source problems), Xml730Invalid (formatter defect), SanitelError.
    """
    schema = await asyncio.to_thread(load_schema, version)
    cert = await asyncio.to_thread(load_certificate, certificate_path)
    if ciphertext_length(cert) > MAX_CIPHERTEXT:
        raise ValueError(f"SanitelCF certificate {certificate_path}: its key yields ciphertexts of "
                         f"{ciphertext_length(cert)} characters, the 730 schema allows {MAX_CIPHERTEXT}")
    cf_owner = encrypt_for_ts(cert, cf_proprietario) if cf_proprietario else None

    def encrypt(value: str) -> str:
        return encrypt_for_ts(cert, value)

    problems = ProblemList()
    writers: list[SubmissionWriter] = []
    store_root = getattr(filestore, "root", None)
    if workdir is None and store_root is not None:
        workdir = Path(store_root) / "tmp"
    try:
        if workdir is not None:
            workdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f"{WORK_PREFIX}730-{instance}-", dir=workdir) as tmp:
            try:
                return await _build_and_store(pool, filestore, instance, snapshot_id, schema, encrypt, cf_owner,
                                              region, period, max_zip_bytes, Path(tmp), problems, writers)
            finally:  # a failed attempt's open part is closed before its folder goes: its space comes back at once
                for writer in writers:
                    writer.abort()
    except OSError as exc:
        if store_root is None or not is_full(exc) or isinstance(exc, StoreFull):
            raise
        raise StoreFull(Path(store_root), sum(w.written() for w in writers), exc) from exc


async def _build_and_store(pool: Any, filestore: FileStoreLike, instance: int, snapshot_id: int,
                           schema: etree.XMLSchema, encrypt: Callable[[str], str], cf_owner: str | None, region: str,
                           period: str | None, max_zip_bytes: int, tmp: Path, problems: ProblemList,
                           writers: list[SubmissionWriter]) -> list[dict[str, Any]]:
    """The parts built in `tmp`, then (the whole instance good) stored; `writers` collects the writers made."""
    parts: list[PartFile] = []
    async with pool.acquire() as conn:
        for row in await conn.fetch(_DUPLICATES_SQL, snapshot_id):
            ids = list(row["source_ids"])
            problems.extend(
                DocumentProblem(sid, "document_number", "stesso idSpesa (pIva, data emissione, dispositivo, numero) di "
                        + ", ".join(i for i in ids if i != sid)) for sid in ids)
        for group in await conn.fetch(_GROUPS_SQL, snapshot_id):
            ente, sts11 = group["ente"], group["structure_sts11"]
            label = period or period_label(group["first_payment"], group["last_payment"])
            def name_part(n: int, e: str = ente, s: str = sts11, p: str = label) -> str:
                return part_file_name(region, e, s, p, instance, n)

            writer = SubmissionWriter(
                owner=Owner(region, ente, sts11, cf_owner), encrypt=encrypt, workdir=Path(tmp),
                name_part=name_part, schema=schema, first_part=len(parts) + 1,
                max_zip_bytes=max_zip_bytes - (cf_proprietario_room(max_zip_bytes) if cf_owner is None else 0))
            writer.problems = problems  # one list: once anything is wrong, later parts skip validation
            writers.append(writer)
            async with conn.transaction():  # a server-side cursor lives in a transaction
                cursor = await conn.cursor(_ROWS_SQL, snapshot_id, ente, sts11)
                await _pipeline(cursor, writer)
            parts.extend(await asyncio.to_thread(writer.finish))
    if problems:
        raise Xml730Rejected(problems)
    files = []
    for part in parts:
        sha256, size = await asyncio.to_thread(filestore.put_stream, _chunks(part.path))
        files.append({"name": part.name, "kind": KIND, "records": part.records, "bytes": size,
                      "sha256": sha256, "media_type": MEDIA_TYPE, "part": part.part})
    return files


async def _pipeline(cursor: Any, writer: SubmissionWriter) -> None:
    """Fetch batch n+1 while a worker thread writes batch n: the database and the XML overlap."""
    pending = asyncio.ensure_future(cursor.fetch(BATCH))
    try:
        while rows := await pending:
            pending = asyncio.ensure_future(cursor.fetch(BATCH))
            await asyncio.to_thread(writer.add_all, map(document_from_row, rows))
    finally:
        if not pending.done():
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)


def _chunks(path: Path, size: int = 1 << 16) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(size):
            yield chunk
