"""The four Sistema TS operations as messages: request builders and response parsers (client side),
request parsers and response builders (simulator side). Pure: bytes in, values out.

Namespaces, element names and order follow the official WSDL/XSD in reference/ts730/
(WS_AsincronoInvioDati730, WS_Ricevute/{EsitoInvio,DettaglioErrori-CSV,RicevutoPDF}); the schemas
have no elementFormDefault, so every child element is unqualified.
"""

from __future__ import annotations

import base64
import io
import re
import shutil
import zipfile
import zlib
from dataclasses import dataclass
from datetime import date, datetime

from lxml import etree

from services.ts_gateway.soap import (
    SoapFault,
    SoapFormatError,
    body_payload,
    child_text,
    envelope,
    xop_include,
)

INVIO_NS = "http://ejb.invioTelematicoSS730p.sanita.finanze.it/"
ESITO_NS = "http://esitoinvio.p730.sanita.sogei.it/"
DETTAGLIO_NS = "http://dettaglioerrori.p730.sanita.sogei.it/"
PDF_NS = "http://ricevutapdf.p730.sanita.sogei.it/"

# Paths of the Basic-auth endpoints; test and production differ only in host
# (ws-asincrono-spec-v2.5 4.6.1; ricevute-spec-2015 2.7).
INVIO_PATH = "/InvioTelematicoSS730pMtomWeb/InvioTelematicoSS730pMtomPort"
ESITO_PATH = "/EsitoStatoInviiWEB/EsitoInvioDatiSpesa730Service"
DETTAGLIO_PATH = "/EsitoStatoInviiWEB/DettaglioErrori730Service"
PDF_PATH = "/Ricevute730ServiceWeb/ricevutePdf"

INTAKE_ACCEPTED = "000"  # codiceEsito of an accepted file (the spec's table 4.7 lists only errors)
TS_DATE = "%d-%m-%Y"
TS_DATETIME = "%d-%m-%Y %H:%M:%S"


def _q(namespace: str, name: str) -> etree.QName:
    return etree.QName(namespace, name)


def _sub(parent: etree._Element, name: str, text: str | None) -> None:
    if text is not None:
        etree.SubElement(parent, name).text = text


# ---- inviaFileMtom -----------------------------------------------------------------------------


@dataclass(frozen=True)
class IntakeRequest:
    file_name: str
    pincode_cifrato: str
    cf_proprietario_cifrato: str | None
    document: bytes


@dataclass(frozen=True)
class IntakeReceipt:
    """ricevutaInvio: the synchronous answer to inviaFileMtom."""

    codice_esito: str
    descrizione_esito: str
    protocollo: str
    data_accoglienza: str
    file_name: str
    file_size: int
    id_errore: str | None = None

    @property
    def accepted(self) -> bool:
        return self.codice_esito == INTAKE_ACCEPTED

    @property
    def accepted_at(self) -> datetime | None:
        try:
            return datetime.strptime(self.data_accoglienza, TS_DATETIME)
        except ValueError:
            return None


@dataclass(frozen=True)
class Proprietario:
    """Who issues the documents of a file (codiceRegione, codiceAsl, codiceSSA): the structure case of
    the spec (ws-asincrono-spec-v2.5 par. 5, "Sezione Proprietario", all three mandatory)."""

    codice_regione: str
    codice_asl: str
    codice_ssa: str


def _the_xml(file_name: str, zipped: zipfile.ZipFile) -> zipfile.ZipInfo:
    """The one entry of a 730 zip (ValueError naming the file otherwise)."""
    entries = [info for info in zipped.infolist() if not info.is_dir()]
    if len(entries) != 1:
        raise ValueError(f"{file_name}: a 730 zip holds exactly one XML, this one has {len(entries)} entries")
    return entries[0]


