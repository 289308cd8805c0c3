"""The format entry point the Kafka handler calls: one snapshot -> the files of its flow type.

File naming rule: `<KIND>_<ENTITY>_<YYYYMM>_<INSTANCE>.txt`, e.g. `C1_150201_202611_1947.txt`:
KIND is the record kind of the layout (C1, C2, MEF, ALPI_TA); ENTITY is charging region + ente
(`150` + `201`) when the source has a region, else the ente; YYYYMM is the month of the latest
service (delivery date, or booking date for bookings: the day their loads select by) -- a prescription
spanning two periods belongs to the period of its last service (spec/flusso-c.md); INSTANCE is the instance
number.

Outcome: `ok` with the files (sha256 in the file store), or not ok with the reasons (the first
errors, each naming the record and the field, and how many there are in all). The reasons are what the
operators read (a Format failed on the console): Italian, around the identifiers (columns, fields, codes).
Files of a failed run may remain in the store (content-addressed, harmless) but are not reported.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from contracts.flows import FileRef
from services.formatter.layouts import LayoutError, LayoutRegistry
from services.formatter.writer import FormatStats, source_types, write_layout
from services.runtime.filestore import FileStore, FileWriter
from services.runtime.logging import get_logger

log = get_logger("formatter.engine")
# What a snapshot holds, as the operators name it, per layout source table
_RECORDS_OF = {"snapshot_service": "prestazioni", "snapshot_booking": "prenotazioni"}

MAX_REASONS = 20
NO_730 = "l'istanza fonte non contiene documenti di spesa: non c'è alcun 730 da produrre"
EOLS = {"LF": b"\n", "CRLF": b"\r\n"}


@dataclass
class FormatOutcome:
    ok: bool
    files: list[FileRef] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stats: FormatStats | None = None


def file_name(kind: str, entity: str, period: str, instance: int) -> str:
    return f"{kind}_{entity}_{period}_{instance}.txt"


async def name_parts(conn: Any, source: str, columns: set[str], snapshot_id: int) -> tuple[str, str]:
    entity = "region || ente" if "region" in columns else "ente"
    # the month of the latest day the flow's period selects by (loader.snapshot.SELECTIONS): the delivery of a
    # service, the booking of an ALPI TA booking (its appointment may fall months later: a file of April's bookings
    # is April's)
    latest = next((c for c in ("delivery_date", "booking_date") if c in columns), None)
    month = f"to_char(max({latest}), 'YYYYMM')" if latest else "NULL"
    row = await conn.fetchrow(f"SELECT min({entity}) AS entity, {month} AS period, count(*) AS n "
                              f"FROM {source} WHERE snapshot_id = $1", snapshot_id)
    return row["entity"] or "000", row["period"] or "000000"


def _problem_text(p: Any) -> str:
    return f"{p.record}: {p.field} {p.code}: {p.message}"


async def run_format(pool: Any, filestore: FileStore, instance: int, snapshot_id: int, flow_type: str,
                     version: str, *, layouts: LayoutRegistry | None = None, line_end: str = "LF",
                     options_730: dict[str, Any] | None = None) -> FormatOutcome:
    """`options_730` are passed to xml730.format_730 (e.g. certificate_path, the SanitelCF setting)."""
    if flow_type == "FLUSSO_730":
        from services.formatter import xml730  # another engineer's module: imported only when needed
        from services.formatter.xml730_rules import Xml730Rejected

        try:
            files = await xml730.format_730(pool, filestore, instance, snapshot_id, version, **(options_730 or {}))
        except Xml730Rejected as exc:
            reasons = [str(p) for p in exc.problems[:MAX_REASONS]]
            if exc.total > len(reasons):
                reasons.append(f"... {exc.total} problemi in tutto")
            return FormatOutcome(ok=False, reasons=reasons)
        if not files:
            return FormatOutcome(ok=False, reasons=[NO_730])
        return FormatOutcome(ok=True, files=[FileRef(**f) for f in files])
    try:
        layout = (layouts or LayoutRegistry()).get(flow_type, version)
    except LayoutError as exc:  # the data file's own English (which file, which key) is the operators': logged
        log.error("format.layout_unusable", instance=instance, flow_type=flow_type, version=version, error=str(exc))
        return FormatOutcome(ok=False, reasons=[
            f"il tracciato dei file {flow_type.replace('_', ' ')} versione {version} non è disponibile o non è "
            "leggibile: nessun file è stato prodotto; avvisi l'esercizio (il dettaglio è nel log del formattatore)"])

    acquire = pool.acquire() if hasattr(pool, "acquire") else contextlib.nullcontext(pool)
    async with acquire as conn:
        types = await source_types(conn, layout)
        entity, period = await name_parts(conn, layout.source, set(types), snapshot_id)
        with contextlib.ExitStack() as stack:
            writers: dict[str, FileWriter] = {kind: stack.enter_context(filestore.writer()) for kind in layout.kinds}
            stats = await write_layout(conn, snapshot_id, layout, dict(writers),  # type: ignore[arg-type]
                                       eol=EOLS[line_end])
    warnings = [_problem_text(p) for p in stats.warnings]
    if stats.error_count or stats.records == 0:
        reasons = [_problem_text(p) for p in stats.errors[:MAX_REASONS]]
        if stats.error_count > len(reasons):
            reasons.append(f"... {stats.error_count} errori in tutto")
        if stats.records == 0:
            reasons.append(f"l'istanza fonte {snapshot_id} non contiene {_RECORDS_OF.get(layout.source, 'record')}: "
                           "non c'è alcun file da produrre; verifichi il periodo caricato e i dati inviati dalle fonti")
        return FormatOutcome(ok=False, reasons=reasons, warnings=warnings, stats=stats)
    refs = [FileRef(name=file_name(kind, entity, period, instance), kind=kind, records=stats.records, bytes=w.size,
                     sha256=w.sha256, media_type="text/plain") for kind, w in writers.items()]
    return FormatOutcome(ok=True, files=refs, warnings=warnings, stats=stats)

