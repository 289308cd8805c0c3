"""format_730 on a real PostgreSQL snapshot: files in the store, per structure, split, or rejected.

Two structures of ASL 201 pay in November 2026: Ospedale del Mare (000123) and the CTO (000456).
The last test builds on a REAL full disk (tests/fault_disk.py: small tmpfs mounts).
"""

from __future__ import annotations

import hashlib
import tempfile
import zipfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest
from lxml import etree

from services.formatter.xml730 import Xml730Rejected, format_730
from services.formatter.xml730_rules import SpendingDocument, SpendingLine
from services.runtime.filestore import FileStore, StoreFull
from services.runtime.sanitel import decrypt_with_key, make_test_certificate
from tests.fault_disk import small_disk
from tests.unit.test_xml730 import OFFICIAL_XSD, a_month_of_documents

pytestmark = pytest.mark.integration

SNAPSHOT = 1948
INSTANCE = 1947

_INSERT = """
INSERT INTO snapshot_payment_document (snapshot_id, source_id, revision, schema_version, ente, structure_sts11,
    issuer_vat, issue_date, device, document_number, payment_date, traced_payment, document_kind, patient_cf,
    patient_objection, items)
VALUES ($1, $2, 1, 1, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"""


@pytest.fixture(scope="module")
def keys() -> tuple[bytes, bytes]:
    return make_test_certificate()


@pytest.fixture
def certificate(keys, tmp_path: Path) -> Path:
    path = tmp_path / "SanitelCF.pem"
    path.write_bytes(keys[0])
    return path


async def insert(pool, docs: Iterable[SpendingDocument], *, amounts_as_numbers: bool = False) -> None:
    def item(line: SpendingLine) -> dict:
        # The loader may store amounts as JSON strings or numbers: both must come back exact.
        amount = float(line.amount) if amounts_as_numbers else str(line.amount)
        return {"spending_type": line.spending_type, "flag_spending_type": line.flag_spending_type,
                "amount": amount, "service_source_ids": []}
    await pool.executemany(_INSERT, [
        (SNAPSHOT, d.source_id, d.ente, d.structure_sts11, d.issuer_vat, d.issue_date, d.device, d.document_number,
         d.payment_date, d.traced_payment, d.document_kind, d.patient_cf, d.patient_objection,
         [item(line) for line in d.items]) for d in docs])


def read_xml(store: FileStore, sha256: str) -> etree._ElementTree:
    with store.open(sha256) as file, zipfile.ZipFile(file) as zf:
        (entry,) = zf.namelist()
        return etree.parse(zf.open(entry))


async def test_two_structures_give_one_valid_zip_each_in_the_file_store(pool, certificate, keys, tmp_path):
    mare = list(a_month_of_documents(200, structure="000123"))
    cto = list(a_month_of_documents(100, structure="000456"))
    await insert(pool, mare)
    await insert(pool, cto, amounts_as_numbers=True)
    store = FileStore(tmp_path / "files")

    files = await format_730(pool, store, INSTANCE, SNAPSHOT, "2020", certificate_path=certificate)

    assert [(f["name"], f["records"], f["part"], f["kind"], f["media_type"]) for f in files] == [
        ("730_150201_000123_2026S2_1947_p1.zip", 200, 1, "730-zip", "application/zip"),
        ("730_150201_000456_2026S2_1947_p2.zip", 100, 2, "730-zip", "application/zip")]  # parts count per instance
    official = etree.XMLSchema(file=str(OFFICIAL_XSD))
    for file, docs, ssa in zip(files, (mare, cto), ("000123", "000456"), strict=True):
        assert store.path(file["sha256"]).stat().st_size == file["bytes"]
        tree = read_xml(store, file["sha256"])
        official.assertValid(tree)
        assert tree.findtext("proprietario/codiceSSA") == ssa
        by_number = {d.document_number: d for d in docs}
        written = tree.findall("documentoSpesa")
        assert len(written) == len(docs)
        for el in written:
            doc = by_number[el.findtext("idSpesa/numDocumentoFiscale/numDocumento", "")]
            cipher = el.findtext("cfCittadino")
            assert (cipher is None) == doc.patient_objection
            if cipher is not None:
                assert decrypt_with_key(keys[1], cipher) == doc.patient_cf
            assert [v.findtext("importo") for v in el.findall("voceSpesa")] == [f"{i.amount:.2f}" for i in doc.items]