def proprietario_of_zip(file_name: str, zip_bytes: bytes) -> Proprietario:
    """The proprietario block of the one XML inside a 730 zip: the envelope's datiProprietario must
    name the same structure as the file it carries. Reads only up to that block."""
    try:
        with zipfile.ZipFile(io.BytesIO(zip_bytes)) as zipped:
            with zipped.open(_the_xml(file_name, zipped)) as xml:
                for _, element in etree.iterparse(xml, events=("end",), tag="proprietario"):
                    values = [(element.findtext(name) or "").strip()
                              for name in ("codiceRegione", "codiceAsl", "codiceSSA")]
                    missing = [name for name, value in zip(("codiceRegione", "codiceAsl", "codiceSSA"), values,
                                                           strict=True) if not value]
                    if missing:
                        raise ValueError(f"{file_name}: proprietario has no {', '.join(missing)}")
                    return Proprietario(*values)
    except (zipfile.BadZipFile, etree.XMLSyntaxError) as exc:
        raise ValueError(f"{file_name}: not a readable 730 zip ({type(exc).__name__})") from None
    raise ValueError(f"{file_name}: the XML has no proprietario block")


# How much of an XML's head holds its proprietario block: the root's start, the three opzionale (empty in our
# files) and the block itself, a few hundred bytes in every file the formatter writes.
_HEAD_BYTES = 64 * 1024
_CIPHERTEXT = re.compile(rb"[A-Za-z0-9+/=]{1,256}")  # base64, and cfType's 256 characters at most


def with_cf_proprietario(file_name: str, zip_bytes: bytes, cf_proprietario_cifrato: str) -> bytes:
    """The 730 zip with `cfProprietario` as the last element of its proprietario block, as the send needs it.

    The file's proprietario names the structure; its cfProprietario (mandatory unless the sender is the Region,
    ws-asincrono-spec-v2.5 par. 5 "Sezione Proprietario (caso d'uso Struttura)") is the C.F. the operator types
    with the credentials, at the send: the formatter wrote the file before anyone typed it. Everything else in the
    XML stays byte for byte as formatted; the zip keeps its one entry's name, date and compression (deflate at the
    formatter's level, 6). A file whose block has a cfProprietario already is returned as it is.
    Raises ValueError naming the file when its XML has no proprietario block at its head."""
    cipher = cf_proprietario_cifrato.encode("ascii", errors="replace")
    if not _CIPHERTEXT.fullmatch(cipher):
        raise ValueError(f"{file_name}: the encrypted C.F. proprietario is not base64 of at most 256 characters")
    try:
        with zipfile.ZipFile(io.BytesIO(zip_bytes)) as zipped:
            entry = _the_xml(file_name, zipped)
            with zipped.open(entry) as xml:
                head = xml.read(_HEAD_BYTES)
                start, end = head.find(b"<proprietario>"), head.find(b"</proprietario>")
                if start < 0 or end < start:
                    raise ValueError(f"{file_name}: the XML has no proprietario block in its first "
                                     f"{_HEAD_BYTES // 1024} KiB")
                if b"<cfProprietario" in head[start:end]:
                    return zip_bytes
                out = io.BytesIO()
                with zipfile.ZipFile(out, "w") as target:
                    made = zipfile.ZipInfo(entry.filename, date_time=entry.date_time)
                    made.compress_type = entry.compress_type
                    made.external_attr = entry.external_attr
                    with target.open(made, "w") as sent:
                        sent.write(head[:end])
                        sent.write(b"<cfProprietario>" + cipher + b"</cfProprietario>")
                        sent.write(head[end:])
                        shutil.copyfileobj(xml, sent, 1 << 20)
                return out.getvalue()
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise ValueError(f"{file_name}: not a readable 730 zip ({type(exc).__name__})") from None


def build_invia_file(
    file_name: str, pincode_cifrato: str, owner: Proprietario, cf_proprietario_cifrato: str, content_id: str
) -> bytes:
    operation = etree.Element(_q(INVIO_NS, "inviaFileMtom"), nsmap={"inv": INVIO_NS})
    _sub(operation, "nomeFileAllegato", file_name)
    _sub(operation, "pincodeInvianteCifrato", pincode_cifrato)
    proprietario = etree.SubElement(operation, "datiProprietario")
    _sub(proprietario, "codiceRegione", owner.codice_regione)
    _sub(proprietario, "codiceAsl", owner.codice_asl)
    _sub(proprietario, "codiceSSA", owner.codice_ssa)
    _sub(proprietario, "cfProprietario", cf_proprietario_cifrato)
    xop_include(etree.SubElement(operation, "documento"), content_id)
    return envelope(operation)


