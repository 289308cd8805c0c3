"""Every check on PostgreSQL: a record that breaks it is named, a clean one beside it is not; and a
generated load fails with exactly the planted records named, while a clean one is Checked."""

from __future__ import annotations

import csv
import io
import unicodedata
from collections.abc import AsyncIterator
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import asyncpg
import pytest

from contracts.feedback import FeedbackLine
from contracts.sources import DeliveredService, IntramoeniaBooking, PaymentDocument, SourceModel
from services.formatter.engine import run_format
from services.formatter.layouts import load_layout
from services.loader import checks
from services.loader.checks import PLANS, CfCheck, _run_cf_checks
from services.loader.intake import store, store_services
from services.loader.pipeline import LoadOutcome, run_load
from services.runtime.filestore import FileStore
from simulators.cup.generator import generate

pytestmark = pytest.mark.integration
AUGUST = (date(2020, 8, 1), date(2020, 8, 31))


@pytest.fixture(autouse=True, params=["one connection", "parallel"])
def checks_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test on both paths of run_checks: a small snapshot is checked on one connection, a large one by
    parallel rule sets (the threshold at -1 sends these small snapshots down the large loads' path)."""
    if request.param == "parallel":
        monkeypatch.setattr(checks, "SMALL_SNAPSHOT", -1)
    return str(request.param)


def ecg(source_id: str, prescription_id: str, **changes: Any) -> DeliveredService:
    """Mario Rossi's ECG (89.52, 11.62 euro, ticket paid) in a Naples district on 5 August 2020."""
    values: dict[str, Any] = dict(
        source_id=source_id, ente="204", structure_sts11="004101", patient_cf="RSSMRA80A01F839W",
        patient_surname="ROSSI", patient_name="MARIO", patient_sex="M", patient_birth_date=date(1980, 1, 1),
        patient_residence_istat="063049", prescription_id=prescription_id,
        prescription_number="150A" + str(sum(map(ord, prescription_id))).zfill(12),
        prescription_date=date(2020, 8, 1), booking_date=date(2020, 8, 2), priority="D", catalogue_code="89.52",
        quantity=1, delivery_date=date(2020, 8, 5), tariff=Decimal("11.62"), ticket=Decimal("11.62"))
    values.update(changes)
    return DeliveredService(**values)


def bad(**changes: Any) -> list[DeliveredService]:
    return [ecg("B-1", "RX-BAD", **changes)]



# code, field, the bad prescription, expected record key, optional SQL applied to the source rows, and the
# message the operator reads (Italian, naming the values, days and amounts written as Italians write them:
# 05/08/2020, 1.234,50 €; codes as they are: 89.52): every rule family's text is pinned here
_CF_FORMAT = ("il codice fiscale RSSMRA80Z01F839W non è formalmente corretto (lettere, cifre, mese o giorno in "
              "posizioni sbagliate)")
_OUTSIDE = ("la data di erogazione 10/06/2020 è fuori dal periodo ammesso, dal 01/07/2020 al 31/08/2020 (il periodo "
            "del caricamento e, per una ricetta a cavallo di due periodi, quello precedente)")
_OK_NUMBER = "150A" + str(sum(map(ord, "RX-OK"))).zfill(12)  # RX-OK's prescription number (ecg)
CASES: list[tuple[str, str, list[DeliveredService], str, str | None, str]] = [
    ("CF_CHECK_CHAR", "patient_cf", bad(patient_cf="RSSMRA80A01F839X"), "B-1@RX-BAD/01", None,
     "il carattere di controllo del codice fiscale RSSMRA80A01F839X dovrebbe essere W, non X"),
    ("CF_FORMAT", "patient_cf", bad(patient_cf="RSSMRA80Z01F839W"), "B-1@RX-BAD/01", None, _CF_FORMAT),
    ("CF_BIRTH_MISMATCH", "patient_cf", bad(patient_birth_date=date(1980, 1, 2)), "B-1@RX-BAD/01", None,
     "il codice fiscale RSSMRA80A01F839W non corrisponde alla data di nascita 02/01/1980"),
    ("CF_SEX_MISMATCH", "patient_cf", bad(patient_sex="F"), "B-1@RX-BAD/01", None,
     "il codice fiscale RSSMRA80A01F839W non corrisponde al sesso F"),
    ("DATE_OUTSIDE_PERIOD", "delivery_date",
     [ecg("B-1", "RX-BAD", delivery_date=date(2020, 6, 10), prescription_date=None, booking_date=None),
      ecg("B-2", "RX-BAD")], "B-1@RX-BAD/01", None, _OUTSIDE),
    ("DELIVERY_BEFORE_PRESCRIPTION", "delivery_date", bad(prescription_date=date(2020, 8, 20)), "B-1@RX-BAD/01", None,
     "la data di erogazione 05/08/2020 è precedente alla data di prescrizione 20/08/2020"),
    ("BOOKING_AFTER_DELIVERY", "booking_date", bad(booking_date=date(2020, 8, 20)), "B-1@RX-BAD/01", None,
     "la data di prenotazione 20/08/2020 è successiva alla data di erogazione 05/08/2020"),
    ("BIRTH_AFTER_DELIVERY", "patient_birth_date", bad(patient_birth_date=date(2020, 8, 6)), "B-1@RX-BAD/01", None,
     "la data di nascita 06/08/2020 è successiva alla data di erogazione 05/08/2020"),
    ("UNKNOWN_SERVICE_CODE", "catalogue_code", bad(catalogue_code="89.99.9"), "B-1@RX-BAD/01", None,
     "il codice prestazione 89.99.9 (codifica N) non è presente nel catalogo 2020"),
    ("QUANTITY_NOT_POSITIVE", "quantity", bad(), "B-1@RX-BAD/01",
     "UPDATE source_service SET quantity = 0 WHERE source_id = 'B-1'", "la quantità 0 è inferiore a 1"),
    ("AMOUNT_NEGATIVE", "tariff", bad(), "B-1@RX-BAD/01",
     "UPDATE source_service SET tariff = -1 WHERE source_id = 'B-1'", "la tariffa -1,00 € è negativa"),
    ("AMOUNT_NEGATIVE", "ticket", bad(), "B-1@RX-BAD/01",
     "UPDATE source_service SET ticket = -1 WHERE source_id = 'B-1'", "il ticket -1,00 € è negativo"),
    ("AMOUNT_TOO_LARGE", "tariff", bad(catalogue_code="13.41", tariff=Decimal("903.42"), quantity=999),
     "B-1@RX-BAD/01", None, "il totale di riga 999 x 903,42 € = 902.516,58 € supera 99.999,99 €"),
    ("AMOUNT_TOO_LARGE", "tariff", bad(catalogue_code="13.41", tariff=Decimal("903.42"), quantity=999),
     "B-1@RX-BAD/99", None, "il totale netto 902.504,96 € supera 99.999,99 €"),
    ("AMOUNT_TOO_LARGE", "ticket", bad(), "B-1@RX-BAD/99",
     "UPDATE source_service SET ticket = 12345.6 WHERE source_id = 'B-1'", "il ticket 12.345,60 € supera 9.999,99 €"),
    ("TARIFF_DIFFERS_FROM_CATALOGUE", "tariff", bad(tariff=Decimal("12.00"), ticket=Decimal("12.00")),
     "B-1@RX-BAD/01", None, "la tariffa 12,00 € è diversa dalla tariffa 11,62 € del catalogo per la prestazione 89.52"),
    ("TOO_MANY_SERVICES", "row_number",
     [ecg(f"B-{i:02d}", "RX-BAD", catalogue_code="90.27.1", tariff=Decimal("1.17"),
          ticket=Decimal("0.00") if i > 1 else Decimal("36.15")) for i in range(1, 100)], "B-99@RX-BAD/99", None,
     "prestazione 99 della ricetta RX-BAD: una ricetta può avere al massimo 98 prestazioni"),
    ("STRUCTURE_NOT_IN_ENTE", "structure_sts11", bad(structure_sts11="001101"), "B-1@RX-BAD/01", None,
     "la struttura 001101 non è una struttura dell'ente 204"),
    ("ANONYMOUS_PATIENT_NAMED", "patient_surname", bad(patient_cf=None), "B-1@RX-BAD/01", None,
     "il codice fiscale è assente, cosa ammessa solo per l'anonimato previsto dalla legge, ma il cognome è ROSSI: per "
     "un paziente tutelato va indicato ANONIMO"),
    ("SURNAME_TOO_LONG", "patient_surname", bad(patient_surname="ROSSI DI SANTA MARIA CAPUA VETERE"),
     "B-1@RX-BAD/01", None,
     "il cognome ROSSI DI SANTA MARIA CAPUA VETERE ha 33 caratteri in ASCII: sarà troncato a 30"),
    ("NAME_TOO_LONG", "patient_name", bad(patient_name="MARIO GENNARO SALVATORE"), "B-1@RX-BAD/01", None,
     "il nome MARIO GENNARO SALVATORE ha 23 caratteri in ASCII: sarà troncato a 20"),
    ("CHARSET", "patient_surname", bad(patient_surname="ИВАНОВ"), "B-1@RX-BAD/01", None,
     "il valore ИВАНОВ del campo Cognome contiene caratteri senza traslitterazione in ASCII, che il tracciato FLUSSO_C "
     "2020 non può scrivere: И (U+0418), В (U+0412), А (U+0410), Н (U+041D), О (U+041E)"),
    ("CHARSET", "patient_name", bad(patient_name="ΩDIPE"), "B-1@RX-BAD/01", None,
     "il valore ΩDIPE del campo Nome contiene caratteri senza traslitterazione in ASCII, che il tracciato FLUSSO_C "
     "2020 non può scrivere: Ω (U+03A9)"),
    ("CHARSET", "prescriber_code", bad(prescriber_code="MED\\01"), "B-1@RX-BAD/01", None,
     "il valore MED\\01 del campo Medico prescrittore contiene caratteri senza traslitterazione in ASCII, che il "
     "tracciato FLUSSO_C 2020 non può scrivere: \\ (U+005C)"),
    ("EXEMPTION_REQUIRED", "exemption_code", bad(ticket=Decimal("0.00")), "B-1@RX-BAD/99", None,
     "nessun ticket pagato su 11,62 € di prestazioni e nessun codice di esenzione"),
    ("EXEMPTION_REQUIRED", "exemption_code", bad(ticket=Decimal("0.00"), exemption_code="  "), "B-1@RX-BAD/99",
     None, "nessun ticket pagato su 11,62 € di prestazioni e nessun codice di esenzione"),  # blank: written as none
    ("AMOUNT_ARITHMETIC", "ticket", bad(ticket=Decimal("50.00")), "B-1@RX-BAD/99", None,
     "il ticket 50,00 € supera il totale delle prestazioni 11,62 € più la quota fissa di 10,00 €"),
    ("DUPLICATE_PRESCRIPTION_NUMBER", "prescription_number",
     bad(prescription_number=_OK_NUMBER), "B-1@RX-BAD/99", None,
     f"il numero ricetta {_OK_NUMBER} è già usato dalla ricetta RX-OK"),
    ("PRESCRIPTION_NUMBER_CHARACTERS", "prescription_number", bad(prescription_number="150A-0000/00 001"),
     "B-1@RX-BAD/99", None, "il numero ricetta 150A-0000/00 001 contiene caratteri diversi da lettere e cifre: va "
     "indicato senza caratteri speciali (NRE o codice a barre, o il progressivo per l'accesso diretto)"),
    ("PRESCRIPTION_FIELD_DIFFERS", "priority", [ecg("B-1", "RX-BAD"), ecg("B-2", "RX-BAD", priority="U")],
     "B-1@RX-BAD/99", None, "le prestazioni della ricetta RX-BAD non riportano tutte la stessa classe di priorità"),
    # what C1 writes on every row of a prescription, and the region of the C1-C2 key (one case each: _differs)
    ("PRESCRIPTION_FIELD_DIFFERS", "region", [ecg("B-1", "RX-BAD"), ecg("B-2", "RX-BAD", region="160")],
     "B-1@RX-BAD/99", None, "le prestazioni della ricetta RX-BAD non riportano tutte la stessa regione addebitante"),
    ("PRESCRIPTION_FIELD_DIFFERS", "patient_name", [ecg("B-1", "RX-BAD"), ecg("B-2", "RX-BAD", patient_name="MARIA")],
     "B-1@RX-BAD/99", None, "le prestazioni della ricetta RX-BAD non riportano tutte lo stesso nome del paziente"),
    ("PRESCRIPTION_FIELD_DIFFERS", "patient_residence_asl",
     [ecg("B-1", "RX-BAD"), ecg("B-2", "RX-BAD", patient_residence_asl="201")], "B-1@RX-BAD/99", None,
     "le prestazioni della ricetta RX-BAD non riportano tutte la stessa ASL di residenza del paziente"),
    ("STRUCTURE_TYPE_DIFFERS", "structure_type", bad(structure_sts11="004150"), "B-1@RX-BAD/01", None,
     "la struttura 004150 è privata accreditata nell'anagrafe delle strutture (tipo 2), ma la prestazione la indica "
     "di tipo 1"),
    # upper case in the file: a number or an ID that differs only in case is another's there
    ("DUPLICATE_PRESCRIPTION_NUMBER", "prescription_number",
     bad(prescription_number=_OK_NUMBER.lower()), "B-1@RX-BAD/99", None,
     f"il numero ricetta {_OK_NUMBER.lower()} è già usato dalla ricetta RX-OK"),
    ("DUPLICATE_PRESCRIPTION_ID", "prescription_id", [ecg("B-1", "rx-ok", prescription_number="150A000000000042")],
     "B-1@rx-ok/99", None, "l'identificativo della ricetta 'rx-ok' nel file si scrive 'RX-OK', come quello della "
     "ricetta 'RX-OK': due ricette con la stessa chiave"),
    # padded with spaces in the file: a trailing space is another's ID there too
    ("DUPLICATE_PRESCRIPTION_ID", "prescription_id", [ecg("B-1", "RX-OK ", prescription_number="150A000000000042")],
     "B-1@RX-OK /99", None, "l'identificativo della ricetta 'RX-OK ' nel file si scrive 'RX-OK', come quello della "
     "ricetta 'RX-OK': due ricette con la stessa chiave"),
    ("PRESCRIPTION_ID_BLANK", "prescription_id", [ecg("B-1", "   ", prescription_number="150A000000000042")],
     "B-1@   /99", None, "l'identificativo della ricetta '   ' è fatto solo di spazi: nel file sarebbe vuoto, e le "
     "righe della ricetta resterebbero senza chiave"),
]


# The edges of the checks, each through a real load: a prescription exactly AT the edge (no problem of that code
# and field) beside one a unit (a cent, a day) PAST it (named, with its message). Moving an edge by one unit in
# services/loader/checks.py (a constant, `>` for `>=`) fails its case. The edges pinned elsewhere: a row past 98
# (test_rows_past_98...), a quantity of 1 (the clean RX-OK above), a name of 30/31 characters in ASCII
# (test_a_name_that_grows..., tests/integration/test_name_length_sql.py).
def _rx(key: str, rows: int = 1, **changes: Any) -> list[DeliveredService]:
    """Prescription RX-<key> of `rows` services <key>-1.. (the first row's changes, then `row2` for the second)."""
    second = changes.pop("row2", {})
    return [ecg(f"{key}-{i}", f"RX-{key}", **(changes if i == 1 else {**changes, **second}))
            for i in range(1, rows + 1)]


_BIG: dict[str, Any] = {"catalogue_code": "13.41"}
_IN_PERIOD: dict[str, Any] = {"prescription_date": None, "booking_date": None}
_AUG_5 = date(2020, 8, 5)
EDGES: list[tuple[str, str, str, list[DeliveredService], list[DeliveredService], str | None, str, str]] = [
    ("row-total-99999.99-100000.00", "AMOUNT_TOO_LARGE", "tariff",
     _rx("AT", quantity=3, tariff=Decimal("33333.33"), ticket=Decimal("36.15"), **_BIG),
     _rx("OVER", quantity=4, tariff=Decimal("25000.00"), ticket=Decimal("36.15"), **_BIG), None,
     "OVER-1@RX-OVER/01", "il totale di riga 4 x 25.000,00 € = 100.000,00 € supera 99.999,99 €"),
    ("net-total-99999.99-100000.00", "AMOUNT_TOO_LARGE", "tariff",
     _rx("AT", 2, tariff=Decimal("50000.00"), ticket=Decimal("0.01"), row2=dict(ticket=Decimal("0.00")), **_BIG),
     _rx("OVER", 2, tariff=Decimal("50000.00"), ticket=Decimal("0.01"),
         row2=dict(tariff=Decimal("50000.01"), ticket=Decimal("0.00")), **_BIG), None,
     "OVER-1@RX-OVER/99", "il totale netto 100.000,00 € supera 99.999,99 €"),
    ("ticket-total-9999.99-10000.00", "AMOUNT_TOO_LARGE", "ticket",
     _rx("AT", 2, tariff=Decimal("6000.00"), ticket=Decimal("5000.00"), row2=dict(ticket=Decimal("4999.99")),
         **_BIG),
     _rx("OVER", 2, tariff=Decimal("6000.00"), ticket=Decimal("5000.00"), **_BIG), None,
     "OVER-1@RX-OVER/99", "il ticket 10.000,00 € supera 9.999,99 €"),
    ("ticket-over-services-10.00-10.01", "AMOUNT_ARITHMETIC", "ticket",
     _rx("AT", ticket=Decimal("21.62")), _rx("OVER", ticket=Decimal("21.63")), None, "OVER-1@RX-OVER/99",
     "il ticket 21,63 € supera il totale delle prestazioni 11,62 € più la quota fissa di 10,00 €"),
    ("first-allowed-day-07-01-06-30", "DATE_OUTSIDE_PERIOD", "delivery_date",
     _rx("AT", 2, delivery_date=date(2020, 7, 1), row2=dict(delivery_date=_AUG_5), **_IN_PERIOD),
     _rx("OVER", 2, delivery_date=date(2020, 6, 30), row2=dict(delivery_date=_AUG_5), **_IN_PERIOD), None,
     "OVER-1@RX-OVER/01", _OUTSIDE.replace("10/06/2020", "30/06/2020")),
    ("exemption-ticket-0.01-or-services-0.00-ticket-0.00", "EXEMPTION_REQUIRED", "exemption_code",
     _rx("AT", ticket=Decimal("0.01")) + _rx("FREE", tariff=Decimal("0.00"), ticket=Decimal("0.00")),
     _rx("OVER", ticket=Decimal("0.00")), None, "OVER-1@RX-OVER/99",
     "nessun ticket pagato su 11,62 € di prestazioni e nessun codice di esenzione"),
    ("negative-tariff-0.00--0.01", "AMOUNT_NEGATIVE", "tariff",
     _rx("AT", tariff=Decimal("0.00"), ticket=Decimal("0.00")), _rx("OVER"),
     "UPDATE source_service SET tariff = -0.01 WHERE source_id = 'OVER-1'", "OVER-1@RX-OVER/01",
     "la tariffa -0,01 € è negativa"),
    ("negative-ticket-0.00--0.01", "AMOUNT_NEGATIVE", "ticket",
     _rx("AT", ticket=Decimal("0.00"), exemption_code="048"), _rx("OVER"),
     "UPDATE source_service SET ticket = -0.01 WHERE source_id = 'OVER-1'", "OVER-1@RX-OVER/01",
     "il ticket -0,01 € è negativo"),
    ("prescribed-on-the-day-the-day-after", "DELIVERY_BEFORE_PRESCRIPTION", "delivery_date",
     _rx("AT", prescription_date=_AUG_5, booking_date=None), _rx("OVER", prescription_date=date(2020, 8, 6),
                                                                 booking_date=None), None,
     "OVER-1@RX-OVER/01", "la data di erogazione 05/08/2020 è precedente alla data di prescrizione 06/08/2020"),
    ("booked-on-the-day-the-day-after", "BOOKING_AFTER_DELIVERY", "booking_date",
     _rx("AT", booking_date=_AUG_5), _rx("OVER", booking_date=date(2020, 8, 6)), None,
     "OVER-1@RX-OVER/01", "la data di prenotazione 06/08/2020 è successiva alla data di erogazione 05/08/2020"),
    ("born-on-the-day-the-day-after", "BIRTH_AFTER_DELIVERY", "patient_birth_date",
     _rx("AT", patient_birth_date=_AUG_5), _rx("OVER", patient_birth_date=date(2020, 8, 6)), None,
     "OVER-1@RX-OVER/01", "la data di nascita 06/08/2020 è successiva alla data di erogazione 05/08/2020"),
]


@pytest.fixture
async def pool(fresh_db: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(fresh_db, min_size=1, max_size=4) as p:
        yield p


def _feedback(store: FileStore, outcome: LoadOutcome) -> list[dict[str, str]]:
    if outcome.feedback_sha256 is None:
        return []
    with store.open(outcome.feedback_sha256) as f:
        lines = list(csv.DictReader(io.StringIO(f.read().decode("utf-8")), delimiter=";"))
    for line in lines:  # every line is what the contract (schemas/feedback-line.json) says a line is
        FeedbackLine.model_validate(line)
    return lines


async def _load(pool: asyncpg.Pool, store: FileStore, flow: str = "FLUSSO_C", n: int = 1) -> LoadOutcome:
    return await run_load(pool, store, 1946 + 2 * n - 1, 1946 + 2 * n, flow, "2020", "204", *AUGUST)


@pytest.mark.parametrize(("code", "field", "services", "key", "sql", "message"), CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in CASES])
async def test_a_record_breaking_the_check_is_named_and_its_clean_neighbour_is_not(
        pool: asyncpg.Pool, tmp_path: Path, code: str, field: str, services: list[DeliveredService], key: str,
        sql: str | None, message: str) -> None:
    async with pool.acquire() as conn:
        await store_services(conn, [ecg("A-1", "RX-OK"), *services])
        if sql:
            await conn.execute(sql)
    store = FileStore(tmp_path)
    outcome = await _load(pool, store)
    problems = _feedback(store, outcome)
    named = {(p["record_key"], p["code"], p["field"]): p["message"] for p in problems}
    assert (key, code, field) in named, named
    assert named[(key, code, field)] == message  # what the operator reads: Italian, with the values
    assert [p for p in problems if "@RX-OK/" in p["record_key"]] == []
    severity = next(p["severity"] for p in problems if p["code"] == code)
    assert outcome.checked == (severity == "warning" and outcome.errors == 0)


@pytest.mark.parametrize(("code", "field", "at", "over", "sql", "key", "message"), [e[1:] for e in EDGES],
                         ids=[e[0] for e in EDGES])
async def test_a_check_takes_the_record_at_its_edge_and_names_the_one_a_unit_past_it(
        pool: asyncpg.Pool, tmp_path: Path, code: str, field: str, at: list[DeliveredService],
        over: list[DeliveredService], sql: str | None, key: str, message: str) -> None:
    async with pool.acquire() as conn:
        await store_services(conn, [*at, *over])
        if sql:
            await conn.execute(sql)
    store = FileStore(tmp_path)
    outcome = await _load(pool, store)
    named = {p["record_key"]: p["message"] for p in _feedback(store, outcome)
             if (p["code"], p["field"]) == (code, field)}
    assert named == {key: message}
    assert not outcome.checked


@pytest.mark.parametrize(("period", "first_allowed"), [
    ((date(2020, 9, 1), date(2020, 9, 30)), date(2020, 8, 1)),  # 30 days after 31: August whole
    ((date(2021, 3, 1), date(2021, 3, 31)), date(2021, 2, 1)),  # 31 days after 28: February, no day of January
    ((date(2020, 7, 1), date(2020, 9, 30)), date(2020, 4, 1)),  # a quarter: the quarter before
    ((date(2020, 8, 10), date(2020, 8, 19)), date(2020, 7, 31)),  # not whole months: as many days before
], ids=["september", "march", "a-quarter", "ten-days"])
async def test_the_previous_period_a_prescription_may_reach_into_is_whole_months_before_a_monthly_load(
        pool: asyncpg.Pool, tmp_path: Path, period: tuple[date, date], first_allowed: date) -> None:
    """A prescription whose last service is in the period is taken whole, services of the previous period
    included (spec/flusso-c.md). The previous period of a September load is August, 1 to 31: counted in days (30
    before 1 September) it began on 2 August and failed a prescription begun on the 1st; March's began on 29
    January."""
    last = period[1] - timedelta(days=2)
    async with pool.acquire() as conn:
        await store_services(conn, [
            *_rx("AT", 2, delivery_date=first_allowed, row2=dict(delivery_date=last), **_IN_PERIOD),
            *_rx("OVER", 2, delivery_date=first_allowed - timedelta(days=1), row2=dict(delivery_date=last),
                 **_IN_PERIOD)])
    store = FileStore(tmp_path)
    outcome = await run_load(pool, store, 1947, 1948, "FLUSSO_C", "2020", "204", *period)
    named = {p["record_key"]: p["message"] for p in _feedback(store, outcome) if p["code"] == "DATE_OUTSIDE_PERIOD"}
    day = "%d/%m/%Y"
    assert named == {"OVER-1@RX-OVER/01": (
        f"la data di erogazione {first_allowed - timedelta(days=1):{day}} è fuori dal periodo ammesso, dal "
        f"{first_allowed:{day}} al {period[1]:{day}} (il periodo del caricamento e, per una ricetta a cavallo di "
        "due periodi, quello precedente)")}


async def test_a_load_with_planted_bad_records_fails_naming_exactly_those(pool: asyncpg.Pool,
                                                                          tmp_path: Path) -> None:
    generation = generate("204", "2020-08", 6000, seed=1947, bad=13)
    await _store_all(pool, generation)
    store = FileStore(tmp_path)
    outcome = await _load(pool, store)
    named = {(p["record_key"], p["code"], p["field"]) for p in _feedback(store, outcome)}
    assert named == {(p.record_key, p.code, p.field) for p in generation.planted}
    assert not outcome.checked and (outcome.errors, outcome.warnings) == (12, 1)
    assert outcome.summary.startswith("12 errori in 12 record: ") and "; 1 avviso: 1 x " in outcome.summary, \
        outcome.summary


async def test_clean_generated_data_is_checked_for_every_flow_type(pool: asyncpg.Pool, tmp_path: Path) -> None:
    await _store_all(pool, generate("204", "2020-08", 4000, seed=1948))
    store = FileStore(tmp_path)
    for n, flow in enumerate(("FLUSSO_C", "FLUSSO_C_PACC", "FLUSSO_MEF", "FLUSSO_ALPI_TA", "FLUSSO_730"), start=1):
        outcome = await _load(pool, store, flow, n)
        assert (outcome.checked, outcome.errors, outcome.warnings, outcome.feedback_sha256) == (True, 0, 0, None)
        assert sum(outcome.counts.values()) > 0, flow


async def test_running_a_load_again_gives_the_same_outcome(pool: asyncpg.Pool, tmp_path: Path) -> None:
    await _store_all(pool, generate("204", "2020-08", 1500, seed=1949, bad=3))
    store = FileStore(tmp_path)
    first = await _load(pool, store)
    async with pool.acquire() as conn:
        await store_services(conn, [ecg("LATE-1", "RX-LATE")])
    again = await _load(pool, store)
    assert again == first


async def _store_all(pool: asyncpg.Pool, records: Any) -> None:
    batches: dict[type[SourceModel], list[SourceModel]] = {DeliveredService: [], PaymentDocument: [],
                                                           IntramoeniaBooking: []}
    kinds = {DeliveredService: "delivered-service", PaymentDocument: "payment-document",
             IntramoeniaBooking: "intramoenia-booking"}
    for record in records:
        batches[type(record)].append(record)
    async with pool.acquire() as conn:
        for model, batch in batches.items():
            await store(conn, kinds[model], batch)


async def test_the_codice_fiscale_check_in_small_batches_names_the_same_records(pool: asyncpg.Pool,
                                                                                tmp_path: Path) -> None:
    """The distinct codes are read through a cursor a batch at a time: batches of 3 (hundreds of
    batches here) must name exactly what one batch names, so nothing is lost between batches."""
    generation = generate("204", "2020-08", 3000, seed=1950, bad=13)
    await _store_all(pool, generation)
    outcome = await _load(pool, FileStore(tmp_path))
    assert not outcome.checked
    snapshot = 1948
    planted_cf = {p.record_key for p in generation.planted if p.code.startswith("CF_")}
    assert planted_cf, "the generator planted no codice fiscale problem"

    async def cf_problems(batch: int) -> tuple[CfCheck, set[tuple[str, str, str]]]:
        async with pool.acquire() as conn:
            await conn.execute("DELETE FROM load_problem WHERE snapshot_id = $1 AND field = 'patient_cf'", snapshot)
        found = await _run_cf_checks(pool, PLANS["snapshot_service"], snapshot, batch=batch)
        rows = await pool.fetch("SELECT record_key, code, message FROM load_problem "
                                "WHERE snapshot_id = $1 AND field = 'patient_cf'", snapshot)
        return found, {(r["record_key"], r["code"], r["message"]) for r in rows}

    distinct = await pool.fetchval("SELECT count(DISTINCT patient_cf) FROM snapshot_service WHERE snapshot_id = $1",
                                   snapshot)
    assert distinct > 300
    found_small, small = await cf_problems(3)
    found_one, whole = await cf_problems(1_000_000)
    assert small == whole and found_small.findings == found_one.findings > 0
    assert {key for key, _, _ in small} == planted_cf
    # the patients are counted across the batches too: a code whose rows straddle two batches counts once
    assert found_small.codes == found_one.codes == distinct
    assert (found_small.records, found_small.first_rows) == (found_one.records, found_one.first_rows)
    # the load's counts, on both paths of run_checks, are what SQL counts in the snapshot
    assert outcome.counts == dict(await pool.fetchrow(
        "SELECT count(*) AS services, count(DISTINCT prescription_id) AS prescriptions, "
        "count(DISTINCT patient_cf) AS patients FROM snapshot_service WHERE snapshot_id = $1", snapshot))


async def test_a_name_that_grows_past_its_field_in_ascii_gets_a_warning(pool: asyncpg.Pool, tmp_path: Path) -> None:
    """29 characters fit the 30 of C1; with two `Ò` (`O'` in ASCII) they are 31 and will be cut."""
    grows = "NICOLÒ DELLA VALLE SANT'ANDRÒ"
    assert len(grows) == 29
    fits = "DELLA VALLE DI SANTA MARIA CAP"  # 30 ASCII characters: no cut, no warning
    async with pool.acquire() as conn:
        await store_services(conn, [ecg("A-1", "RX-OK", patient_surname=fits),
                                    ecg("B-1", "RX-GROWS", patient_surname=grows, patient_name="NICOLÒÈÀÙÌ ÒÈÀÙÌÒÈÀ")])
    store = FileStore(tmp_path)
    outcome = await _load(pool, store)
    problems = {(p["record_key"], p["code"], p["field"]): p["message"] for p in _feedback(store, outcome)}
    assert set(problems) == {("B-1@RX-GROWS/01", "SURNAME_TOO_LONG", "patient_surname"),
                             ("B-1@RX-GROWS/01", "NAME_TOO_LONG", "patient_name")}
    assert problems[("B-1@RX-GROWS/01", "SURNAME_TOO_LONG", "patient_surname")] == \
        f"il cognome {grows} ha 31 caratteri in ASCII: sarà troncato a 30"
    assert outcome.checked and outcome.warnings == 2


async def test_the_loader_warns_about_exactly_the_names_the_formatter_cuts(pool: asyncpg.Pool, tmp_path: Path) -> None:
    """A real load, then a real format of its snapshot: a name is warned about at load if and only if the formatter
    cuts it. Characters the formatter writes through NFKD grow (`ﬁ` -> `FI`; `⑽` -> `(10)`, 4 characters from 3
    UTF-8 bytes, past the byte-count guard) or vanish (a combining accent on a letter it does not compose with): the
    loader counted each as one. A combining grave on `A` composes (NFC) to `À`, written `A'`: it grows by one."""
    surnames = {"B-1": "\ufb01\ufb01" + "A" * 27,  # 29 characters, 31 in ASCII: cut
                "B-2": "A" * 29 + "X\u0300",  # 31 characters, 30 in ASCII (no X with a grave: dropped): not cut
                "B-3": "\ufb01" + "A" * 28,  # 29 characters, 30 in ASCII: not cut
                "B-4": "A" * 30 + "\u0300"}  # 31 characters, `À` at the end, 31 in ASCII: cut
    names = {"B-1": "MARIO", "B-2": "\u247d" * 5 + "A",  # 6 characters (16 bytes), 21 in ASCII: cut
             "B-3": "\u247d" * 5, "B-4": "MARIO"}  # 5 characters, 20 in ASCII: not cut
    async with pool.acquire() as conn:
        await store_services(conn, [ecg(key, f"RX-{key}", patient_surname=surnames[key], patient_name=names[key])
                                    for key in surnames])
    store = FileStore(tmp_path)
    loaded = await _load(pool, store)
    warned = {(p["record_key"].split("@")[0], p["field"]): p["message"] for p in _feedback(store, loaded)}
    formatted = await run_format(pool, store, 1947, 1948, "FLUSSO_C", "2020")
    assert formatted.ok and formatted.stats is not None
    cut = {(p.record.split()[1], {"C1.surname": "patient_surname", "C1.name": "patient_name"}[p.field])
           for p in formatted.stats.warnings if p.code == "TRUNCATED"}
    assert cut == {("B-1", "patient_surname"), ("B-2", "patient_name"), ("B-4", "patient_surname")}, formatted.warnings
    assert set(warned) == cut, warned
    assert warned[("B-1", "patient_surname")] == \
        f"il cognome {surnames['B-1']} ha 31 caratteri in ASCII: sarà troncato a 30"
    assert warned[("B-2", "patient_name")] == f"il nome {names['B-2']} ha 21 caratteri in ASCII: sarà troncato a 20"
    assert warned[("B-4", "patient_surname")] == \
        f"il cognome {surnames['B-4']} ha 31 caratteri in ASCII: sarà troncato a 30"


# One patient's names as two systems send them: composed (NFC: `Ò` one code point, as most do) and decomposed (NFD:
# `O` then a combining grave U+0300, as macOS and some keyboards do). The surname is 29 characters, 31 in ASCII: cut
# to 30 and warned about; the name 20 in ASCII: it fits. Decomposed, they were written without the apostrophes
# (`NICOLO DELLA VALLE SANT'ANDRO`, 29: not cut, no warning) and the two files of one patient differed.
_COMPOSED = {"patient_surname": "NICOLÒ DELLA VALLE SANT'ANDRÒ", "patient_name": "NICOLÒ PIÈR ÀNGEL"}


async def test_names_in_either_unicode_form_load_and_format_to_the_same_bytes_and_warnings(
        pool: asyncpg.Pool, tmp_path: Path) -> None:
    """A real load and a real format of the composed names, then of the same rows rewritten decomposed
    (normalize(..., NFD) in PostgreSQL): the same warnings at load (messages alike but for the name as it was sent),
    the same cut at format, byte-identical C1 and C2 files."""
    assert all(len(unicodedata.normalize("NFD", v)) > len(v) for v in _COMPOSED.values())
    async with pool.acquire() as conn:
        await store_services(conn, [ecg("F-1", "RX-F", **_COMPOSED), ecg("F-2", "RX-F", **_COMPOSED)])
    store = FileStore(tmp_path)
    seen = []
    forms: tuple[tuple[int, Literal["NFC", "NFD"]], ...] = ((1, "NFC"), (2, "NFD"))
    for n, form in forms:
        if form == "NFD":
            async with pool.acquire() as conn:
                await conn.execute("UPDATE source_service SET patient_surname = normalize(patient_surname, NFD), "
                                   "patient_name = normalize(patient_name, NFD)")
        stored = await pool.fetch("SELECT patient_surname, patient_name FROM source_service")
        assert {tuple(r) for r in stored} == {tuple(unicodedata.normalize(form, v) for v in _COMPOSED.values())}
        loaded = await _load(pool, store, n=n)
        assert loaded.checked and (loaded.errors, loaded.warnings) == (0, 2), loaded.summary
        warned = sorted((p["record_key"], p["code"], p["field"], unicodedata.normalize("NFC", p["message"]))
                        for p in _feedback(store, loaded))
        formatted = await run_format(pool, store, 1945 + 2 * n, 1946 + 2 * n, "FLUSSO_C", "2020")
        assert formatted.ok, formatted.reasons
        files = {f.kind: store.path(f.sha256).read_bytes() for f in formatted.files}
        seen.append((warned, formatted.warnings, files))
    (warned, cut, files), decomposed = seen
    assert decomposed == seen[0]
    assert warned == [(f"F-{i}@RX-F/0{i}", "SURNAME_TOO_LONG", "patient_surname",
                       f"il cognome {_COMPOSED['patient_surname']} ha 31 caratteri in ASCII: sarà troncato a 30")
                      for i in (1, 2)]
    said = "C1.surname TRUNCATED: \"NICOLO' DELLA VALLE SANT'ANDRO'\" troncato a 30 caratteri"
    assert [w.split(": ", 1)[1] for w in cut] == [said] * 2, cut
    assert b"NICOLO' DELLA VALLE SANT'ANDRONICOLO' PIE'R A'NGEL   " in files["C1"]


# Values the formatter writes (transliterated: `NICOLÒ` -> `NICOLO'`, `Ç` -> `C`, `ß` -> `SS`, a combining accent
# dropped, `ﬁ` -> `FI`) and values it cannot (CHARSET when it formats): Cyrillic, Greek `Ω`, CJK, a backslash, the
# fullwidth backslash whose NFKD is one, a Cyrillic letter in a text the layout writes other than a name.
_WRITTEN: dict[str, dict[str, Any]] = {
    "W-1": dict(patient_surname="NICOLÒ DELL'ÀNCORA", patient_name="NICOLÒ"),
    "W-2": dict(patient_surname="ÇELIK", patient_name="GRÜß"),
    "W-3": dict(patient_surname="E\u0301SPOSITO", patient_name="\ufb01LIPPO", prescriber_code="DR’ROSSI"),
    "W-4": dict(patient_surname="ĐOKOVIĆ", patient_name="ŁUKASZ"),  # letters NFKD leaves alone, written as read
    "W-5": dict(patient_surname="YıLDıRıM ŒUVRAY", patient_name="ÞÓRA"),
}
_NOT_WRITTEN: dict[str, dict[str, Any]] = {
    "N-1": dict(patient_surname="ИВАНОВ"),
    "N-2": dict(patient_name="ΩDIPE"),
    "N-3": dict(patient_surname="王", patient_name="小明"),
    "N-4": dict(prescriber_code="MED\\01"),
    "N-5": dict(prescriber_code="MED\uff3c01"),
    "N-6": dict(prescription_number="150AБ00000000001"),
}


async def test_a_character_the_format_could_not_write_fails_the_load_naming_record_and_field(
        pool: asyncpg.Pool, tmp_path: Path) -> None:
    """The loader names, as CHARSET errors, exactly the values the formatter then fails with CHARSET: a real load,
    then a real format of its snapshot. Accented Italian names, `Ç`, `ß`, a combining accent are written, not named."""
    services = [ecg(key, f"RX-{key}", **changes) for key, changes in {**_WRITTEN, **_NOT_WRITTEN}.items()]
    async with pool.acquire() as conn:
        await store_services(conn, services)
    store = FileStore(tmp_path)
    loaded = await _load(pool, store)
    named = {(p["record_key"], p["field"]): p for p in _feedback(store, loaded) if p["code"] == "CHARSET"}
    assert set(named) == {(f"{key}@RX-{key}/01", field) for key, changes in _NOT_WRITTEN.items()
                          for field in changes}, named
    assert {p["severity"] for p in named.values()} == {"error"} and not loaded.checked
    assert "CHARSET" in loaded.summary
    assert named[("N-5@RX-N-5/01", "prescriber_code")]["message"] == (
        "il valore MED\uff3c01 del campo Medico prescrittore contiene caratteri senza traslitterazione in ASCII, che "
        "il tracciato FLUSSO_C 2020 non può scrivere: \uff3c (U+FF3C)")
    assert named[("N-3@RX-N-3/01", "patient_name")]["message"].endswith(": 小 (U+5C0F), 明 (U+660E)")
    # what the format of the same snapshot says (its fields named by the layout: C1.surname is patient_surname)
    formatted = await run_format(pool, store, 1947, 1948, "FLUSSO_C", "2020")
    columns = {f"{record.kind}.{spec.name}": spec.column for record in load_layout("FLUSSO_C", "2020").records
               for spec in record.fields}
    assert not formatted.ok and formatted.stats is not None
    failed = {(p.record.split()[1], columns[p.field]) for p in formatted.stats.errors if p.code == "CHARSET"}
    assert failed == {(key.split("@")[0], field) for key, field in named}, formatted.reasons


async def test_a_flow_whose_layout_does_not_write_a_field_is_not_failed_for_it(pool: asyncpg.Pool,
                                                                               tmp_path: Path) -> None:
    """MEF writes no name: a Cyrillic surname does not fail its load, nor its format, and a surname longer than
    Flusso C's field gets no warning of a cut; Flusso C and C PACC write them (C1). MEF writes the prescriber: a
    backslash there fails the MEF load too. ALPI TA reads the bookings only."""
    async with pool.acquire() as conn:
        await store_services(conn, [ecg("A-1", "RX-OK", patient_surname="DE LAS MERCEDES Y BORBON DOS SICILIE"),
                                    ecg("B-1", "RX-BAD", patient_surname="ИВАНОВ")])
    store = FileStore(tmp_path)
    mef = await _load(pool, store, "FLUSSO_MEF", 1)
    assert (mef.checked, mef.errors, mef.warnings, mef.feedback_sha256) == (True, 0, 0, None)
    formatted = await run_format(pool, store, 1947, 1948, "FLUSSO_MEF", "2020")
    assert formatted.ok, formatted.reasons
    flusso_c = await _load(pool, store, "FLUSSO_C", 2)
    assert {(p["record_key"], p["field"], p["code"]) for p in _feedback(store, flusso_c)} == {
        ("B-1@RX-BAD/01", "patient_surname", "CHARSET"), ("A-1@RX-OK/01", "patient_surname", "SURNAME_TOO_LONG")}
    async with pool.acquire() as conn:
        await conn.execute("UPDATE source_service SET pacc = true, catalogue_coding = 'a'")
        await store_services(conn, [ecg("C-1", "RX-PRESCRIBER", prescriber_code="MED\\01")])
    pacc = await _load(pool, store, "FLUSSO_C_PACC", 3)
    assert ("B-1@RX-BAD/01", "patient_surname", "CHARSET") in {
        (p["record_key"], p["field"], p["code"]) for p in _feedback(store, pacc)}
    mef = await _load(pool, store, "FLUSSO_MEF", 4)
    assert {(p["record_key"], p["field"]) for p in _feedback(store, mef) if p["code"] == "CHARSET"} == {
        ("C-1@RX-PRESCRIBER/01", "prescriber_code")}


async def test_a_prescription_problem_names_the_source_id_of_its_first_row(pool: asyncpg.Pool,
                                                                             tmp_path: Path) -> None:
    """The first row is the earliest service, whose source_id (Z-...) is not the smallest (A-...)."""
    async with pool.acquire() as conn:
        await store_services(conn, [ecg("Z-FIRST", "RX-BAD", delivery_date=date(2020, 8, 3), ticket=Decimal("0.00")),
                                    ecg("A-LATER", "RX-BAD", delivery_date=date(2020, 8, 10), ticket=Decimal("0.00"))])
    store = FileStore(tmp_path)
    outcome = await _load(pool, store)
    keys = {(p["record_key"], p["code"]) for p in _feedback(store, outcome)}
    assert keys == {("Z-FIRST@RX-BAD/99", "EXEMPTION_REQUIRED")}


async def test_rows_past_98_keep_their_whole_row_number_and_name_their_own_service(pool: asyncpg.Pool,
                                                                                   tmp_path: Path) -> None:
    services = [ecg(f"S-{i:03d}", "RX-BIG", catalogue_code="90.27.1", tariff=Decimal("1.17"),
                    ticket=Decimal("0.00") if i > 1 else Decimal("36.15")) for i in range(1, 102)]
    async with pool.acquire() as conn:
        await store_services(conn, services)
    store = FileStore(tmp_path)
    outcome = await _load(pool, store)
    too_many = sorted(p["record_key"] for p in _feedback(store, outcome) if p["code"] == "TOO_MANY_SERVICES")
    # row n is the n-th service (same date, so by source_id): the key names that very service
    assert too_many == ["S-099@RX-BIG/99", "S-100@RX-BIG/100", "S-101@RX-BIG/101"]


async def test_a_period_with_no_source_data_is_a_warning_the_operator_sees(pool: asyncpg.Pool,
                                                                           tmp_path: Path) -> None:
    async with pool.acquire() as conn:
        await store_services(conn, [ecg("A-1", "RX-OK")])  # August 2020; the load asks for August 2021
    store = FileStore(tmp_path)
    outcome = await run_load(pool, store, 1990, 1991, "FLUSSO_C", "2020", "204", date(2021, 8, 1), date(2021, 8, 31))
    problems = _feedback(store, outcome)
    assert [(p["record_key"], p["field"], p["code"], p["severity"]) for p in problems] == [
        ("*", "period", "NO_SOURCE_DATA", "warning")]
    assert problems[0]["message"] == ("nessun dato di origine (prestazioni erogate) per l'ente 204 dal 01/08/2021 "
                                      "al 31/08/2021: il caricamento è vuoto")
    assert outcome.checked and outcome.warnings == 1 and outcome.summary == "1 avviso: 1 x NO_SOURCE_DATA"


async def test_booking_and_payment_problems_write_their_days_as_italians_do(pool: asyncpg.Pool,
                                                                            tmp_path: Path) -> None:
    """The rules over bookings (ALPI TA) and payment documents (730) name their days as the others do: 05/08/2020."""
    await _store_all(pool, generate("204", "2020-08", 400, seed=1951))
    async with pool.acquire() as conn:
        booking = await conn.fetchrow(
            "UPDATE source_intramoenia_booking SET appointment_date = booking_date - 3 WHERE source_id = "
            "(SELECT min(source_id) FROM source_intramoenia_booking) RETURNING source_id, booking_date, "
            "appointment_date")
    store = FileStore(tmp_path)
    outcome = await _load(pool, store, "FLUSSO_ALPI_TA")
    named = {(p["record_key"], p["code"]): p["message"] for p in _feedback(store, outcome)}
    assert named[(booking["source_id"], "APPOINTMENT_BEFORE_BOOKING")] == (
        f"la data dell'appuntamento {booking['appointment_date']:%d/%m/%Y} è precedente alla data di prenotazione "
        f"{booking['booking_date']:%d/%m/%Y}")
    # a year mistyped: 1,095 days of waiting, which ALPI TA's 3 digits cannot write (the formatter's TOO_LONG)
    async with pool.acquire() as conn:
        far = await conn.fetchrow(
            "UPDATE source_intramoenia_booking SET appointment_date = booking_date + 1095 WHERE source_id = "
            "(SELECT max(source_id) FROM source_intramoenia_booking) RETURNING source_id, booking_date, "
            "appointment_date")
    outcome = await _load(pool, store, "FLUSSO_ALPI_TA", 3)
    named = {(p["record_key"], p["code"]): p["message"] for p in _feedback(store, outcome)}
    assert named[(far["source_id"], "WAITING_DAYS_TOO_MANY")] == (
        f"l'appuntamento del {far['appointment_date']:%d/%m/%Y} è a 1095 giorni dalla prenotazione del "
        f"{far['booking_date']:%d/%m/%Y}: il tracciato ALPI TA scrive al massimo 999 giorni di attesa")
    assert sorted(key for key, code in named if code == "WAITING_DAYS_TOO_MANY") == [far["source_id"]]
    # A 730's payments are taken by their payment date, so none is after the period it was loaded for: checked
    # again against a period ending on 10 August, the later ones are.
    loaded = await _load(pool, store, "FLUSSO_730", 2)
    assert loaded.checked
    await checks.run_checks(pool, "snapshot_payment_document", 1950, "2020", (AUGUST[0], date(2020, 8, 10)),
                            flow_type="FLUSSO_730")
    late = await pool.fetchrow("SELECT p.message, d.payment_date FROM load_problem p JOIN snapshot_payment_document d "
                               "ON d.snapshot_id = p.snapshot_id AND d.source_id = p.record_key "
                               "WHERE p.snapshot_id = 1950 AND p.code = 'PAYMENT_AFTER_PERIOD' LIMIT 1")
    assert late is not None
    assert late["message"] == (f"la data di pagamento {late['payment_date']:%d/%m/%Y} è successiva alla fine del "
                               "periodo, 10/08/2020")


async def test_reference_data_is_copied_once_and_again_only_when_the_files_differ(pool: asyncpg.Pool) -> None:
    from services.loader.catalogue import load_catalogue, reference_digest, sync_reference_data

    async with pool.acquire() as conn:
        await sync_reference_data(conn, "2020")
        count = await conn.fetchval("SELECT count(*) FROM catalogue_item WHERE version = '2020'")
        assert count == len(load_catalogue("2020")) > 0
        assert await conn.fetchval("SELECT digest FROM reference_data_digest WHERE version = '2020'") \
            == reference_digest("2020")
        first = await conn.fetchval("SELECT xmin::text FROM catalogue_item LIMIT 1")
        await sync_reference_data(conn, "2020")  # same files: nothing rewritten
        assert await conn.fetchval("SELECT xmin::text FROM catalogue_item LIMIT 1") == first
        # What a deploy with other files looks like to the database: the stored digest differs.
        await conn.execute("DELETE FROM catalogue_item WHERE version = '2020' AND code = "
                           "(SELECT min(code) FROM catalogue_item WHERE version = '2020')")
        await conn.execute("UPDATE reference_data_digest SET digest = '\\x00' WHERE version = '2020'")
        await sync_reference_data(conn, "2020")
        assert await conn.fetchval("SELECT count(*) FROM catalogue_item WHERE version = '2020'") == count
        assert await conn.fetchval("SELECT digest FROM reference_data_digest WHERE version = '2020'") \
            == reference_digest("2020")


async def test_a_payment_document_the_730_file_would_refuse_fails_the_load_naming_record_and_field(
        pool: asyncpg.Pool, tmp_path: Path) -> None:
    """The 730 formatter's own rules (services.formatter.xml730_rules) and its idSpesa duplicates are asked at load
    (services.loader.ts730_checks): each payment document that breaks one is named with its field, no other is."""
    await _store_all(pool, generate("204", "2020-08", 400, seed=1951))
    async with pool.acquire() as conn:
        a, b, c, d, e, f = [r["source_id"] for r in await conn.fetch(
            "SELECT source_id FROM source_payment_document WHERE ente = '204' ORDER BY source_id LIMIT 6")]
        vat = await conn.fetchval("SELECT issuer_vat FROM source_payment_document WHERE source_id = $1", a)
        wrong_vat = vat[:10] + str((int(vat[10]) + 1) % 10)  # another check digit: a wrong one
        await conn.execute("UPDATE source_payment_document SET issuer_vat = $2 WHERE source_id = $1", a, wrong_vat)
        await conn.execute("UPDATE source_payment_document SET document_kind = 'F', device = 3 WHERE source_id = $1",
                           b)
        await conn.execute("UPDATE source_payment_document SET patient_cf = NULL, patient_objection = false "
                           "WHERE source_id = $1", c)
        same = await conn.fetchrow("UPDATE source_payment_document d SET (issuer_vat, issue_date, device, "
                                   "document_number, document_kind) = (SELECT issuer_vat, issue_date, device, "
                                   "document_number, document_kind FROM source_payment_document WHERE source_id = $2) "
                                   "WHERE source_id = $1 RETURNING issuer_vat, issue_date, device, document_number",
                                   d, e)
        await conn.execute("""UPDATE source_payment_document SET items = jsonb_set(items, '{0}', items->0
                              || '{"spending_type": "TK", "flag_spending_type": "2"}') WHERE source_id = $1""", f)
    store = FileStore(tmp_path)
    outcome = await _load(pool, store, "FLUSSO_730", 2)
    assert not outcome.checked
    problems = {(p["record_key"], p["field"], p["code"]): p["message"] for p in _feedback(store, outcome)}
    assert set(problems) == {(a, "issuer_vat", "TS730_RULE"), (b, "device", "TS730_RULE"),
                             (c, "patient_cf", "TS730_RULE"), (d, "document_number", "DUPLICATE_DOCUMENT"),
                             (e, "document_number", "DUPLICATE_DOCUMENT"), (f, "items", "TS730_RULE")}
    assert problems[(a, "issuer_vat", "TS730_RULE")] == (
        "partita IVA dell'emittente: la cifra di controllo della partita IVA è errata")
    assert problems[(b, "device", "TS730_RULE")] == (
        "dispositivo: 3: su una fattura (tipoDocumento F) il dispositivo vale 1")
    assert problems[(c, "patient_cf", "TS730_RULE")] == (
        "codice fiscale del paziente: manca e il paziente non si è opposto (flagOpposizione 0)")
    assert problems[(f, "items", "TS730_RULE")] == (
        "voce 1: '2' non è ammesso con tipoSpesa 'TK' (1 richiede TK, 2 richiede SR)")
    assert problems[(d, "document_number", "DUPLICATE_DOCUMENT")] == (
        f"il documento ha lo stesso idSpesa (partita IVA {same['issuer_vat']}, emesso il "
        f"{same['issue_date']:%d/%m/%Y}, dispositivo {same['device']}, numero {same['document_number']}) del "
        f"documento {e}: Sistema TS li identifica così, e ne scarterebbe uno come già presente")
    assert outcome.errors == 6 and outcome.summary.startswith("6 errori"), outcome.summary


async def test_a_c_pacc_service_of_the_national_catalogue_fails_the_load_not_its_format(pool: asyncpg.Pool,
                                                                                        tmp_path: Path) -> None:
    """C PACC's layout writes only a regional coding letter (a-z, `allowed`): a PACC service coded N (the national
    catalogue, the intake's default) passed the load and failed the format; the load now names it
    (VALUE_NOT_ALLOWED), and only it."""
    await _store_all(pool, generate("204", "2020-08", 400, seed=1953))
    store = FileStore(tmp_path)
    assert (await _load(pool, store, "FLUSSO_C_PACC", 3)).checked  # every PACC service regional: Checked
    async with pool.acquire() as conn:
        national = await conn.fetchrow(
            "UPDATE source_service SET catalogue_coding = 'N', catalogue_code = '89.52' WHERE source_id = "
            "(SELECT min(source_id) FROM source_service WHERE pacc AND regime = 'SSN' AND ente = '204') "
            "RETURNING source_id, prescription_id")
    outcome = await _load(pool, store, "FLUSSO_C_PACC", 4)
    problems = [p for p in _feedback(store, outcome) if p["severity"] == "error"]  # its tariff: a warning too
    assert [(p["record_key"].split("@")[0], p["field"], p["code"]) for p in problems] == [
        (national["source_id"], "catalogue_coding", "VALUE_NOT_ALLOWED")], problems
    assert problems[0]["message"] == (
        "il valore N del campo Codifica nomenclatore non è tra quelli ammessi dal tracciato FLUSSO_C_PACC 2020: "
        + ", ".join("abcdefghijklmnopqrstuvwxyz"))
    assert not outcome.checked


async def test_an_id_that_outgrows_its_field_once_transliterated_fails_the_load_not_its_format(
        pool: asyncpg.Pool, tmp_path: Path) -> None:
    """The intake takes 20 characters of ID, the C1 and C2 field holds 20: `À` is written `A'`, so an ID of 20
    characters with one is 21 in the file, which the formatter refused (TOO_LONG). The load names it
    (VALUE_TOO_LONG); one character shorter, it fits and is not named."""
    long_id, fitting_id = "RX2026À" + "0" * 12 + "1", "RX2026À" + "0" * 11 + "2"
    assert (len(long_id), len(fitting_id)) == (20, 19)
    async with pool.acquire() as conn:
        await store_services(conn, [ecg("L-1", long_id), ecg("L-2", fitting_id)])
    store = FileStore(tmp_path)
    outcome = await _load(pool, store)
    problems = [(p["record_key"], p["field"], p["code"], p["message"]) for p in _feedback(store, outcome)]
    assert problems == [(f"L-1@{long_id}/01", "prescription_id", "VALUE_TOO_LONG",
                         f"il valore {long_id} del campo ID ha 21 caratteri una volta scritto in ASCII: il tracciato "
                         "FLUSSO_C 2020 ne ammette 20")]
    assert not outcome.checked


async def test_a_730_voce_ts_will_refuse_for_want_of_vat_is_a_warning_the_operator_reads(pool: asyncpg.Pool,
                                                                                        tmp_path: Path) -> None:
    """From the expenses of 2021 TS wants aliquotaIVA or naturaIVA on every voce; the platform gives N4 to the exempt
    health services (TK, SR, SP) and the source carries no rate for the rest: a voce of another tipoSpesa (FC, a
    medicine) comes back refused. The load says so as a warning (the source cannot put it right), naming the
    document and the voce; the same voce paid in 2020 is not warned of."""
    await _store_all(pool, [*generate("204", "2021-08", 400, seed=1955), *generate("204", "2020-08", 400, seed=1956)])
    async with pool.acquire() as conn:
        paid_2021, paid_2020 = [await conn.fetchval(
            """UPDATE source_payment_document SET items = jsonb_set(items, '{0,spending_type}', '"FC"')
               WHERE source_id = (SELECT min(source_id) FROM source_payment_document WHERE payment_date
               BETWEEN $1 AND $2) RETURNING source_id""", start, end)
            for start, end in ((date(2021, 8, 1), date(2021, 8, 31)), AUGUST)]
    store = FileStore(tmp_path)
    outcome = await run_load(pool, store, 1961, 1962, "FLUSSO_730", "2020", "204", date(2021, 8, 1),
                             date(2021, 8, 31))
    assert outcome.checked and outcome.warnings == 1, outcome.summary
    assert [(p["record_key"], p["field"], p["code"], p["severity"], p["message"]) for p in _feedback(store, outcome)] \
        == [(paid_2021, "items", "TS730_NO_VAT", "warning", "voce 1: tipoSpesa FC senza aliquota né natura IVA (i "
             "dati di origine non riportano l'IVA): Sistema TS scarterà il documento")]
    before = await _load(pool, store, "FLUSSO_730", 5)
    assert before.checked and before.warnings == 0 and paid_2020, before.summary
