"""A month of the project's own generator, through the loader, into the 730 formatter, against the OFFICIAL XSD.

The path is the product's, end to end, with no hand-written rows: `generate` -> `write_csv` ->
the loader's `import_csv` (validation + intake) -> `take_snapshot(FLUSSO_730)` -> `format_730`.
Every XML of every zip it stores is then validated against the official schema in the shared
reference folder (not the project's copy in contracts/ts730/) with two independent validators,
lxml (libxml2) and xmlschema, and read back: one documentoSpesa per generated payment document,
objecting patients without cfCittadino, the others with their own codice fiscale encrypted.

The reference folder is part of the environment: if it is missing the test fails, it does not skip.
"""

from __future__ import annotations

import zipfile
from collections import Counter
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest
import xmlschema
from lxml import etree

from contracts.sources import PaymentDocument
from contracts.ts730 import cf_proprietario_room
from services.formatter.xml730 import TS_MAX_ZIP_BYTES, format_730
from services.loader.intake import import_csv
from services.loader.snapshot import take_snapshot
from services.runtime.filestore import FileStore
from services.runtime.sanitel import decrypt_with_key, make_test_certificate
from simulators.cup.generator import generate, month_period, write_csv
from tests.shared_paths import TS730_REFERENCE

pytestmark = pytest.mark.integration

REFERENCE = TS730_REFERENCE
OFFICIAL_XSD = REFERENCE / "WS_AsincronoInvioDati730" / "schemaFileAllegatoInvio" / "730_precompilata.xsd"

ENTE = "204"  # ASL Napoli 1 Centro: six structures, so several submissions
MONTH = "2026-03"
SERVICES = 4000
SEED = 730
INSTANCE, SNAPSHOT = 1947, 1948
# From 2025 data the 730 is annual (domain.md §2): the reporting period of a 2026 month is 2026.
YEAR_2026 = (date(2026, 1, 1), date(2026, 12, 31))


def _official_xsd() -> Path:
    assert OFFICIAL_XSD.is_file(), (
        f"the official 730 schema {OFFICIAL_XSD} is missing: the shared reference folder "
        f"{REFERENCE} must be present for this test (it is never skipped)")
    return OFFICIAL_XSD


@pytest.fixture(scope="module")
def official() -> tuple[etree.XMLSchema, xmlschema.XMLSchema]:
    path = _official_xsd()
    return etree.XMLSchema(file=str(path)), xmlschema.XMLSchema(str(path))


@pytest.fixture(scope="module")
def keys() -> tuple[bytes, bytes]:
    return make_test_certificate()


@pytest.fixture
def certificate(keys: tuple[bytes, bytes], tmp_path: Path) -> Path:
    path = tmp_path / "SanitelCF.pem"
    path.write_bytes(keys[0])
    return path


@pytest.fixture
async def generated(pool, tmp_path: Path) -> list[PaymentDocument]:
    """The month's records stored by the loader's own CSV intake; returns its payment documents."""
    generation = generate(ENTE, MONTH, SERVICES, seed=SEED)
    paths = write_csv(tmp_path / "sources", generation)
    async with pool.acquire() as conn:
        for kind, path in paths.items():
            result = await import_csv(conn, kind, path)
            assert result.rejections == [], f"the loader rejected generated {kind} records: {result.rejections[:5]}"
            assert result.intake.stored == result.lines
    docs = [r for r in generation if isinstance(r, PaymentDocument)]
    assert len(docs) > 500, "the month should give a sizeable 730"
    return docs


@dataclass
class Written:
    pIva: str
    number: str
    flag_opposizione: str
    cf_cittadino: str | None
    items: list[tuple[str, str | None, str]]


def _validate_zip(path: Path, name: str, official: tuple[etree.XMLSchema, xmlschema.XMLSchema]) -> list[Written]:
    """Both validators on the one XML of the zip; returns its documents."""
    lxml_schema, py_schema = official
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None, f"{name}: corrupt zip"
        entries = zf.namelist()
        assert entries == [name.removesuffix(".zip") + ".xml"], f"{name}: a 730 zip holds exactly one XML"
        data = zf.read(entries[0])
    tree = etree.ElementTree(etree.fromstring(data))
    if not lxml_schema.validate(tree):
        pytest.fail(f"{name}: lxml says invalid against {OFFICIAL_XSD}: {lxml_schema.error_log}")
    errors = [str(e.reason or e) for e in py_schema.iter_errors(data.decode("utf-8"))][:5]
    assert errors == [], f"{name}: xmlschema says invalid against {OFFICIAL_XSD}: {errors}"
    return [Written(pIva=el.findtext("idSpesa/pIva", ""),
                    number=el.findtext("idSpesa/numDocumentoFiscale/numDocumento", ""),
                    flag_opposizione=el.findtext("flagOpposizione", ""), cf_cittadino=el.findtext("cfCittadino"),
                    items=[(v.findtext("tipoSpesa", ""), v.findtext("flagTipoSpesa"), v.findtext("importo", ""))
                           for v in el.findall("voceSpesa")])
            for el in tree.getroot().iter("documentoSpesa")]


