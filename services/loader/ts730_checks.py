"""The 730 file's own rules, asked at load: a payment document the formatter would refuse fails the load instead.

The formatter refuses a payment document that breaks a rule of the 730 file (services.formatter.xml730_rules: what
the TS specification and 730_precompilata.xsd demand: a partita IVA with its check digit, an invoice on dispositivo
1, a patient's codice fiscale present unless they objected, and a 16-character one as TS reads it, an issue date from
2014, flagTipoSpesa with its own tipoSpesa, ...) or that shares its idSpesa with another document of the snapshot
(services.formatter.xml730: TS would take one of them as a duplicate). It used to say so only once a Checked load was
formatted, at most 20 reasons in its summary: a load with 500 such documents took many rounds. The load now asks
the same rules, the formatter's own functions over the same rows, and writes one problem per broken rule into the
load's feedback, naming the record (its source_id) and the field:

- TS730_RULE: a rule of xml730_rules, its message prefixed with what the field is, in Italian ("partita IVA
  dell'emittente: la cifra di controllo della partita IVA è errata"); a voce's field is `items`, its message names
  the voce ("voce 2: ...");
- DUPLICATE_DOCUMENT: the document's idSpesa (pIva, dataEmissione, dispositivo, numDocumento) is another's of the
  snapshot, named;
- TS730_NO_VAT (a warning): a voce paid from 2021 on whose tipoSpesa has no naturaIVA the formatter can give
  (xml730_rules.VAT_NATURE: the exempt health services TK, SR, SP). TS wants aliquotaIVA or naturaIVA on every
  voce of such a document and refuses it without; the source contract carries no VAT, so the source cannot put
  it right: the operator is told the document will come back refused, and the load is not failed for it.

The formatter keeps its own checks, and the XSD on every file it writes: the last word stays the file's.
"""

from __future__ import annotations

import asyncio
import re
from datetime import date

import asyncpg

from contracts.italian import italian_date
from services.formatter.xml730_rules import (
    VAT_NATURE,
    DocumentProblem,
    SpendingDocument,
    document_from_row,
    problems_of,
)

ERROR, WARNING = "error", "warning"
RULE_CODE = "TS730_RULE"
DUPLICATE_CODE = "DUPLICATE_DOCUMENT"
NO_VAT_CODE = "TS730_NO_VAT"
# aliquotaIVA or naturaIVA on every voceSpesa of a document paid from this day (ws-asincrono-spec-v2.5, 2020-12
# layout: the expenses of 2021 on)
VAT_REQUIRED_FROM = date(2021, 1, 1)
BATCH = 10_000  # documents read, checked and their problems copied at once: memory bounded by this, not the load

# The fields xml730_rules names, and what each is, in Italian, at the head of the message. A voce's fields
# (`items[2].amount`) are the feedback's `items`.
FIELD_LABELS = {
    "ente": "codice dell'ente (codiceAsl)",
    "structure_sts11": "codice della struttura (codiceSSA)",
    "issuer_vat": "partita IVA dell'emittente",
    "issue_date": "data di emissione",
    "payment_date": "data di pagamento",
    "device": "dispositivo",
    "document_number": "numero del documento",
    "document_kind": "tipo di documento",
    "patient_cf": "codice fiscale del paziente",
    "items": "voci di spesa",
}
_ITEM = re.compile(r"items\[(\d+)\]\.\w+")

_ROWS = """
SELECT source_id, ente, structure_sts11, issuer_vat, issue_date, device, document_number, payment_date,
       traced_payment, document_kind, patient_cf, patient_objection, items
FROM snapshot_payment_document WHERE snapshot_id = $1"""

# idSpesa repeated in the snapshot: every document of a group, with the others' source_ids (a group is a handful)
_DUPLICATES = """
SELECT d.source_id, d.issuer_vat, d.issue_date, d.device, d.document_number,
       array_agg(o.source_id ORDER BY o.source_id) AS others
FROM snapshot_payment_document d
JOIN snapshot_payment_document o ON o.snapshot_id = d.snapshot_id AND o.issuer_vat = d.issuer_vat
     AND o.issue_date = d.issue_date AND o.device = d.device AND o.document_number = d.document_number
     AND o.source_id <> d.source_id
WHERE d.snapshot_id = $1
GROUP BY d.source_id, d.issuer_vat, d.issue_date, d.device, d.document_number"""

