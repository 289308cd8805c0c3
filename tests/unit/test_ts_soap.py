"""SOAP envelopes, MTOM packaging and the receipt formats, checked against the official schemas."""

from __future__ import annotations

import pytest
from lxml import etree

from services.ts_gateway import operations as ops
from services.ts_gateway.receipts import (
    DocumentError,
    ErrorReportFormatError,
    build_error_report,
    feedback_csv,
    parse_error_report,
)
from services.ts_gateway.soap import (
    SoapFault,
    SoapFormatError,
    body_payload,
    build_mtom,
    fault_envelope,
    parse_multipart,
    resolve_xop,
)
from simulators.sistema_ts.rules import INVIO_XSD, load_schema, receipt_pdf, reference_file

# Binary that looks like MIME on purpose: CRLFs, dashes, a fake boundary.
OWNER = ops.Proprietario("150", "201", "150001")
NASTY_ZIP = b"PK\x03\x04\r\n--uuid:fake\r\n\r\nContent-ID: <x>\r\n" + bytes(range(256)) * 4


def test_the_mtom_attachment_survives_the_round_trip_byte_for_byte() -> None:
    envelope = ops.build_invia_file("730_1947_p1_abc.zip", "PIN64", OWNER, "CF64", "doc-1@ts")
    body, content_type = build_mtom(envelope, {"doc-1@ts": NASTY_ZIP})
    assert content_type.startswith('multipart/related; type="application/xop+xml"')
    root, attachments = parse_multipart(body, content_type, "request")
    assert root.headers["content-type"].startswith("application/xop+xml")
    payload = body_payload(root.content, "request")
    assert not isinstance(payload, SoapFault)
    documento = payload.find("documento")
    assert documento is not None
    assert resolve_xop(documento, attachments, "request") == NASTY_ZIP


def test_the_invia_envelope_follows_the_wsdl_schema_once_the_attachment_is_inlined() -> None:
    payload = body_payload(ops.build_invia_file("730_1947_p1_abc.zip", "PIN64", OWNER, "CF64", "doc@ts"), "request")
    assert not isinstance(payload, SoapFault)
    owner = payload.find("datiProprietario")
    assert owner is not None
    assert [owner.findtext(n) for n in ("codiceRegione", "codiceAsl", "codiceSSA", "cfProprietario")] == [
        "150", "201", "150001", "CF64"]
    documento = payload.find("documento")
    assert documento is not None
    for child in list(documento):
        documento.remove(child)
    documento.text = "AA=="
    schema = load_schema(reference_file(INVIO_XSD))
    assert schema.validate(etree.fromstring(etree.tostring(payload))), schema.error_log


def test_the_proprietario_is_read_from_the_xml_inside_the_zip_and_a_zip_without_one_is_named() -> None:
    import io
    import zipfile

    def zipped(xml: bytes, entries: int = 1) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as z:
            for n in range(entries):
                z.writestr(f"f{n}.xml", xml)
        return buffer.getvalue()

    xml = (b"<precompilata><proprietario><codiceRegione>150</codiceRegione><codiceAsl>203</codiceAsl>"
           b"<codiceSSA>150777</codiceSSA></proprietario><documentoSpesa/></precompilata>")
    assert ops.proprietario_of_zip("a.zip", zipped(xml)) == ops.Proprietario("150", "203", "150777")
    with pytest.raises(ValueError, match=r"b\.zip: proprietario has no codiceSSA"):
        ops.proprietario_of_zip("b.zip", zipped(xml.replace(b"<codiceSSA>150777</codiceSSA>", b"")))
    with pytest.raises(ValueError, match="exactly one XML"):
        ops.proprietario_of_zip("c.zip", zipped(xml, entries=2))
    with pytest.raises(ValueError, match="no proprietario block"):
        ops.proprietario_of_zip("d.zip", zipped(b"<precompilata/>"))


def test_a_truncated_multipart_body_is_an_explicit_error() -> None:
    body, content_type = build_mtom(b"<x/>", {"a": b"data"})
    with pytest.raises(SoapFormatError, match="truncated"):
        parse_multipart(body[:-20], content_type, "answer")