async def test_a_small_limit_splits_one_structure_into_numbered_parts(pool, certificate, tmp_path):
    docs = list(a_month_of_documents(1500))
    await insert(pool, docs)
    store = FileStore(tmp_path / "files")

    files = await format_730(pool, store, INSTANCE, SNAPSHOT, "2020", certificate_path=certificate,
                             max_zip_bytes=40 * 1024, period="2026S2")

    assert len(files) >= 3
    assert [f["part"] for f in files] == list(range(1, len(files) + 1))
    assert [f["name"] for f in files] == [f"730_150201_000123_2026S2_1947_p{n}.zip" for n in range(1, len(files) + 1)]
    seen: Counter[str] = Counter()
    for f in files:
        assert f["bytes"] <= 40 * 1024
        numbers = [el.findtext("idSpesa/numDocumentoFiscale/numDocumento", "")
                   for el in read_xml(store, f["sha256"]).findall("documentoSpesa")]
        assert len(numbers) == f["records"]
        seen.update(numbers)
    assert seen == Counter(d.document_number for d in docs)


async def test_bad_records_reject_the_whole_instance_naming_each_record_and_field(pool, certificate, tmp_path):
    good = list(a_month_of_documents(50))
    zero = replace(good[0], source_id="CUP-ZERO", document_number="Z-1",
                   items=(SpendingLine("TK", None, Decimal("0.00")),))
    twin = replace(good[1], source_id="CUP-TWIN")  # same pIva, date, device and number as good[1]
    bad_vat = replace(good[2], source_id="CUP-BADVAT", document_number="V-1", issuer_vat="12345678901")
    await insert(pool, [*good, zero, twin, bad_vat])
    store = FileStore(tmp_path / "files")

    with pytest.raises(Xml730Rejected) as caught:
        await format_730(pool, store, INSTANCE, SNAPSHOT, "2020", certificate_path=certificate)

    assert {(p.source_id, p.field) for p in caught.value.problems} == {
        ("CUP-ZERO", "items[0].amount"), ("CUP-BADVAT", "issuer_vat"),
        (good[1].source_id, "document_number"), ("CUP-TWIN", "document_number")}
    assert "CUP-ZERO" in str(caught.value)
    assert not (store.root / "sha256").exists() or not any((store.root / "sha256").rglob("*"))


async def test_an_unknown_layout_version_is_refused_before_any_work(pool, certificate, tmp_path):
    from contracts.ts730 import UnknownLayoutVersion
    with pytest.raises(UnknownLayoutVersion, match="'1999'"):
        await format_730(pool, FileStore(tmp_path), INSTANCE, SNAPSHOT, "1999", certificate_path=certificate)


async def test_an_empty_snapshot_gives_no_files(pool, certificate, tmp_path):
    assert await format_730(pool, FileStore(tmp_path), INSTANCE, SNAPSHOT, "2020", certificate_path=certificate) == []



async def test_the_parts_are_built_on_the_store_disk_and_a_full_one_is_store_full_leaving_nothing(
        pool, certificate, tmp_path, monkeypatch: pytest.MonkeyPatch):
    """The parts are built in the file store's own tmp/, not in the process's temporary folder (here a 64 KB
    tmpfs that would not hold one part); the store full while a part is built (a 128 KB tmpfs, a ~1 MB zip) is
    StoreFull naming the store (what the formatter waits on), with no work folder or part left and every byte
    given back while the error is still held. Space freed: the same call stores a whole, valid zip."""
    docs = list(a_month_of_documents(5000))
    await insert(pool, docs)
    with small_disk(tmp_path / "files", size_kb=128) as disk, small_disk(tmp_path / "proc-tmp", size_kb=64) as proc:
        monkeypatch.setattr(tempfile, "tempdir", str(proc.path))  # the process's temporary folder (as TMPDIR)
        store = FileStore(disk.path)
        free = disk.free_bytes()
        with pytest.raises(StoreFull) as full:
            await format_730(pool, store, INSTANCE, SNAPSHOT, "2020", certificate_path=certificate)
        assert full.value.root == disk.path and str(disk.path) in str(full.value), full.value
        assert 0 < full.value.written < 256 * 1024, full.value  # met while the part was built (~600 KB in all)
        left = sorted(str(p.relative_to(disk.path)) for p in disk.path.rglob("*"))
        assert left in ([], ["tmp"]), left
        assert disk.free_bytes() == free, "the failed attempt still holds space"

        disk.grow(16 * 1024)
        [file] = await format_730(pool, store, INSTANCE, SNAPSHOT, "2020", certificate_path=certificate)
        data = store.path(file["sha256"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == file["sha256"] and len(data) == file["bytes"], file
        print(f"\n730 zip of {len(docs)} documents: {len(data)} bytes")
        assert file["records"] == len(docs) and list((disk.path / "tmp").iterdir()) == []
        assert proc.files() == []