def parse_invia_receipt(data: bytes) -> IntakeReceipt | SoapFault:
    what = "inviaFileMtomResponse"
    payload = body_payload(data, what)
    if isinstance(payload, SoapFault):
        return payload
    ret = payload.find("return")
    if payload.tag != _q(INVIO_NS, "inviaFileMtomResponse").text or ret is None:
        raise SoapFormatError(f"{what}: unexpected body element {payload.tag} (or no <return>)")
    size = child_text(ret, "dimensioneFileAllegato", what) or "0"
    return IntakeReceipt(
        codice_esito=child_text(ret, "codiceEsito", what) or "",
        descrizione_esito=child_text(ret, "descrizioneEsito", what) or "",
        protocollo=child_text(ret, "protocollo", what) or "",
        data_accoglienza=child_text(ret, "dataAccoglienza", what) or "",
        file_name=child_text(ret, "nomeFileAllegato", what) or "",
        file_size=int(size) if size.isdigit() else 0,
        id_errore=child_text(ret, "idErrore", what, required=False) or None,
    )


def build_invia_receipt(receipt: IntakeReceipt) -> bytes:
    response = etree.Element(_q(INVIO_NS, "inviaFileMtomResponse"), nsmap={"ns2": INVIO_NS})
    ret = etree.SubElement(response, "return")
    _sub(ret, "codiceEsito", receipt.codice_esito)
    _sub(ret, "dataAccoglienza", receipt.data_accoglienza)
    _sub(ret, "descrizioneEsito", receipt.descrizione_esito)
    _sub(ret, "dimensioneFileAllegato", str(receipt.file_size))
    _sub(ret, "nomeFileAllegato", receipt.file_name)
    _sub(ret, "protocollo", receipt.protocollo)
    _sub(ret, "idErrore", receipt.id_errore)
    return envelope(response)


# ---- EsitoInvii, DettaglioErrori, RicevutaPdf: requests ----------------------------------------


@dataclass(frozen=True)
class ReceiptQuery:
    """DatiInputRichiesta of the three receipt services."""

    pincode_cifrato: str
    protocollo: str | None = None
    data_inizio: date | None = None
    data_fine: date | None = None


def build_query(namespace: str, operation_name: str, query: ReceiptQuery) -> bytes:
    operation = etree.Element(_q(namespace, operation_name), nsmap={"tns": namespace})
    dati = etree.SubElement(operation, "DatiInputRichiesta")
    _sub(dati, "pinCode", query.pincode_cifrato)
    # ricevute-spec-2015 2.5: either a protocollo or a dataInizio/dataFine pair, never both.
    if query.protocollo is None and query.data_inizio is not None and query.data_fine is not None:
        _sub(dati, "dataInizio", query.data_inizio.strftime(TS_DATE))
        _sub(dati, "dataFine", query.data_fine.strftime(TS_DATE))
    _sub(dati, "protocollo", query.protocollo)
    return envelope(operation)


def parse_query(data: bytes, namespace: str, operation_name: str) -> ReceiptQuery:
    what = operation_name
    payload = body_payload(data, what)
    if isinstance(payload, SoapFault) or payload.tag != _q(namespace, operation_name).text:
        raise SoapFormatError(f"{what}: body is not a {{{namespace}}}{operation_name} request")
    dati = payload.find("DatiInputRichiesta")
    if dati is None:
        raise SoapFormatError(f"{what}: DatiInputRichiesta is missing")
    start = child_text(dati, "dataInizio", what, required=False)
    end = child_text(dati, "dataFine", what, required=False)
    try:
        return ReceiptQuery(
            pincode_cifrato=child_text(dati, "pinCode", what) or "",
            protocollo=child_text(dati, "protocollo", what, required=False) or None,
            data_inizio=datetime.strptime(start, TS_DATE).date() if start else None,
            data_fine=datetime.strptime(end, TS_DATE).date() if end else None,
        )
    except ValueError as exc:
        raise SoapFormatError(f"{what}: dataInizio/dataFine must be dd-mm-yyyy ({exc})") from exc


# ---- responses ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class NegativeOutcome:
    """dettaglioEsitoNegativo: the call itself failed (e.g. WS37 no csv, or unknown protocollo)."""

    code: str
    description: str


@dataclass(frozen=True)
class SendStatus:
    """dettaglioEsitoPositivo of EsitoInvii: where TS is with one file."""

    protocollo: str
    data_invio: str
    stato: int
    descrizione: str
    n_inviati: int
    n_accolti: int
    n_warnings: int
    n_errori: int


