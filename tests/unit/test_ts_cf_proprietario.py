"""The C.F. proprietario the operator types at the send goes into the 730 file as well as the envelope.

The formatter writes the file before anyone typed it; the TS gateway adds it at the send
(services.ts_gateway.operations.with_cf_proprietario), in the room the formatter leaves under the 5 MB limit
(contracts.ts730.cf_proprietario_room).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from lxml import etree

from contracts.ts730 import cf_proprietario_room
from services.runtime.sanitel import decrypt_with_key, encrypt_for_ts
from services.ts_gateway import operations as ops
from simulators.sistema_ts.sample import sample_730_xml, zip_one
from tests.unit import test_xml730
from tests.unit.test_xml730 import OFFICIAL_XSD, a_month_of_documents, write

CF = "RSSMRA80A01F839W"
keys, cert = test_xml730.keys, test_xml730.cert  # the test certificate's fixtures (its key pair, the certificate)


def only_entry(zip_bytes: bytes) -> tuple[zipfile.ZipInfo, bytes]:
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as zipped:
        (entry,) = zipped.infolist()
        return entry, zipped.read(entry)


def test_the_send_adds_the_cf_as_the_last_element_of_the_proprietario_and_changes_nothing_else(cert, keys):
    xml = sample_730_xml(cert, None, documents=4)  # as the formatter writes it
    assert b"cfProprietario" not in xml
    cipher = encrypt_for_ts(cert, CF)
    sent = ops.with_cf_proprietario("730_p1.zip", zip_one(xml, name="730_p1.xml"), cipher)

    entry, completed = only_entry(sent)
    assert entry.filename == "730_p1.xml" and entry.compress_type == zipfile.ZIP_DEFLATED
    # byte for byte the formatted XML, the one element added just before the block's end
    element = b"<cfProprietario>" + cipher.encode() + b"</cfProprietario>"
    assert completed == xml.replace(b"</proprietario>", element + b"</proprietario>", 1)
    root = etree.fromstring(completed)
    block = root.find("proprietario")
    assert block is not None
    assert [child.tag for child in block] == ["codiceRegione", "codiceAsl", "codiceSSA", "cfProprietario"]
    assert decrypt_with_key(keys[1], block.findtext("cfProprietario", "")) == CF
    etree.XMLSchema(file=str(OFFICIAL_XSD)).assertValid(root)


def test_a_file_that_names_its_cf_already_is_sent_as_it_is(cert):
    zip_bytes = zip_one(sample_730_xml(cert, CF, documents=2))
    assert ops.with_cf_proprietario("730_p1.zip", zip_bytes, encrypt_for_ts(cert, CF)) is zip_bytes


def test_a_stored_entry_stays_stored(cert):
    """The zip's own choices stay: an uncompressed entry is not deflated on the way (its size is what TS sees)."""
    stored = zip_one(sample_730_xml(cert, None, documents=2), compress=False)
    entry, completed = only_entry(ops.with_cf_proprietario("730_p1.zip", stored, encrypt_for_ts(cert, CF)))
    assert entry.compress_type == zipfile.ZIP_STORED and b"<cfProprietario>" in completed


@pytest.mark.parametrize(("xml", "cipher", "reason"), [
    (b"<precompilata><documentoSpesa/></precompilata>", "QUJD", r"no proprietario block in its first 64 KiB"),
    (b"<precompilata><proprietario><codiceSSA>1</codiceSSA></proprietario></precompilata>", "<x/>",
     "not base64"),
    (b"<precompilata><proprietario><codiceSSA>1</codiceSSA></proprietario></precompilata>", "A" * 257,
     "not base64 of at most 256"),
], ids=["no-block", "markup-in-cipher", "cipher-too-long"])
def test_what_cannot_be_completed_is_refused_naming_the_file(xml, cipher, reason):
    with pytest.raises(ValueError, match=rf"^bad\.zip: .*{reason}"):
        ops.with_cf_proprietario("bad.zip", zip_one(xml), cipher)
    with pytest.raises(ValueError, match=r"^bad\.zip: not a readable 730 zip"):
        ops.with_cf_proprietario("bad.zip", b"PK\x03\x04 not a zip", "QUJD")


def test_parts_filled_to_the_formatters_budget_still_fit_the_limit_with_the_cf(cert, tmp_path: Path):
    """The formatter writes each part within the limit less the room; the completed part must fit the limit."""
    limit = 128 * 1024
    writer = write(a_month_of_documents(6000), cert, tmp_path, max_zip_bytes=limit - cf_proprietario_room(limit))
    assert len(writer.parts) >= 3
    for part in writer.parts:
        completed = ops.with_cf_proprietario(part.name, part.path.read_bytes(), encrypt_for_ts(cert, CF))
        assert len(completed) <= limit, f"{part.name}: {len(completed)} bytes with the C.F. proprietario"
        assert b"</cfProprietario></proprietario>" in only_entry(completed)[1]