async def _format(pool, certificate: Path, store: FileStore, period: tuple[date, date], **options) -> list[dict]:
    async with pool.acquire() as conn:
        stats = await take_snapshot(conn, SNAPSHOT, "FLUSSO_730", ENTE, *period, instance=INSTANCE)
    files = await format_730(pool, store, INSTANCE, SNAPSHOT, "2020", certificate_path=certificate, **options)
    assert stats.rows > 0 and files
    assert sum(f["records"] for f in files) == stats.rows
    return files


@pytest.mark.parametrize("max_zip_bytes", [TS_MAX_ZIP_BYTES, 24 * 1024], ids=["ts-limit", "split-into-parts"])
async def test_a_generated_month_gives_730_zips_valid_against_the_official_xsd(
        pool, generated, certificate, keys, official, tmp_path, max_zip_bytes):
    store = FileStore(tmp_path / "files")
    # the annual 730 period of the data year holds every document of the month
    assert all(YEAR_2026[0] <= d.payment_date <= YEAR_2026[1] for d in generated)

    files = await _format(pool, certificate, store, YEAR_2026, max_zip_bytes=max_zip_bytes)

    by_key = {(d.issuer_vat, d.document_number): d for d in generated}
    assert len(by_key) == len(generated)
    structures = {d.structure_sts11 for d in generated}
    seen: Counter[tuple[str, str]] = Counter()
    for f in files:
        # room for the C.F. proprietario the TS gateway adds at the send (services.ts_gateway.operations)
        assert f["bytes"] <= max_zip_bytes - cf_proprietario_room(max_zip_bytes)
        written = _validate_zip(store.path(f["sha256"]), f["name"], official)
        assert len(written) == f["records"]
        for w in written:
            seen[(w.pIva, w.number)] += 1
            doc = by_key[(w.pIva, w.number)]
            assert w.flag_opposizione == ("1" if doc.patient_objection else "0")
            if doc.patient_objection:
                assert w.cf_cittadino is None, f"{doc.source_id}: an objecting patient carries a cfCittadino"
            else:
                assert w.cf_cittadino is not None and decrypt_with_key(keys[1], w.cf_cittadino) == doc.patient_cf
            assert w.items == [(i.spending_type, i.flag_spending_type, f"{i.amount:.2f}") for i in doc.items]
    # one documentoSpesa per generated payment document: none lost, none twice
    assert sum(seen.values()) == len(generated)
    assert seen == Counter(by_key.keys())
    # every structure of the month has its own submission(s); parts are numbered 1..N across the instance
    assert {f["name"].split("_")[2] for f in files} == structures
    assert [f["part"] for f in files] == list(range(1, len(files) + 1))
    assert all(f["name"].endswith(f"_{INSTANCE}_p{f['part']}.zip") for f in files)
    if max_zip_bytes < TS_MAX_ZIP_BYTES:
        assert len(files) > len(structures), "the small limit should split at least one structure"
    # the generator's mix reached the file: tickets, intramoenia visits, objections
    kinds = Counter(i.spending_type for d in generated for i in d.items)
    assert kinds["TK"] > 0 and kinds["SR"] > 0 and any(d.patient_objection for d in generated)


async def test_a_730_loaded_for_the_month_alone_holds_exactly_the_documents_paid_in_it(
        pool, generated, certificate, official, tmp_path):
    store = FileStore(tmp_path / "files")
    start, end = month_period(MONTH)
    files = await _format(pool, certificate, store, (start, end))
    written = Counter((w.pIva, w.number) for f in files
                      for w in _validate_zip(store.path(f["sha256"]), f["name"], official))
    assert written == Counter((d.issuer_vat, d.document_number) for d in generated if start <= d.payment_date <= end)


def test_every_payment_document_generated_for_a_month_is_paid_in_that_month():
    start, end = month_period(MONTH)
    outside = [(d.source_id, d.payment_date) for d in generate(ENTE, MONTH, SERVICES, seed=SEED)
               if isinstance(d, PaymentDocument) and not start <= d.payment_date <= end]
    assert outside == []
