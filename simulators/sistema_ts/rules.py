"""What the Sistema TS simulator checks and answers, as plain functions (no HTTP).

Intake codes are the official ones (ws-asincrono-spec-v2.5 4.7). Processing outcomes (stato 2,
3, 5) and the per-document error codes are the simulator's: the real processing checks are not
published; SIM01/SIM02 codes and the WS3x call codes are marked as simulated.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any, cast

from lxml import etree

from contracts.ts730 import MAX_ZIP_BYTES
from services.runtime.sanitel import SanitelError, cf_shaped, decrypt_with_key
from services.ts_gateway.receipts import DocumentError
from services.ts_gateway.submission import is_valid_file_name
from simulators.sistema_ts.settings import SimulatorSettings

ALL_OPERATIONS = ("inviaFileMtom", "EsitoInvii", "DettaglioErrori", "RicevutaPdf")
FILE_XSD = "WS_AsincronoInvioDati730/schemaFileAllegatoInvio/730_precompilata.xsd"
INVIO_XSD = "WS_AsincronoInvioDati730/InvioTelematicoSpeseSanitarie730p_schema1.xsd"

INTAKE_CODES = {  # ws-asincrono-spec-v2.5 4.7
    "002": "PINCODE NON DECIFRABILE",
    "003": "UTENTE NON VALIDO O NON PRESENTE",
    "010": "IL CF PROPRIETARIO È DIVERSO DA QUELLO UTILIZZATO IN FASE DI AUTENTICAZIONE",
    "101": "IL CAMPO NOMEFILEALLEGATO DEVE ESSERE COMPRESO TRA 6 E 60 CARATTERI E TERMINARE IN .ZIP: "
    "IL FILE NON E' STATO ACCOLTO",
    "102": "L'ALLEGATO NON È UN FILE DI TIPO ZIP VALIDO: IL FILE NON È STATO ACCOLTO",
    "103": "L'ALLEGATO È VUOTO: IL FILE NON È STATO ACCOLTO",
    "104": "PINCODE ERRATO",
    "105": "INVIO PER CONTO IN ASSENZA DI DELEGA ATTIVA",
    "107": "UTENTE NON RICONOSCIUTO",
    "108": "LA DIMENSIONE DEL FILE ALLEGATO SUPERA LA SOGLIA CONSENTITA",
    "109": "DATI PROPRIETARIO FORMALMENTE ERRATI",
    "110": "IL CF PROPRIETARIO È DIVERSO DAL CF DELLA USER",
    "200": "ERRORE NELL'APPLICAZIONE: CONTATTARE L'ASSISTENZA",
}
STATO_DESCRIPTIONS = {
    1: "In corso di elaborazione",
    2: "File elaborato correttamente",
    3: "File elaborato con errori",
    5: "File scartato in fase di Elaborazione",
    9: "File scartato in fase di Accoglienza",
}


def reference_file(relative: str, roots: tuple[Path, ...] | None = None) -> Path:
    """The official schema: the copy in contracts/ts730 if present, else the reference folder of the
    settings (FLOWS_TS_SIM_REFERENCE_DIR, by default shared/reference/ts730 beside the checkout)."""
    if roots is None:
        roots = SimulatorSettings().reference_roots()
    for root in roots:
        for candidate in (root / relative, root / Path(relative).name):
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(f"TS reference file {relative} not found under {', '.join(map(str, roots))}")


@cache
def load_schema(path: Path) -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(path)))


def schema_errors(schema: etree.XMLSchema) -> list[str]:
    """'line N: message' of the last validation (lxml's error log is iterable; its stubs say otherwise)."""
    entries = cast(Iterable[Any], schema.error_log)
    return [f"riga {entry.line}: {entry.message}" for entry in entries]


# ---- credentials, hashed -----------------------------------------------------------------------


def _digest(value: str, salt: bytes) -> bytes:
    # Salted and slow enough that a memory dump does not show the value; few iterations because
    # every simulated call checks 3-4 of them and tests make hundreds of calls.
    return hashlib.pbkdf2_hmac("sha256", value.encode(), salt, 1_000)


@dataclass(frozen=True, repr=False)
class SimUser:
    """A TS account of the simulator: only salted hashes are kept, never the clear values."""

    salt: bytes
    user_hash: bytes
    password_hash: bytes
    pincode_hash: bytes
    cf_hash: bytes

    @classmethod
    def from_clear(cls, user: str, password: str, pincode: str, cf_proprietario: str) -> SimUser:
        salt = os.urandom(16)
        return cls(
            salt,
            _digest(user, salt),
            _digest(password, salt),
            _digest(pincode, salt),
            _digest(cf_proprietario.upper(), salt),
        )

    def __repr__(self) -> str:
        return "SimUser(***)"

    def is_user(self, user: str) -> bool:
        return hmac.compare_digest(self.user_hash, _digest(user, self.salt))

    def password_ok(self, password: str) -> bool:
        return hmac.compare_digest(self.password_hash, _digest(password, self.salt))

    def pincode_ok(self, pincode: str) -> bool:
        return hmac.compare_digest(self.pincode_hash, _digest(pincode, self.salt))

    def cf_ok(self, cf: str) -> bool:
        return hmac.compare_digest(self.cf_hash, _digest(cf.upper(), self.salt))


class IntakeRefusal(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code
        self.description = INTAKE_CODES.get(code, "ERRORE SIMULATO")


def check_pincode(user: SimUser, private_key_pem: bytes, pincode_cifrato: str) -> None:
    try:
        pincode = decrypt_with_key(private_key_pem, pincode_cifrato)
    except SanitelError as exc:
        raise IntakeRefusal("002") from exc
    if not user.pincode_ok(pincode):
        raise IntakeRefusal("104")


def check_proprietario(user: SimUser, private_key_pem: bytes, cf_cifrato: str | None) -> None:
    if not cf_cifrato:
        raise IntakeRefusal("109")
    try:
        cf = decrypt_with_key(private_key_pem, cf_cifrato, valid=cf_shaped)
    except SanitelError as exc:
        raise IntakeRefusal("109") from exc
    if not user.cf_ok(cf):
        raise IntakeRefusal("110")


def check_proprietario_matches_file(operation: etree._Element, xml: bytes, user: SimUser | None = None,
                                    private_key_pem: bytes | None = None) -> None:
    """datiProprietario must name the structure (region, ASL, SSA: mandatory in the structure case,
    ws-asincrono-spec-v2.5 par. 5) that the file's own proprietario block names: else 109. With `user` and the key,
    the file's own cfProprietario too (mandatory in the structure case unless the sender is the Region, which no
    account of the simulator is): missing or not decryptable 109, another C.F. than the user's 110, as the
    envelope's."""
    names = ("codiceRegione", "codiceAsl", "codiceSSA")
    envelope = [(operation.findtext(f"datiProprietario/{n}") or "").strip() for n in names]
    if not all(envelope):
        raise IntakeRefusal("109")
    try:
        root = etree.fromstring(xml, etree.XMLParser(resolve_entities=False, no_network=True))
    except etree.XMLSyntaxError:
        return  # processing rejects it (stato 5) with the parser's reason
    if [(root.findtext(f"proprietario/{n}") or "").strip() for n in names] != envelope:
        raise IntakeRefusal("109")
    if user is not None and private_key_pem is not None:
        check_proprietario(user, private_key_pem, (root.findtext("proprietario/cfProprietario") or "").strip())


def unzip_single_xml(file_name: str, document: bytes) -> bytes:
    """The one XML of the zip, or the intake refusal TS gives (101, 103, 108, 102)."""
    if not is_valid_file_name(file_name) or not 6 <= len(file_name) <= 60:
        raise IntakeRefusal("101")
    if not document:
        raise IntakeRefusal("103")
    if len(document) > MAX_ZIP_BYTES:
        raise IntakeRefusal("108")
    try:
        with zipfile.ZipFile(io.BytesIO(document)) as zipped:
            entries = [info for info in zipped.infolist() if not info.is_dir()]
            # one XML per zip (ws-asincrono-spec-v2.5 par. 5: "un file zip, contenente un Xml")
            if len(entries) != 1 or not entries[0].filename.lower().endswith(".xml"):
                raise IntakeRefusal("102")
            return zipped.read(entries[0])
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise IntakeRefusal("102") from exc


# ---- processing (what stato the file ends in) --------------------------------------------------


@dataclass
class Processing:
    documents: int
    stato: int
    errors: list[DocumentError] = field(default_factory=list)
    reason: str = ""


# aliquotaIVA or naturaIVA in every voceSpesa, for payments from this day (ws-asincrono-spec-v2.5, 2020-12: the
# expenses of 2021 on); the simulator reports a voce without either as a document error, as TS's checks would
VAT_REQUIRED_FROM = "2021-01-01"


def process_file(xml: bytes, private_key_pem: bytes, schema: etree.XMLSchema, error_documents: set[str]) -> Processing:
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    try:
        root = etree.fromstring(xml, parser)
    except etree.XMLSyntaxError as exc:
        return Processing(0, 5, reason=f"XML non ben formato: {exc}")
    documents = root.findall("documentoSpesa")
    if not schema.validate(root):
        log = schema_errors(schema)
        where = f" ({log[0]})" if log else ""
        return Processing(len(documents), 5, reason=f"XML non conforme allo schema 730_precompilata.xsd{where}")
    errors = []
    for document in documents:
        number = document.findtext("idSpesa/numDocumentoFiscale/numDocumento") or ""
        cf_cittadino = document.findtext("cfCittadino")
        if cf_cittadino is not None and not _decrypts(private_key_pem, cf_cittadino):
            errors.append(_error(document, "SIM01", "CF CITTADINO NON DECIFRABILE (simulato)"))
        elif number in error_documents:
            errors.append(_error(document, "SIM02", "DOCUMENTO SCARTATO (errore simulato)"))
        elif (document.findtext("dataPagamento") or "") >= VAT_REQUIRED_FROM and any(
                voce.find("aliquotaIVA") is None and voce.find("naturaIVA") is None
                for voce in document.findall("voceSpesa")):
            errors.append(_error(document, "SIM03", "VOCE DI SPESA SENZA ALIQUOTA IVA NE' NATURA IVA (simulato)"))
    return Processing(len(documents), 3 if errors else 2, errors)


def _decrypts(private_key_pem: bytes, value: str) -> bool:
    try:
        decrypt_with_key(private_key_pem, value, valid=cf_shaped)
    except SanitelError:
        return False
    return True


def _error(document: etree._Element, code: str, description: str) -> DocumentError:
    return DocumentError(
        codice_regione="",
        codice_asl="",
        codice_ssa="",
        partita_iva=document.findtext("idSpesa/pIva") or "",
        data_emissione=document.findtext("idSpesa/dataEmissione") or "",
        dispositivo=document.findtext("idSpesa/numDocumentoFiscale/dispositivo") or "",
        numero_documento=document.findtext("idSpesa/numDocumentoFiscale/numDocumento") or "",
        tipo_spesa=document.findtext("voceSpesa/tipoSpesa") or "",
        codice_errore=code,
        descrizione_errore=description,
    )


@dataclass
class Behaviour:
    reject_intake_code: str | None = None
    delay_s: float = 0.0
    fail_next: int = 0  # answer HTTP 500 to the next N calls of `operations`
    hang: bool = False  # never answer calls of `operations` (until the simulator stops)
    operations: list[str] = field(default_factory=lambda: list(ALL_OPERATIONS))
    polls_in_progress: int = 1  # EsitoInvii by protocollo answers stato 1 this many times
    final_stato: int | None = None  # force 2, 3, 5 or 9; None = what processing found
    error_documents: list[str] = field(default_factory=list)  # numDocumento values reported in error

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Behaviour:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"behaviour: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**data)


@dataclass
class Submission:
    protocollo: str
    file_name: str
    size: int
    zip_sha256: str
    received_at: datetime
    owner: str  # hash of the TS user: the simulator lists by user without keeping it in clear
    processing: Processing
    polls: int = 0

    def stato(self, polls_in_progress: int, forced: int | None) -> int:
        if self.polls <= polls_in_progress:
            return 1
        return forced if forced is not None else self.processing.stato

    def public(self) -> dict[str, Any]:
        return {
            "protocollo": self.protocollo,
            "file_name": self.file_name,
            "size": self.size,
            "zip_sha256": self.zip_sha256,
            "received_at": self.received_at.isoformat(),
            "documents": self.processing.documents,
            "stato": self.processing.stato,
            "polls": self.polls,
            "errors": len(self.processing.errors),
            "reason": self.processing.reason,
        }


def receipt_pdf(lines: list[str]) -> bytes:
    """A small, valid one-page PDF with the given lines (ASCII)."""
    text = (
        "BT /F1 11 Tf 50 780 Td 14 TL "
        + " ".join(
            "("
            + line.encode("ascii", "replace").decode().replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            + ") '"
            for line in lines
        )
        + " ET"
    )
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(text) + text.encode() + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)
