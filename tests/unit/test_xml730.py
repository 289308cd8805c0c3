"""The 730 file: payment documents -> zipped XML valid against the official TS schema.

The data is a month of the "Ospedale del Mare" structure 000123 of ASL 201 (Napoli 1 Centro):
tickets of 36.15 euro, intramoenia visits of 120.00, every 7th patient objecting.
"""

from __future__ import annotations

import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import xmlschema
from cryptography import x509
from lxml import etree
from stdnum import luhn
from stdnum.it import codicefiscale

from contracts.deadlines import ITALY
from services.formatter.xml730 import (
    Owner,
    PartFile,
    SubmissionWriter,
    Xml730Invalid,
    load_schema,
    validate_part,
)
from services.formatter.xml730_rules import SpendingDocument, SpendingLine, format_amount
from services.runtime.sanitel import decrypt_with_key, encrypt_for_ts, make_test_certificate
from tests.shared_paths import TS730_REFERENCE

OFFICIAL_XSD = TS730_REFERENCE / "WS_AsincronoInvioDati730" / "schemaFileAllegatoInvio" / "730_precompilata.xsd"
EXAMPLE = TS730_REFERENCE / "EsempiFileXmlInvioAsincrono" / "strutturaAccreditata.xml"
OSPEDALE_DEL_MARE = Owner(region="150", asl="201", ssa="000123")
TICKET = Decimal("36.15")
INTRAMOENIA_VISIT = Decimal("120.00")


# --- a small generator of a month of payment documents ------------------------------------------


def partita_iva(seed: int) -> str:
    base = f"{seed:07d}063"  # office 063 = Napoli
    return base + luhn.calc_check_digit(base)