_COLUMNS = ["snapshot_id", "record_key", "field", "code", "severity", "message"]


def feedback_of(problem: DocumentProblem) -> tuple[str, str]:
    """(field, message) of one rule's problem as the feedback says it."""
    item = _ITEM.fullmatch(problem.field)
    if item is not None:
        return "items", f"voce {int(item.group(1)) + 1}: {problem.message}"
    if problem.field not in FIELD_LABELS:
        raise ValueError(f"xml730_rules names the field {problem.field!r}, which the load's feedback does not know")
    return problem.field, f"{FIELD_LABELS[problem.field]}: {problem.message}"


def duplicate_message(row: asyncpg.Record) -> str:
    others = ", ".join(row["others"])
    return (f"il documento ha lo stesso idSpesa (partita IVA {row['issuer_vat']}, emesso il "
            f"{italian_date(row['issue_date'])}, dispositivo {row['device']}, numero {row['document_number']}) "
            f"{'del documento' if len(row['others']) == 1 else 'dei documenti'} {others}: Sistema TS li "
            "identifica così, e ne scarterebbe uno come già presente")


def without_vat(doc: SpendingDocument) -> list[tuple[str, str]]:
    """(field, message) of each voce TS will refuse the document for: paid from VAT_REQUIRED_FROM, a tipoSpesa
    without a naturaIVA (VAT_NATURE), and no rate in the source to write."""
    if doc.payment_date < VAT_REQUIRED_FROM:
        return []
    return [("items", f"voce {i + 1}: tipoSpesa {line.spending_type} senza aliquota né natura IVA (i dati di origine "
                      "non riportano l'IVA): Sistema TS scarterà il documento")
            for i, line in enumerate(doc.items) if line.spending_type not in VAT_NATURE]


def _problems(snapshot_id: int, rows: list[asyncpg.Record]) -> list[tuple[int, str, str, str, str, str]]:
    found: list[tuple[int, str, str, str, str, str]] = []
    for row in rows:
        doc = document_from_row(row)
        found += [(snapshot_id, p.source_id, p_field, RULE_CODE, ERROR, message)
                  for p in problems_of(doc) for p_field, message in [feedback_of(p)]]
        found += [(snapshot_id, doc.source_id, v_field, NO_VAT_CODE, WARNING, message)
                  for v_field, message in without_vat(doc)]
    return found


async def check_730_documents(conn: asyncpg.Connection, snapshot_id: int, batch: int = BATCH) -> int:
    """Every 730 rule over the snapshot's documents into load_problem; returns how many problems it put there."""
    found = 0
    async with conn.transaction():  # a server-side cursor lives in a transaction
        cursor = await conn.cursor(_ROWS, snapshot_id)
        while rows := await cursor.fetch(batch):
            # ~30 us of Python a document (its items' JSON the most): in a thread, so the loader's event loop keeps
            # serving its consumers' heartbeats and other loads' statements meanwhile
            problems = await asyncio.to_thread(_problems, snapshot_id, rows)
            if problems:
                await conn.copy_records_to_table("load_problem", columns=_COLUMNS, records=problems)
                found += len(problems)
        duplicates = [(snapshot_id, r["source_id"], "document_number", DUPLICATE_CODE, ERROR, duplicate_message(r))
                      for r in await conn.fetch(_DUPLICATES, snapshot_id)]
        if duplicates:
            await conn.copy_records_to_table("load_problem", columns=_COLUMNS, records=duplicates)
            found += len(duplicates)
    return found


def problem_kinds() -> set[tuple[str, bool, str]]:
    """(code, is it an error, field) of every problem this module can put in a feedback."""
    return ({(RULE_CODE, True, field) for field in FIELD_LABELS} | {(DUPLICATE_CODE, True, "document_number")}
            | {(NO_VAT_CODE, False, "items")})
