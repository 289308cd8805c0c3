"""From opening to taken in charge on the real PostgreSQL: event store, outbox, dashboard projection."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from contracts.onboarding import SOURCE, RequestKind, RequestOpened, Spoke
from services.onboarding import handlers
from services.onboarding.projection import DashboardProjection, dashboard
from services.onboarding.requirements import load_requirements
from services.onboarding.switch import SwitchCalendar, load_patron_days
from services.runtime.db import create_pool
from services.runtime.eventstore import EventStore
from services.runtime.filestore import FileStore
from services.runtime.projections import rebuild_and_diff
from tests.fixtures.onboarding.workbooks import HUB, NAPOLI, PARTENOPE, POSILLIPO, aggregation_rows, csv_bytes, workbook

pytestmark = pytest.mark.integration
MONDAY_2_MARCH = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)


@pytest.fixture
async def deps(fresh_db: str, tmp_path: Path) -> AsyncIterator[handlers.OnboardingDeps]:
    pool = await create_pool(fresh_db)
    projection = DashboardProjection()
    try:
        yield handlers.OnboardingDeps(pool=pool, store=EventStore(pool, source=SOURCE, projections=[projection]),
                                      files=FileStore(tmp_path / "files"), calendar=SwitchCalendar(load_patron_days()),
                                      clock=lambda: MONDAY_2_MARCH)
    finally:
        await pool.close()


def vesuvio(request_id: str) -> RequestOpened:
    return RequestOpened(request_id=request_id, kind=RequestKind.NEW_AGGREGATION,
                         structure_name="Laboratorio Analisi Vesuvio", structure_sts11=HUB, municipality_istat=NAPOLI,
                         spokes=[Spoke(sts11=PARTENOPE, name="Lab Partenope", already_on_cup=True),
                                 Spoke(sts11=POSILLIPO, name="Lab Posillipo")],
                         requirements_version=load_requirements().version, opened_at=MONDAY_2_MARCH,
                         opened_by="desk:esposito")


ACTS = [
    ("delibera.pdf", "accreditation-resolution", {"protocol": "DCA 2025/41", "date": "2025-11-03"}),
    ("suap.pdf", "suap-authorisation", {"protocol": "SUAP-NA-2025-118"}),
    ("riconfigurazione.pdf", "spoke-reconfiguration-act", {"protocol": "2026/12", "signed": "yes"}),
    ("chiusura-partenope.pdf", "spoke-closure-act", {"protocol": "2026/13", "signed": "yes",
                                                     "spoke_sts11": PARTENOPE}),
    ("richiesta.pdf", "formal-request-aggregation", {"protocol": "2026/14", "signed": "yes",
                                                     "software_house": "Medisoft Campania"}),
]


async def test_an_aggregation_goes_from_opening_to_taken_in_charge(deps):
    rid = "ONB-VESUVIO-1"
    await handlers.open_request(deps, vesuvio(rid), "desk:esposito")
    [row] = await dashboard(deps.pool)
    assert (row["status"], row["required"], row["present"]) == ("incomplete", 13, 0)

    wrong = aggregation_rows()
    wrong["Prestazioni"][1][3] = "150999"
    added = await handlers.add_document(deps, rid, "annex-a1.xlsx", workbook(wrong), "tracciati", {}, "desk:esposito")
    assert len([e for e in added.events if type(e).__name__ == "DocumentReceived"]) == 8
    [row] = await dashboard(deps.pool)
    assert row["status"] == "non-compliant" and (row["present"], row["compliant"]) == (8, 7)
    assert row["non_compliant"]["tracciato-prestazioni"] == [
        "foglio Prestazioni, riga 3, campo IUP_SSA_CODE, cella D3: 150999 non è l'STS11 dell'HUB 150123"]

    fixed = csv_bytes("Prestazioni", aggregation_rows()["Prestazioni"])
    await handlers.add_document(deps, rid, "Prestazioni.csv", fixed, "tracciato-prestazioni", {}, "desk:esposito")
    for filename, doc_type, meta in ACTS[:-1]:
        await handlers.add_document(deps, rid, filename, b"%PDF-1.7 " + filename.encode(), doc_type, meta, "desk")
    [row] = await dashboard(deps.pool)
    assert row["status"] == "incomplete" and row["missing"] == ["formal-request-aggregation"]

    filename, doc_type, meta = ACTS[-1]
    await handlers.add_document(deps, rid, filename, b"%PDF-1.7 request", doc_type, meta, "desk:esposito")

    [row] = await dashboard(deps.pool)
    assert row["status"] == "taken-in-charge"
    assert (row["completed_on"], row["expected_from"], row["expected_to"]) == (
        date(2026, 3, 2), date(2026, 3, 30), date(2026, 4, 13))
    assert row["summary"] == "13 di 13 presenti, tutti conformi"

    assert await deps.store.verify_stream(f"onboarding-{rid}") == []
    report = await rebuild_and_diff(deps.pool, [DashboardProjection()])
    assert report.differences == [] and report.events_replayed > 20
    topics = {r["topic"] for r in await deps.pool.fetch("SELECT DISTINCT topic FROM outbox")}
    assert {"onboarding.request-opened", "onboarding.document-assessed", "onboarding.taken-in-charge"} <= topics


async def test_the_same_file_added_twice_changes_nothing(deps):
    rid = "ONB-VESUVIO-2"
    await handlers.open_request(deps, vesuvio(rid), "desk")
    content = csv_bytes("Agende", aggregation_rows()["Agende"])
    await handlers.add_document(deps, rid, "Agende.csv", content, "tracciato-agende", {}, "desk")
    version = await deps.store.stream_version(f"onboarding-{rid}")
    again = await handlers.add_document(deps, rid, "Agende.csv", content, "tracciato-agende", {}, "desk")
    assert again.events == [] and await deps.store.stream_version(f"onboarding-{rid}") == version