def patient_cf(n: int) -> str:
    day, month, year = 1 + n % 28, "ABCDEHLMPRST"[(n // 28) % 12], 30 + (n // 336) % 70
    prefix = f"RSSMRA{year:02d}{month}{day:02d}F839"
    return prefix + codicefiscale.calc_check_digit(prefix)


def a_month_of_documents(count: int, *, structure: str = "000123", ente: str = "201",
                         first_day: date = date(2026, 11, 1)) -> Iterator[SpendingDocument]:
    """Lazily, so memory tests can stream many documents."""
    for n in range(count):
        day = first_day + timedelta(days=n % 30)
        intramoenia = n % 3 == 0
        items = ((SpendingLine("SR", "2", INTRAMOENIA_VISIT), SpendingLine("SR", "2", Decimal(n % 90 + 10)))
                 if intramoenia else (SpendingLine("TK", None, TICKET),))
        yield SpendingDocument(
            source_id=f"CUP-{ente}-{structure}-{n:06d}", ente=ente, structure_sts11=structure,
            issuer_vat=partita_iva(4_242_424), issue_date=day, device=1 if intramoenia else 1 + n % 3,  # F: 1
            document_number=f"{structure}/{n:06d}",
            payment_date=day, traced_payment=n % 2 == 0, document_kind="F" if intramoenia else "D",
            patient_cf=patient_cf(n), patient_objection=n % 7 == 6, items=items)


# --- helpers -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys() -> tuple[bytes, bytes]:
    return make_test_certificate()


@pytest.fixture(scope="module")
def cert(keys: tuple[bytes, bytes]) -> x509.Certificate:
    return x509.load_pem_x509_certificate(keys[0])


def write(docs, cert, workdir: Path, *, max_zip_bytes: int = 5 * 1024 * 1024,
          owner: Owner = OSPEDALE_DEL_MARE) -> SubmissionWriter:
    writer = SubmissionWriter(
        owner=owner, encrypt=lambda v: encrypt_for_ts(cert, v), workdir=workdir,
        name_part=lambda n: f"730_150201_000123_2026S2_1947_p{n}.zip", schema=load_schema("2020"),
        max_zip_bytes=max_zip_bytes)
    try:
        writer.add_all(docs)
        writer.finish()
    except BaseException:
        writer.abort()  # as the formatter does (services.formatter.xml730): the open part's file closed
        raise
    return writer


def xml_of(part: PartFile) -> etree._ElementTree:
    with zipfile.ZipFile(part.path) as zf:
        (entry,) = zf.namelist()
        return etree.parse(zf.open(entry))


def documents_in(part: PartFile) -> list[etree._Element]:
    return xml_of(part).findall("documentoSpesa")


# --- tests ---------------------------------------------------------------------------------------


def test_a_month_validates_against_the_original_official_xsd(cert, tmp_path):
    writer = write(a_month_of_documents(300), cert, tmp_path)
    (part,) = writer.parts
    assert writer.problems == []
    assert part.records == 300
    etree.XMLSchema(file=str(OFFICIAL_XSD)).assertValid(xml_of(part))
    with zipfile.ZipFile(part.path) as zf:  # a second, independent validator
        assert zf.testzip() is None
        xmlschema.XMLSchema(str(OFFICIAL_XSD)).validate(zf.open(zf.namelist()[0]))


def test_the_proprietario_block_names_region_asl_and_structure(cert, tmp_path):
    (part,) = write(a_month_of_documents(3), cert, tmp_path).parts
    owner = xml_of(part).getroot()[0]
    assert owner.tag == "proprietario"
    assert [(el.tag, el.text) for el in owner] == [
        ("codiceRegione", "150"), ("codiceAsl", "201"), ("codiceSSA", "000123")]


def test_a_cf_proprietario_when_given_is_encrypted_and_still_valid(cert, keys, tmp_path):
    owner = replace(OSPEDALE_DEL_MARE, cf_encrypted=encrypt_for_ts(cert, "80012345678"))
    (part,) = write(a_month_of_documents(2), cert, tmp_path, owner=owner).parts
    etree.XMLSchema(file=str(OFFICIAL_XSD)).assertValid(xml_of(part))
    assert decrypt_with_key(keys[1], xml_of(part).findtext("proprietario/cfProprietario") or "") == "80012345678"


def test_objecting_patients_have_no_cf_cittadino(cert, tmp_path):
    (part,) = write(a_month_of_documents(21), cert, tmp_path).parts
    docs = documents_in(part)
    objecting = [d for d in docs if d.findtext("flagOpposizione") == "1"]
    assert len(objecting) == 3  # patients 6, 13, 20
    assert all(d.find("cfCittadino") is None for d in objecting)
    assert all(d.find("cfCittadino") is not None for d in docs if d.findtext("flagOpposizione") == "0")


def test_encrypted_cfs_decrypt_back_to_the_original_with_the_test_key(cert, keys, tmp_path):
    originals = {d.document_number: d.patient_cf for d in a_month_of_documents(40)}
    (part,) = write(a_month_of_documents(40), cert, tmp_path).parts
    checked = 0
    for doc in documents_in(part):
        cipher = doc.findtext("cfCittadino")
        if cipher is None:
            continue
        number = doc.findtext("idSpesa/numDocumentoFiscale/numDocumento", "")
        assert cipher != originals[number] and len(cipher) == 172
        assert decrypt_with_key(keys[1], cipher) == originals[number]
        checked += 1
    assert checked == 40 - 5  # patients 6, 13, 20, 27, 34 objected


def test_a_cf_never_appears_in_clear_in_the_zip_or_the_xml(cert, tmp_path):
    (part,) = write(a_month_of_documents(10), cert, tmp_path).parts
    with zipfile.ZipFile(part.path) as zf:
        xml = zf.read(zf.namelist()[0])
    for n in range(10):
        assert patient_cf(n).encode() not in xml


def test_a_ticket_is_tk_and_an_intramoenia_visit_is_sr_with_flag_2(cert, tmp_path):
    (part,) = write(a_month_of_documents(2), cert, tmp_path).parts
    visit, ticket = documents_in(part)
    assert [(v.findtext("tipoSpesa"), v.findtext("flagTipoSpesa"), v.findtext("importo"))
            for v in visit.findall("voceSpesa")] == [("SR", "2", "120.00"), ("SR", "2", "10.00")]
    assert [(v.findtext("tipoSpesa"), v.findtext("flagTipoSpesa"), v.findtext("importo"))
            for v in ticket.findall("voceSpesa")] == [("TK", None, "36.15")]
    assert ticket.findtext("flagOperazione") == "I" and ticket.findtext("tipoDocumento") == "D"
    assert visit.findtext("pagamentoTracciato") == "SI" and ticket.findtext("pagamentoTracciato") == "NO"


def test_an_invoice_on_another_device_than_1_is_refused_naming_record_and_field(cert, tmp_path):
    """dispositivo is 1 on an invoice (F); a documento commerciale (D) names its cash register."""
    (visit, ticket) = a_month_of_documents(2)
    on_2 = replace(visit, source_id="CUP-F2", device=2)
    register_2 = replace(ticket, source_id="CUP-D2", document_number="000123/D2", device=2)
    writer = write([visit, on_2, register_2], cert, tmp_path)
    assert [(p.source_id, p.field, p.message) for p in writer.problems] == [
        ("CUP-F2", "device", "2: su una fattura (tipoDocumento F) il dispositivo vale 1")]


def test_an_exempt_health_service_carries_natura_iva_n4_and_a_medicine_no_vat_field(cert, tmp_path):
    """One of aliquotaIVA / naturaIVA per voceSpesa (ws-asincrono-spec-v2.5); the sources carry neither, so the
    health services (TK, SR, SP) are written exempt (N4), and a tipoSpesa whose rate only the source can know gets
    none (services.formatter.xml730_rules.VAT_NATURE)."""
    (visit, ticket) = a_month_of_documents(2)
    medicine = replace(ticket, source_id="CUP-FC", document_number="000123/FC",
                       items=(SpendingLine("FC", None, Decimal("12.50")), SpendingLine("SP", None, Decimal("5.00"))))
    (part,) = write([visit, ticket, medicine], cert, tmp_path).parts
    etree.XMLSchema(file=str(OFFICIAL_XSD)).assertValid(xml_of(part))
    assert [[(v.findtext("tipoSpesa"), v.findtext("naturaIVA"), v.find("aliquotaIVA")) for v in d.findall("voceSpesa")]
            for d in documents_in(part)] == [
        [("SR", "N4", None), ("SR", "N4", None)], [("TK", "N4", None)], [("FC", None, None), ("SP", "N4", None)]]


@pytest.mark.parametrize(("amount", "text"), [
    (Decimal("36.15"), "36.15"), (Decimal("7"), "7.00"), (Decimal("0.5"), "0.50"),
    (Decimal("0.01"), "0.01"), (Decimal("99999.99"), "99999.99"), (Decimal("120.000"), "120.00")])
def test_amounts_are_written_with_exactly_two_decimals(amount, text):
    assert format_amount(amount) == text


@pytest.mark.parametrize("amount", [Decimal("0"), Decimal("0.00"), Decimal("-1.00"), Decimal("100000.00"),
                                    Decimal("12.345")])
def test_amounts_the_schema_cannot_hold_are_refused_not_rounded(amount):
    with pytest.raises(ValueError, match=str(amount)):
        format_amount(amount)


def test_a_payment_before_the_issue_date_carries_flag_pagamento_anticipato(cert, tmp_path):
    (doc,) = a_month_of_documents(1)
    early = replace(doc, payment_date=doc.issue_date - timedelta(days=2))
    (part,) = write([early, *a_month_of_documents(2, first_day=date(2026, 11, 5))], cert, tmp_path).parts
    first, second, _ = documents_in(part)
    assert first.findtext("flagPagamentoAnticipato") == "1"
    assert second.find("flagPagamentoAnticipato") is None


def test_a_small_limit_splits_into_zips_of_one_valid_xml_holding_every_document_once(cert, tmp_path):
    limit = 64 * 1024
    writer = write(a_month_of_documents(3000), cert, tmp_path, max_zip_bytes=limit)
    official = etree.XMLSchema(file=str(OFFICIAL_XSD))
    assert len(writer.parts) >= 3
    seen: Counter[str] = Counter()
    for index, part in enumerate(writer.parts, start=1):
        assert part.part == index and part.name.endswith(f"_p{index}.zip")
        assert part.path.stat().st_size == part.bytes <= limit
        with zipfile.ZipFile(part.path) as zf:
            assert len(zf.namelist()) == 1 and zf.namelist()[0].endswith(".xml")
        official.assertValid(xml_of(part))
        numbers = [d.findtext("idSpesa/numDocumentoFiscale/numDocumento", "") for d in documents_in(part)]
        assert len(numbers) == part.records
        seen.update(numbers)
    assert sum(p.records for p in writer.parts) == 3000
    assert seen == Counter(d.document_number for d in a_month_of_documents(3000))
    assert set(seen.values()) == {1}
    # The budget is an upper bound, but not a wasteful one: every full part is nearly full.
    assert all(p.bytes > 0.9 * limit for p in writer.parts[:-1])


def test_a_limit_too_small_for_one_document_is_an_error_not_an_endless_loop(cert, tmp_path):
    with pytest.raises(ValueError, match="cannot hold even one document"):
        write(a_month_of_documents(1), cert, tmp_path, max_zip_bytes=900)


def test_an_invalid_document_is_reported_by_source_id_and_field_and_the_others_still_pass(cert, tmp_path):
    good = list(a_month_of_documents(4))
    zero = replace(good[0], source_id="CUP-ZERO", items=(SpendingLine("TK", None, Decimal("0.00")),))
    bad_vat = replace(good[1], source_id="CUP-BADVAT", issuer_vat="12345678901")
    no_cf = replace(good[2], source_id="CUP-NOCF", patient_cf=None)
    wrong_flag = replace(good[3], source_id="CUP-FLAG", items=(SpendingLine("TK", "2", TICKET),))
    writer = write([zero, bad_vat, *good, no_cf, wrong_flag], cert, tmp_path)
    assert [(p.source_id, p.field) for p in writer.problems] == [
        ("CUP-ZERO", "items[0].amount"), ("CUP-BADVAT", "issuer_vat"), ("CUP-NOCF", "patient_cf"),
        ("CUP-FLAG", "items[0].flag_spending_type")]
    # what the operator reads in the Format failed: Italian around the record and the field
    assert [str(p) for p in writer.problems] == [
        "documento di spesa CUP-ZERO, campo items[0].amount: l'importo 0.00 è fuori dall'intervallo 0.01-99999.99",
        "documento di spesa CUP-BADVAT, campo issuer_vat: la cifra di controllo della partita IVA è errata",
        "documento di spesa CUP-NOCF, campo patient_cf: manca e il paziente non si è opposto (flagOpposizione 0)",
        "documento di spesa CUP-FLAG, campo items[0].flag_spending_type: '2' non è ammesso con tipoSpesa 'TK' "
        "(1 richiede TK, 2 richiede SR)"]
    assert [p.records for p in writer.parts] == [4]


def test_a_problem_never_repeats_the_patient_cf(cert, tmp_path):
    cf = patient_cf(0)
    wrong_check_letter = cf[:-1] + ("A" if cf[-1] != "A" else "B")
    (doc,) = a_month_of_documents(1)
    (problem,) = write([replace(doc, patient_cf=wrong_check_letter)], cert, tmp_path).problems
    assert problem.field == "patient_cf" and wrong_check_letter not in str(problem)


def test_a_file_that_breaks_the_xsd_names_the_failing_document(tmp_path):
    # Three copies of the official example's document, numbered 14, 15, 16; number 15 has amount 0.
    example = EXAMPLE.read_bytes().decode()
    head, rest = example.split("<documentoSpesa>", 1)
    body, tail = rest.rsplit("</documentoSpesa>", 1)
    docs = [f"<documentoSpesa>{body.replace('<numDocumento>14<', f'<numDocumento>{n}<')}</documentoSpesa>"
            for n in (14, 15, 16)]
    docs[1] = docs[1].replace("<importo>100.50</importo>", "<importo>0.00</importo>")
    path = tmp_path / "broken.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("broken.xml", head + "".join(docs) + tail)
    with pytest.raises(Xml730Invalid, match=r"broken\.zip.*document #2 \(idSpesa 03213213210/2015-01-01/1/15\)"
                                            r".*importo"):
        validate_part(path, load_schema("2020"))


def test_the_official_example_passes_the_product_validator(tmp_path):
    path = tmp_path / "example.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(EXAMPLE, "example.xml")
    assert validate_part(path, load_schema("2020")) == 1


def test_the_bundled_schema_is_the_official_one():
    from contracts.ts730 import schema_path
    assert schema_path("2020").read_bytes() == OFFICIAL_XSD.read_bytes()


def test_the_zip_entry_is_dated_in_italian_time(cert, tmp_path):
    """A zip entry's DOS date and time carry no zone: they are Italy's, where the file is received and read, not the
    host's (UTC here, an hour or two behind)."""
    before = datetime.now(ITALY).replace(tzinfo=None, microsecond=0)
    writer = write(a_month_of_documents(3), cert, tmp_path)
    after = datetime.now(ITALY).replace(tzinfo=None, microsecond=0)
    (part,) = writer.parts
    with zipfile.ZipFile(part.path) as zf:
        (info,) = zf.infolist()
    dated = datetime(*info.date_time)
    assert before.replace(second=before.second - before.second % 2) <= dated <= after, (before, dated, after)