@dataclass(frozen=True)
class QueryAnswer:
    esito_chiamata: str
    descrizione_esito: str
    statuses: tuple[SendStatus, ...] = ()
    binary: bytes | None = None  # csv zip (DettaglioErrori) or pdf (RicevutaPdf)
    negatives: tuple[NegativeOutcome, ...] = ()


def build_answer(
    namespace: str, response_name: str, answer: QueryAnswer, binary_name: str | None = None
) -> bytes:
    response = etree.Element(_q(namespace, response_name), nsmap={"ns2": namespace})
    out = etree.SubElement(response, "DatiOutputRichiesta")
    _sub(out, "esitoChiamata", answer.esito_chiamata)
    if namespace == ESITO_NS:
        _sub(out, "descrizioneEsito", answer.descrizione_esito)
    if answer.statuses or answer.binary is not None:
        positives = etree.SubElement(out, "esitiPositivi")
        for status in answer.statuses:
            detail = etree.SubElement(positives, "dettagliEsito")
            for name, value in (
                ("protocollo", status.protocollo),
                ("dataInvio", status.data_invio),
                ("stato", str(status.stato)),
                ("descrizione", status.descrizione),
                ("nInviati", str(status.n_inviati)),
                ("nAccolti", str(status.n_accolti)),
                ("nWarnings", str(status.n_warnings)),
                ("nErrori", str(status.n_errori)),
            ):
                _sub(detail, name, value)
        if answer.binary is not None and binary_name is not None:
            detail = etree.SubElement(positives, "dettagliEsito")
            _sub(detail, binary_name, base64.b64encode(answer.binary).decode("ascii"))
    if answer.negatives:
        negatives = etree.SubElement(out, "esitiNegativi")
        for negative in answer.negatives:
            detail = etree.SubElement(negatives, "dettaglioEsitoNegativo")
            _sub(detail, "codice", negative.code)
            _sub(detail, "descrizione", negative.description)
    return envelope(response)


def _int(element: etree._Element, name: str, what: str) -> int:
    text = child_text(element, name, what) or ""
    try:
        return int(text)
    except ValueError as exc:
        raise SoapFormatError(f"{what}: <{name}> is {text!r}, not an integer") from exc


def parse_answer(
    data: bytes, namespace: str, response_name: str, binary_name: str | None = None
) -> QueryAnswer | SoapFault:
    what = response_name
    payload = body_payload(data, what)
    if isinstance(payload, SoapFault):
        return payload
    if payload.tag != _q(namespace, response_name).text:
        raise SoapFormatError(f"{what}: unexpected body element {payload.tag}")
    out = payload.find("DatiOutputRichiesta")
    if out is None:
        raise SoapFormatError(f"{what}: DatiOutputRichiesta is missing")
    statuses: list[SendStatus] = []
    binary: bytes | None = None
    for detail in out.findall("esitiPositivi/dettagliEsito"):
        if binary_name is not None:
            text = child_text(detail, binary_name, what) or ""
            try:
                binary = base64.b64decode(text, validate=True)
            except ValueError as exc:
                raise SoapFormatError(f"{what}: <{binary_name}> is not base64") from exc
            continue
        statuses.append(
            SendStatus(
                protocollo=child_text(detail, "protocollo", what) or "",
                data_invio=child_text(detail, "dataInvio", what) or "",
                stato=_int(detail, "stato", what),
                descrizione=child_text(detail, "descrizione", what) or "",
                n_inviati=_int(detail, "nInviati", what),
                n_accolti=_int(detail, "nAccolti", what),
                n_warnings=_int(detail, "nWarnings", what),
                n_errori=_int(detail, "nErrori", what),
            )
        )
    negatives = tuple(
        NegativeOutcome(
            code=child_text(d, "codice", what) or "", description=child_text(d, "descrizione", what) or ""
        )
        for d in out.findall("esitiNegativi/dettaglioEsitoNegativo")
    )
    return QueryAnswer(
        esito_chiamata=child_text(out, "esitoChiamata", what) or "",
        descrizione_esito=child_text(out, "descrizioneEsito", what, required=False) or "",
        statuses=tuple(statuses),
        binary=binary,
        negatives=negatives,
    )
