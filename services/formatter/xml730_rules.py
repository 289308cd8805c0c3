"""The 730 file's domain: a fiscal document as the formatter sees it, the rules it must pass,
its documentoSpesa element, and the names of the files.

Pure values and functions, no I/O. Every rule answers one question about one document and
names the source record and the field, so an operator can fix the source instead of reading an
XSD error. The rules mirror what 730_precompilata.xsd (layout "2020") and the TS specification
(ws-asincrono-spec v2.5 §5) demand; the XSD is still run on every produced file as the last word.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from functools import cache, lru_cache
from typing import Any

from lxml import etree
from stdnum.it import codicefiscale, iva

SPENDING_TYPES = frozenset({"TK", "FC", "FV", "AS", "AD", "SR", "CT", "PI", "IC", "AA", "SV", "SP"})
MAX_CIPHERTEXT = 256  # cfType maxLength
MAX_AMOUNT = Decimal("99999.99")  # Dec7MinTipo: [0-9]{1,5}[.][0-9]{2}
MIN_ISSUE_DATE = date(2014, 1, 1)  # DataMinType
MIN_PAYMENT_DATE = date(2015, 1, 1)  # dataPagamento minInclusive
_DOCUMENT_NUMBER = re.compile(r"[A-Za-z0-9_./\\\-]{1,20}")  # numDocType
_CODE3 = re.compile(r"[A-Z0-9]{3}")  # varChar3Type
_SSA = re.compile(r"[A-Z0-9]{5,6}")  # codSsaType
_BASIC_LATIN_NAME = re.compile(r"[A-Za-z0-9_.\-]{2,56}\.zip")
# 16-character personal codice fiscale, letters allowed in digit places for homocodes (omocodia).
_CF16 = re.compile(r"[A-Z]{6}[0-9LMNPQRSTUV]{2}[ABCDEHLMPRST][0-9LMNPQRSTUV]{2}[A-Z][0-9LMNPQRSTUV]{3}[A-Z]")


@dataclass(frozen=True, slots=True)
class SpendingLine:
    """One voceSpesa: what kind of expense, and how much."""

    spending_type: str
    flag_spending_type: str | None
    amount: Decimal


@dataclass(frozen=True, slots=True)
class SpendingDocument:
    """One documentoSpesa: a payment document of the snapshot (contracts.sources.PaymentDocument)."""

    source_id: str
    ente: str
    structure_sts11: str
    issuer_vat: str
    issue_date: date
    device: int
    document_number: str
    payment_date: date
    traced_payment: bool
    document_kind: str
    patient_cf: str | None
    patient_objection: bool
    items: tuple[SpendingLine, ...]


@dataclass(frozen=True, slots=True)
class DocumentProblem:
    """Why one source record cannot go into the 730 file. The operators read it (a Format failed's reasons):
    the message, and the text around the record and the field, are Italian; the field is an identifier."""

    source_id: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"documento di spesa {self.source_id}, campo {self.field}: {self.message}"


Rule = Callable[[SpendingDocument], Iterator[DocumentProblem]]

# naturaIVA of a voceSpesa by its tipoSpesa. Since the 2020-12 layout (ws-asincrono-spec-v2.5, voceSpesa:
# aliquotaIVA "in alternativa al campo NaturaIva", O/F) TS wants one of the two for every voce of a document paid
# from 2021 on; the source contract carries neither. The health services an ASL or a hospital is paid for (TK:
# the ticket of an SSN service; SR: a specialist visit or service, intramoenia included; SP: other health
# services) are exempt from VAT (art. 10, c. 1, n. 18, DPR 633/1972): N4, "esenti", valid for a documento
# commerciale (D: N1-N6) and an invoice (F). The other tipoSpesa (medicines, devices, aesthetic surgery, ...)
# have rates the source would have to say: no voce of theirs gets one here (TS reports such a document in the
# instance's feedback). A region with another rule changes this table.
VAT_NATURE: dict[str, str] = {"TK": "N4", "SR": "N4", "SP": "N4"}


def format_amount(amount: Decimal) -> str:
    """Euro amount as the schema wants it (`[0-9]{1,5}.[0-9]{2}`); never rounds silently."""
    if amount != amount.quantize(Decimal("0.01")):
        raise ValueError(f"l'importo {amount} ha più di due decimali")  # a DocumentProblem's message: Italian
    if not Decimal("0.01") <= amount <= MAX_AMOUNT:
        raise ValueError(f"l'importo {amount} è fuori dall'intervallo 0.01-{MAX_AMOUNT}")
    return f"{amount:.2f}"


def paid_in_advance(doc: SpendingDocument) -> bool:
    # flagPagamentoAnticipato = 1 is mandatory when payment precedes issue (spec v2.5 §5, dataPagamento).
    return doc.payment_date < doc.issue_date


def sends_patient_cf(doc: SpendingDocument) -> bool:
    # cfCittadino "deve essere assente se flagOpposizione=1" (spec v2.5 §5, cfCittadino).
    return not doc.patient_objection


@lru_cache(maxsize=4096)
def is_valid_partita_iva(number: str) -> bool:
    # Cached: a structure issues all its documents under one or two VAT numbers.
    return len(number) == 11 and number.isdigit() and iva.is_valid(number)


def is_valid_codice_fiscale(cf: str) -> bool:
    """Exactly as TS reads it: 16 upper-case characters with their check letter, or 11 digits
    (a temporary codice fiscale, which carries the partita IVA check digit)."""
    if len(cf) == 16:
        return bool(_CF16.fullmatch(cf)) and codicefiscale.calc_check_digit(cf[:15]) == cf[15]
    return is_valid_partita_iva(cf)


class ProblemList(list[DocumentProblem]):
    """The problems of a run: the first `limit` kept, every one counted in `total`, so a month
    whose every document is wrong does not hold them all in memory."""

    def __init__(self, limit: int = 1000) -> None:
        super().__init__()
        self.limit = limit
        self.total = 0

    def extend(self, problems: Iterable[DocumentProblem]) -> None:  # type: ignore[override]
        for problem in problems:
            self.total += 1
            if len(self) < self.limit:
                self.append(problem)


class Xml730Rejected(Exception):
    """Source records that cannot become a valid 730: `problems` (the first ones kept) and `total`."""

    def __init__(self, problems: list[DocumentProblem]) -> None:
        self.problems = problems
        self.total = problems.total if isinstance(problems, ProblemList) else len(problems)
        shown = "; ".join(str(p) for p in problems[:5])
        more = f" (and {self.total - 5} more, see .problems)" if self.total > 5 else ""
        super().__init__(f"{self.total} problem(s) in the 730 source: {shown}{more}")


@dataclass(frozen=True)
class Owner:
    """The proprietario block: who issued the documents of one submission."""

    region: str
    asl: str
    ssa: str
    cf_encrypted: str | None = None


def document_from_row(row: Mapping[str, Any]) -> SpendingDocument:
    """A snapshot_payment_document row; items are jsonb, amounts stored as JSON strings or numbers."""
    items = row["items"]
    if isinstance(items, str):
        items = json.loads(items, parse_float=Decimal)
    return SpendingDocument(
        source_id=row["source_id"], ente=row["ente"], structure_sts11=row["structure_sts11"],
        issuer_vat=row["issuer_vat"], issue_date=row["issue_date"], device=row["device"],
        document_number=row["document_number"], payment_date=row["payment_date"],
        traced_payment=row["traced_payment"], document_kind=row["document_kind"],
        patient_cf=row["patient_cf"], patient_objection=row["patient_objection"],
        items=tuple(SpendingLine(spending_type=i["spending_type"],
                                 flag_spending_type=i.get("flag_spending_type"),
                                 amount=Decimal(str(i["amount"]))) for i in items))


# --- rules: one question each -------------------------------------------------------------------


def issuer_vat_must_be_a_valid_partita_iva(doc: SpendingDocument) -> Iterator[DocumentProblem]:
    if not (len(doc.issuer_vat) == 11 and doc.issuer_vat.isdigit()):
        yield DocumentProblem(doc.source_id, "issuer_vat", "deve essere di 11 cifre (partita IVA)")
    elif not is_valid_partita_iva(doc.issuer_vat):
        yield DocumentProblem(doc.source_id, "issuer_vat", "la cifra di controllo della partita IVA è errata")


def ente_must_be_a_3_character_asl_code(doc: SpendingDocument) -> Iterator[DocumentProblem]:
    if not _CODE3.fullmatch(doc.ente):
        yield DocumentProblem(doc.source_id, "ente", "deve essere di 3 lettere maiuscole o cifre (codiceAsl)")


def structure_must_be_a_5_or_6_character_ssa_code(doc: SpendingDocument) -> Iterator[DocumentProblem]:
    if not _SSA.fullmatch(doc.structure_sts11):
        yield DocumentProblem(doc.source_id, "structure_sts11",
                      "deve essere di 5-6 lettere maiuscole o cifre (codiceSSA)")


def issue_date_must_not_precede_2014(doc: SpendingDocument) -> Iterator[DocumentProblem]:
    if doc.issue_date < MIN_ISSUE_DATE:
        yield DocumentProblem(doc.source_id, "issue_date", f"{doc.issue_date} è precedente al {MIN_ISSUE_DATE}")


def payment_date_must_not_precede_2015(doc: SpendingDocument) -> Iterator[DocumentProblem]:
    if doc.payment_date < MIN_PAYMENT_DATE:
        yield DocumentProblem(doc.source_id, "payment_date", f"{doc.payment_date} è precedente al {MIN_PAYMENT_DATE}")


def device_must_be_between_1_and_999(doc: SpendingDocument) -> Iterator[DocumentProblem]:
    if not 1 <= doc.device <= 999:
        yield DocumentProblem(doc.source_id, "device", f"{doc.device} è fuori dall'intervallo 1-999 (dispositivo)")


def an_invoice_is_on_device_1(doc: SpendingDocument) -> Iterator[DocumentProblem]:
    """dispositivo is a cash register's number; "per l'emissione di fatture o ricevute fiscali il campo assume il
    valore 1" (ws-asincrono-spec-v2.5, numDocumentoFiscale): on an invoice another number would file the document
    under an idSpesa its issuer does not know it by (corrections and TS's error reports name it)."""
    if doc.document_kind == "F" and doc.device != 1:
        yield DocumentProblem(doc.source_id, "device",
                              f"{doc.device}: su una fattura (tipoDocumento F) il dispositivo vale 1")


def document_number_must_fit_num_documento(doc: SpendingDocument) -> Iterator[DocumentProblem]:
    if not _DOCUMENT_NUMBER.fullmatch(doc.document_number):
        yield DocumentProblem(doc.source_id, "document_number",
                      "deve essere di 1-20 caratteri tra lettere, cifre e _ . / \\ - (numDocumento)")


def document_kind_must_be_invoice_or_receipt(doc: SpendingDocument) -> Iterator[DocumentProblem]:
    if doc.document_kind not in ("F", "D"):
        yield DocumentProblem(doc.source_id, "document_kind",
                      f"{doc.document_kind!r} non è né F né D (tipoDocumento)")


def patient_cf_must_be_present_and_valid_unless_objected(doc: SpendingDocument) -> Iterator[DocumentProblem]:
    if not sends_patient_cf(doc):
        return
    # The value itself is personal data: messages describe it, never repeat it.
    if not doc.patient_cf:
        yield DocumentProblem(doc.source_id, "patient_cf",
                      "manca e il paziente non si è opposto (flagOpposizione 0)")
    elif not is_valid_codice_fiscale(doc.patient_cf):
        yield DocumentProblem(doc.source_id, "patient_cf",
                      "non è un codice fiscale valido (16 caratteri o 11 cifre)")


def items_must_not_be_empty(doc: SpendingDocument) -> Iterator[DocumentProblem]:
    if not doc.items:
        yield DocumentProblem(doc.source_id, "items", "un documento deve avere almeno una voceSpesa")


def every_amount_must_be_positive_with_two_decimals(doc: SpendingDocument) -> Iterator[DocumentProblem]:
    for index, line in enumerate(doc.items):
        try:
            format_amount(line.amount)
        except ValueError as exc:
            yield DocumentProblem(doc.source_id, f"items[{index}].amount", str(exc))


def every_spending_type_must_be_a_ts_tipo_spesa(doc: SpendingDocument) -> Iterator[DocumentProblem]:
    for index, line in enumerate(doc.items):
        if line.spending_type not in SPENDING_TYPES:
            yield DocumentProblem(doc.source_id, f"items[{index}].spending_type",
                          f"{line.spending_type!r} non è un tipoSpesa di Sistema TS")


def flag_spending_type_must_match_its_type(doc: SpendingDocument) -> Iterator[DocumentProblem]:
    # flagTipoSpesa: "1" only with TK (emergency ticket), "2" only with SR (intramoenia): spec v2.5 §5.
    allowed = {"1": "TK", "2": "SR"}
    for index, line in enumerate(doc.items):
        flag = line.flag_spending_type
        if flag is not None and allowed.get(flag) != line.spending_type:
            yield DocumentProblem(doc.source_id, f"items[{index}].flag_spending_type",
                          f"{flag!r} non è ammesso con tipoSpesa {line.spending_type!r}"
                          " (1 richiede TK, 2 richiede SR)")


RULES: tuple[Rule, ...] = (
    ente_must_be_a_3_character_asl_code,
    structure_must_be_a_5_or_6_character_ssa_code,
    issuer_vat_must_be_a_valid_partita_iva,
    issue_date_must_not_precede_2014,
    payment_date_must_not_precede_2015,
    device_must_be_between_1_and_999,
    an_invoice_is_on_device_1,
    document_number_must_fit_num_documento,
    document_kind_must_be_invoice_or_receipt,
    patient_cf_must_be_present_and_valid_unless_objected,
    items_must_not_be_empty,
    every_amount_must_be_positive_with_two_decimals,
    every_spending_type_must_be_a_ts_tipo_spesa,
    flag_spending_type_must_match_its_type,
)


def problems_of(doc: SpendingDocument) -> list[DocumentProblem]:
    return [problem for rule in RULES for problem in rule(doc)]


# --- the XML of one document -----------------------------------------------------------------------------------------


def _leaf(parent: etree._Element, tag: str, text: str) -> None:
    etree.SubElement(parent, tag).text = text


def owner_element(owner: Owner) -> etree._Element:
    el = etree.Element("proprietario")
    _leaf(el, "codiceRegione", owner.region)
    _leaf(el, "codiceAsl", owner.asl)
    _leaf(el, "codiceSSA", owner.ssa)
    if owner.cf_encrypted is not None:
        _leaf(el, "cfProprietario", owner.cf_encrypted)
    return el


def document_element(doc: SpendingDocument, encrypt: Callable[[str], str]) -> etree._Element:
    """One documentoSpesa, in the element order of the XSD sequence."""
    el = etree.Element("documentoSpesa")
    id_spesa = etree.SubElement(el, "idSpesa")
    _leaf(id_spesa, "pIva", doc.issuer_vat)
    _leaf(id_spesa, "dataEmissione", doc.issue_date.isoformat())
    number = etree.SubElement(id_spesa, "numDocumentoFiscale")
    _leaf(number, "dispositivo", str(doc.device))
    _leaf(number, "numDocumento", doc.document_number)
    _leaf(el, "dataPagamento", doc.payment_date.isoformat())
    if paid_in_advance(doc):
        _leaf(el, "flagPagamentoAnticipato", "1")
    _leaf(el, "flagOperazione", "I")  # this system only inserts; V/R/C are corrections it does not make
    if sends_patient_cf(doc):
        assert doc.patient_cf is not None  # guaranteed by the rules
        _leaf(el, "cfCittadino", encrypt(doc.patient_cf))
    _leaf(el, "pagamentoTracciato", "SI" if doc.traced_payment else "NO")
    _leaf(el, "tipoDocumento", doc.document_kind)
    _leaf(el, "flagOpposizione", "1" if doc.patient_objection else "0")
    for line in doc.items:
        item = etree.SubElement(el, "voceSpesa")
        _leaf(item, "tipoSpesa", line.spending_type)
        if line.flag_spending_type is not None:
            _leaf(item, "flagTipoSpesa", line.flag_spending_type)
        _leaf(item, "importo", format_amount(line.amount))
        nature = VAT_NATURE.get(line.spending_type)
        if nature is not None:
            _leaf(item, "naturaIVA", nature)
    return el


@cache
def _size_bound_terms() -> tuple[int, int]:
    """(fixed bytes, bytes per voceSpesa) of the largest documentoSpesa the rules let through."""
    widest = max(VAT_NATURE, key=lambda kind: len(VAT_NATURE[kind]), default="TK")  # every tipoSpesa is 2 letters
    def worst(n_items: int) -> int:
        doc = SpendingDocument(
            source_id="x", ente="XXX", structure_sts11="XXXXXX", issuer_vat="9" * 11,
            issue_date=date(2099, 12, 31), device=999, document_number="X" * 20,
            payment_date=date(2099, 12, 30), traced_payment=False, document_kind="F",
            patient_cf="X", patient_objection=False,
            items=(SpendingLine(widest, "1", Decimal("99999.99")),) * n_items)
        el = document_element(doc, lambda _: "X" * MAX_CIPHERTEXT)  # payment < issue: with the advance flag
        return len(etree.tostring(el, encoding="UTF-8")) + 1  # + the newline between documents
    one, two = worst(1), worst(2)
    return one - (two - one), two - one


def document_size_bound(doc: SpendingDocument) -> int:
    fixed, per_item = _size_bound_terms()
    return fixed + per_item * len(doc.items)


# --- file naming ---------------------------------------------------------------------------------


def period_label(start: date, end: date) -> str:
    """`2026S2` within one semester, `2026` within one year, `202607-202702` otherwise."""
    if start.year == end.year:
        first, last = (start.month - 1) // 6, (end.month - 1) // 6
        return f"{start.year}S{first + 1}" if first == last else f"{start.year}"
    return f"{start:%Y%m}-{end:%Y%m}"


def part_file_name(region: str, ente: str, structure: str, period: str, instance: int, part: int) -> str:
    """Name of one submission zip: `730_<region><ente>_<structure>_<period>_<instance>_p<part>.zip`.

    Example `730_150201_000123_2026S2_1947_p1.zip`: one name per (structure, part) of an
    instance, so names never collide and say what they hold. TS accepts 6-60 basic-Latin
    characters ending in .zip (spec v2.5 §4.5, error 101); a name outside that is an error here.
    """
    name = f"730_{region}{ente}_{structure}_{period}_{instance}_p{part}.zip"
    if not _BASIC_LATIN_NAME.fullmatch(name):
        raise ValueError(f"730 file name {name!r} is not 6-60 basic-Latin characters ending in .zip")
    return name