def test_an_xop_reference_to_a_missing_attachment_names_it() -> None:
    element = etree.Element("documento")
    etree.SubElement(element, "{http://www.w3.org/2004/08/xop/include}Include", href="cid:ghost@ts")
    with pytest.raises(SoapFormatError, match="ghost@ts"):
        resolve_xop(element, {}, "request")


def test_an_accepted_receipt_reads_back_with_its_17_digit_protocollo() -> None:
    sent = ops.IntakeReceipt("000", "FILE ACCOLTO", "26012010000100001", "20-01-2026 10:00:01", "f.zip", 759)
    read = ops.parse_invia_receipt(ops.build_invia_receipt(sent))
    assert read == sent and isinstance(read, ops.IntakeReceipt) and read.accepted
    assert read.accepted_at is not None and read.accepted_at.minute == 0


def test_a_refused_receipt_is_not_accepted() -> None:
    sent = ops.IntakeReceipt("104", "PINCODE ERRATO", "", "20-01-2026 10:00:01", "f.zip", 759, "ERR1")
    read = ops.parse_invia_receipt(ops.build_invia_receipt(sent))
    assert isinstance(read, ops.IntakeReceipt) and not read.accepted and read.codice_esito == "104"


def test_a_soap_fault_is_returned_not_mistaken_for_an_answer() -> None:
    read = ops.parse_invia_receipt(fault_envelope("Server", "Errore interno"))
    assert read == SoapFault("soapenv:Server", "Errore interno")


def test_an_esito_query_by_date_range_carries_no_protocollo() -> None:
    from datetime import date

    query = ops.ReceiptQuery("PIN64", data_inizio=date(2026, 1, 20), data_fine=date(2026, 1, 21))
    xml = ops.build_query(ops.ESITO_NS, "EsitoInvii", query)
    assert b"<dataInizio>20-01-2026</dataInizio>" in xml and b"<protocollo>" not in xml
    assert ops.parse_query(xml, ops.ESITO_NS, "EsitoInvii") == query


def test_esito_statuses_read_back_with_their_counts() -> None:
    status = ops.SendStatus("26012010000100001", "20-01-2026 10:00:01", 3, "File elaborato con errori", 3, 2, 0, 1)
    answer = ops.QueryAnswer("0", "", statuses=(status,))
    read = ops.parse_answer(
        ops.build_answer(ops.ESITO_NS, "EsitoInviiResponse", answer), ops.ESITO_NS, "EsitoInviiResponse"
    )
    assert isinstance(read, ops.QueryAnswer) and read.statuses == (status,)


ERRORS = [
    DocumentError("150", "201", "000123", "03213213210", "2025-03-14", "1", "DOC-2", "TK", "E42", "importo errato"),
    DocumentError("150", "201", "000123", "03213213210", "2025-03-14", "1", "DOC-3", "SR", "E43", "cf già inviato"),
]


def test_the_error_csv_zip_parses_into_one_row_per_document_error() -> None:
    assert parse_error_report(build_error_report("CNRCNR80A01F839X", ERRORS)) == ERRORS


def test_the_feedback_file_drops_the_cf_proprietario() -> None:
    archive = build_error_report("CNRCNR80A01F839X", ERRORS)
    feedback = feedback_csv(parse_error_report(archive))
    assert b"CNRCNR80A01F839X" not in feedback
    assert feedback.decode().splitlines()[2].split(";")[6] == "DOC-3"


def test_a_csv_zip_without_the_spec_columns_names_what_is_missing() -> None:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        zipped.writestr("errori.csv", "CF PROPRIETARIO;CODICE ERRORE\r\nX;E1\r\n")
    with pytest.raises(ErrorReportFormatError, match=r"errori\.csv: header lacks COD REGIONE"):
        parse_error_report(buffer.getvalue())


def test_the_simulated_receipt_is_a_pdf_with_a_valid_trailer() -> None:
    pdf = receipt_pdf(["Protocollo: 26012010000100001"])
    assert pdf.startswith(b"%PDF-1.4") and pdf.rstrip().endswith(b"%%EOF")
    startxref = int(pdf.rsplit(b"startxref\n", 1)[1].split(b"\n")[0])
    assert pdf[startxref:].startswith(b"xref")
