"""Small valid 730 files for the simulator, the tests and demos (not the formatter's output).

`sample_730_zip` writes documents that follow 730_precompilata.xsd, with cfProprietario and
cfCittadino encrypted under the given SanitelCF certificate, numbered "DOC-1", "DOC-2", ...
"""

from __future__ import annotations

import io
import zipfile

from cryptography import x509
from lxml import etree

from services.runtime.sanitel import encrypt_for_ts


def sample_730_xml(
    cert: x509.Certificate,
    cf_proprietario: str | None,
    documents: int,
    cf_cittadino: str = "RSSMRA80A01F839W",
    padding_documents: int = 0,
) -> bytes:
    root = etree.Element("precompilata")
    proprietario = etree.SubElement(root, "proprietario")
    for name, value in (("codiceRegione", "150"), ("codiceAsl", "201"), ("codiceSSA", "000123")):
        etree.SubElement(proprietario, name).text = value
    if cf_proprietario is not None:  # None: the file as the formatter writes it, the send adds it
        etree.SubElement(proprietario, "cfProprietario").text = encrypt_for_ts(cert, cf_proprietario)
    encrypted_cittadino = encrypt_for_ts(cert, cf_cittadino)
    for number in range(1, documents + padding_documents + 1):
        document = etree.SubElement(root, "documentoSpesa")
        id_spesa = etree.SubElement(document, "idSpesa")
        etree.SubElement(id_spesa, "pIva").text = "03213213210"
        etree.SubElement(id_spesa, "dataEmissione").text = "2025-03-14"
        numbering = etree.SubElement(id_spesa, "numDocumentoFiscale")
        etree.SubElement(numbering, "dispositivo").text = "1"
        etree.SubElement(numbering, "numDocumento").text = f"DOC-{number}"
        etree.SubElement(document, "dataPagamento").text = "2025-03-14"
        etree.SubElement(document, "flagOperazione").text = "I"
        etree.SubElement(document, "cfCittadino").text = encrypted_cittadino
        etree.SubElement(document, "pagamentoTracciato").text = "SI"
        etree.SubElement(document, "tipoDocumento").text = "F"
        etree.SubElement(document, "flagOpposizione").text = "0"
        voce = etree.SubElement(document, "voceSpesa")
        etree.SubElement(voce, "tipoSpesa").text = "TK"
        etree.SubElement(voce, "importo").text = "36.15"
        etree.SubElement(voce, "naturaIVA").text = "N4"
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def zip_one(xml: bytes, name: str = "730.xml", compress: bool = True) -> bytes:
    buffer = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(buffer, "w", method) as zipped:
        zipped.writestr(name, xml)
    return buffer.getvalue()


def sample_730_zip(cert: x509.Certificate, cf_proprietario: str | None, documents: int = 3) -> bytes:
    return zip_one(sample_730_xml(cert, cf_proprietario, documents))
