"""Synthetic source data for one entity and month: services, payment documents, intramoenia bookings.

Deterministic for a seed and streamed (one prescription at a time, never the whole list), so it can
feed a million services to a benchmark. Valid by construction: real Campania municipalities,
codici fiscali built with python-codicefiscale's encoders (some omocodic), 16-character NRE numbers,
the entity's STS11 structures, catalogue codes and tariffs of the shipped catalogue, a ticket /
exemption mix, prescriptions of 1-8 services, some spanning from the previous month, an ALPI and a
PACC share.

`bad=N` plants N known problems of varied kinds, one problem each, and lists them in `planted` as
(record_key, code, field) so a test can assert that the feedback names exactly those. `planted` is
complete once the records have been iterated.
"""

from __future__ import annotations

import calendar
import csv
import random
from bisect import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from itertools import accumulate
from pathlib import Path
from typing import Any, TypeVar

from codicefiscale import codicefiscale as cfcodec
from stdnum import luhn

from contracts.sources import DeliveredService, IntramoeniaBooking, PaymentDocument, SourceModel, SpendingItem
from services.loader.catalogue import load_catalogue, load_structures, structures_of
from services.loader.codice_fiscale import MONTH_LETTERS, OMOCODE_LETTERS

# (municipality, Belfiore code for the codice fiscale, ISTAT code of residence, ASL of residence)
MUNICIPALITIES = (
    ("NAPOLI", "F839", "063049", "204"), ("POZZUOLI", "G964", "063060", "205"),
    ("GIUGLIANO IN CAMPANIA", "E054", "063034", "205"), ("AFRAGOLA", "A064", "063002", "205"),
    ("CASORIA", "B990", "063022", "205"), ("MARANO DI NAPOLI", "E906", "063041", "205"),
    ("TORRE DEL GRECO", "L259", "063084", "206"), ("CASTELLAMMARE DI STABIA", "C129", "063024", "206"),
    ("PORTICI", "G902", "063059", "206"), ("ERCOLANO", "H243", "063064", "206"), ("NOLA", "F924", "063047", "206"),
    ("SALERNO", "H703", "065116", "207"), ("BATTIPAGLIA", "A717", "065014", "207"),
    ("NOCERA INFERIORE", "F912", "065078", "207"), ("CAVA DE' TIRRENI", "C361", "065037", "207"),
    ("SCAFATI", "I483", "065137", "207"), ("EBOLI", "D390", "065050", "207"),
    ("CASERTA", "B963", "061022", "203"), ("AVERSA", "A512", "061005", "203"),
    ("AVELLINO", "A509", "064008", "201"), ("ARIANO IRPINO", "A399", "064005", "201"),
    ("BENEVENTO", "A783", "062008", "202"), ("TELESE TERME", "L086", "062074", "202"),
)
SURNAMES = ("ESPOSITO", "RUSSO", "DE LUCA", "ROMANO", "COPPOLA", "RUOCCO", "IOVINE", "CAPASSO", "DI MARTINO",
            "SORRENTINO", "GRIMALDI", "AMATO", "CIRILLO", "FERRARA", "PALUMBO", "CAPUTO", "DE ROSA",
            "ESPOSITO", "IACCARINO", "MAIELLO", "NAPOLITANO", "LANDOLFI", "D'AMBROSIO", "SCOGNAMIGLIO")
MALE_NAMES = ("GENNARO", "SALVATORE", "CIRO", "ANTONIO", "GIUSEPPE", "VINCENZO", "PASQUALE", "RAFFAELE",
              "FRANCESCO", "LUIGI", "ALFONSO", "CARMINE", "DOMENICO", "MARIO")
FEMALE_NAMES = ("MARIA", "ANNA", "CONCETTA", "ASSUNTA", "CARMELA", "TERESA", "IMMACOLATA", "ROSA",
                "GIUSEPPINA", "RITA", "LUCIA", "ANNUNZIATA", "PATRIZIA", "SOFIA")
EXEMPTIONS = ("E01", "E02", "E03", "E04", "048", "013", "0A31", "C01", "L03", "031")
DISCIPLINES = ("008", "009", "019", "026", "032", "034", "036", "037", "038", "043", "052", "056", "064", "069")
SERVICES_PER_PRESCRIPTION = ((1, 40), (2, 25), (3, 15), (4, 8), (5, 5), (6, 3), (7, 2), (8, 2))
PRIORITIES = (("U", 5), ("B", 20), ("D", 30), ("P", 45))
TICKET_CAP = Decimal("36.15")  # national ticket ceiling per prescription (L. 537/1993, art. 8)
UNKNOWN_CODE = "89.99.9"
M = TypeVar("M", bound=SourceModel)
BAD_KINDS = ("CF_CHECK_CHAR", "UNKNOWN_SERVICE_CODE", "EXEMPTION_REQUIRED", "CF_BIRTH_MISMATCH",
             "STRUCTURE_NOT_IN_ENTE", "DATE_OUTSIDE_PERIOD", "DUPLICATE_PRESCRIPTION_NUMBER", "AMOUNT_ARITHMETIC",
             "CF_SEX_MISMATCH", "DELIVERY_BEFORE_PRESCRIPTION", "SURNAME_TOO_LONG", "PRESCRIPTION_FIELD_DIFFERS",
             "TOO_MANY_SERVICES")


@dataclass(frozen=True)
class Patient:
    cf: str
    surname: str
    name: str
    sex: str
    birth_date: date
    istat: str
    asl: str


@dataclass(frozen=True)
class Planted:
    record_key: str
    code: str
    field: str


def month_period(month: str) -> tuple[date, date]:
    year, mon = (int(x) for x in month.split("-"))
    return date(year, mon, 1), date(year, mon, calendar.monthrange(year, mon)[1])


def codice_fiscale(surname: str, name: str, sex: str, birth: date, belfiore: str, omocode_digits: int = 0) -> str:
    """The codice fiscale, with its last `omocode_digits` substitutable digits replaced by letters."""
    day = birth.day + (40 if sex == "F" else 0)
    first15 = list(cfcodec.encode_lastname(surname) + cfcodec.encode_firstname(name)
                   + f"{birth.year % 100:02d}{MONTH_LETTERS[birth.month - 1]}{day:02d}" + belfiore)
    for pos in (14, 13, 12, 10, 9, 7, 6)[:omocode_digits]:
        first15[pos] = OMOCODE_LETTERS[int(first15[pos])]
    code15 = "".join(first15)
    return code15 + cfcodec.encode_cin(code15)


_DEFAULTS: dict[type[SourceModel], dict[str, Any]] = {}


def _construct(model: type[M], values: dict[str, Any]) -> M:
    """`model.model_construct(**values)` without its per-call overhead (a fifth of the cost): the values
    are complete and valid by construction; a unit test validates a sample of generated records."""
    defaults = _DEFAULTS.get(model)
    if defaults is None:
        defaults = _DEFAULTS[model] = {name: f.get_default(call_default_factory=True)
                                       for name, f in model.model_fields.items() if not f.is_required()}
    obj = model.__new__(model)
    full = values if len(values) == len(model.model_fields) else {**defaults, **values}
    object.__setattr__(obj, "__dict__", full)
    object.__setattr__(obj, "__pydantic_fields_set__", set(values))
    object.__setattr__(obj, "__pydantic_extra__", None)
    object.__setattr__(obj, "__pydantic_private__", None)
    return obj


def _weighted(rng: random.Random, pairs: tuple[tuple[Any, int], ...]) -> Any:
    cumulative = _CUMULATIVE.get(pairs)
    if cumulative is None:
        cumulative = _CUMULATIVE[pairs] = list(accumulate(p[1] for p in pairs))
    return pairs[bisect(cumulative, rng.random() * cumulative[-1])][0]


_CUMULATIVE: dict[tuple[tuple[Any, int], ...], list[int]] = {}


@dataclass
class Generation:
    """An iterable of source records (DeliveredService, PaymentDocument, IntramoeniaBooking)."""

    ente: str
    month: str
    services: int
    seed: int
    bad: int = 0
    version: str = "2020"
    planted: list[Planted] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.period_start, self.period_end = month_period(self.month)
        self.structures = structures_of(self.ente)
        if not self.structures:
            raise ValueError(f"ente {self.ente}: no structures in contracts/data/structures.csv")
        self.foreign_structure = next(s for s in load_structures() if s.ente != self.ente)
        catalogue = load_catalogue(self.version)
        self.national = [i for i in catalogue if i.coding == "N"]
        self.pacc_codes = [i for i in catalogue if i.coding != "N"]
        # one discipline per service code, fixed: cheaper than a draw per service, and plausible
        self.disciplines = {i.code: DISCIPLINES[n % len(DISCIPLINES)] for n, i in enumerate(catalogue)}
        if self.bad and self.services < 200 + 3 * self.bad:
            raise ValueError(f"bad={self.bad} needs at least {200 + 3 * self.bad} services")
        self.prefix = f"CUP-{self.ente}-{self.month.replace('-', '')}-S{self.seed}"
        # partita IVA: 7-digit company number, provincial office code (001-100), Luhn check digit
        base = f"0{self.ente}{self.seed % 1000:03d}{self.seed % 100 + 1:03d}"
        self.vat = base + luhn.calc_check_digit(base)

    # --- patients -------------------------------------------------------------------------------

    def _patient(self, rng: random.Random, surname: str | None = None, omocode: int = 0) -> Patient:
        sex = rng.choice("MF")
        name = rng.choice(MALE_NAMES if sex == "M" else FEMALE_NAMES)
        surname = surname or rng.choice(SURNAMES)
        birth = date(1930, 1, 1) + timedelta(days=rng.randrange(32000))
        town = rng.choice(MUNICIPALITIES)
        return Patient(codice_fiscale(surname, name, sex, birth, town[1], omocode), surname, name, sex, birth,
                       town[2], town[3])

    def _pool(self, rng: random.Random) -> list[Patient]:
        size = max(200, min(self.services // 3, 30_000))
        # ~1% omocodic codes: 1-3 digits substituted, as the Agenzia delle Entrate does for homonyms
        return [self._patient(rng, omocode=rng.choice((1, 2, 3)) if rng.random() < 0.01 else 0)
                for _ in range(size)]

    # --- records --------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[SourceModel]:
        rng = random.Random(self.seed)
        self.planted.clear()
        pool = self._pool(rng)
        usable = self.services - 150
        offsets = sorted(rng.sample(range(20, usable), self.bad)) if self.bad else []
        kinds = [k for k in BAD_KINDS if k != "TOO_MANY_SERVICES" or self.services >= 5000]
        self._seq = self._pseq = self._dseq = 0
        self._last_c_number: str | None = None
        emitted, planted_n = 0, 0
        while emitted < self.services:
            if planted_n < len(offsets) and emitted >= offsets[planted_n]:
                kind = kinds[planted_n % len(kinds)]
                planted_n += 1
                rows = self._bad_prescription(rng, pool, kind)
            else:
                rows = self._prescription(rng, pool, min(_weighted(rng, SERVICES_PER_PRESCRIPTION),
                                                         self.services - emitted))
            emitted += len(rows)
            yield from self._emit(rng, rows)

    def _prescription(self, rng: random.Random, pool: list[Patient], k: int, *, patient: Patient | None = None,
                      plain: bool = False) -> list[dict[str, Any]]:
        """The field values of one prescription's services (plain = SSN, type S, Flusso C)."""
        self._pseq += 1
        ps = self._pseq
        patient = patient or rng.choice(pool)
        alpi = not plain and rng.random() < 0.04
        pacc = not plain and not alpi and rng.random() < 0.03
        direct = not plain and not alpi and not pacc and rng.random() < 0.05
        delivery_type = "A" if direct or alpi else "S"
        structure = rng.choice(self.structures)
        month_days = (self.period_end - self.period_start).days + 1
        last = self.period_start + timedelta(days=rng.randrange(month_days))
        span = rng.randrange(12, 25) if rng.random() < 0.03 else min(6, (last - self.period_start).days)
        dates = [*sorted(last - timedelta(days=rng.randint(0, span)) for _ in range(k - 1)), last]
        prescribed = dates[0] - timedelta(days=rng.randint(0, 45))
        booked = prescribed + timedelta(days=rng.randint(0, (dates[0] - prescribed).days))
        items = rng.sample(self.pacc_codes if pacc else self.national, min(k, 8)) if k <= 8 else \
            [rng.choice(self.national) for _ in range(k)]
        quantities = [rng.choice((2, 3)) if rng.random() < 0.05 else 1 for _ in range(k)]
        total = sum((q * i.tariff for q, i in zip(quantities, items, strict=True)), Decimal("0"))
        exempt = not alpi and delivery_type == "S" and rng.random() < 0.35
        ticket = Decimal("0.00") if alpi or exempt else min(total, TICKET_CAP)
        number = (f"A{self.month.replace('-', '')}{self.seed % 100:02d}{ps:07d}" if delivery_type == "A"
                  else f"150A{(ps * 7919 + self.seed * 1_000_003) % 10**12:012d}")
        common = dict(
            schema_version=1, region="150", ente=self.ente, structure_sts11=structure.sts11,
            structure_type=structure.structure_type,
            patient_cf=patient.cf, patient_surname=patient.surname, patient_name=patient.name,
            patient_sex=patient.sex, patient_birth_date=patient.birth_date, patient_residence_istat=patient.istat,
            patient_residence_asl=patient.asl, patient_objection=rng.random() < 0.02,
            prescription_id=f"{self.ente}{self.month.replace('-', '')}{self.seed % 1000:03d}{ps:07d}",
            prescription_number=number,
            prescription_date=None if delivery_type == "A" else prescribed,
            prescriber_code=None if delivery_type == "A" else f"MED{rng.randrange(10**6):06d}",
            priority=None if delivery_type == "A" else _weighted(rng, PRIORITIES),
            exemption_code=rng.choice(EXEMPTIONS) if exempt else None, delivery_type=delivery_type,
            access_type=rng.choice("112"), booking_date=booked, first_offered_date=booked,
            pacc=pacc, pacc_start_date=dates[0] if pacc else None, regime="ALPI" if alpi else "SSN")
        if not alpi and not pacc and self.period_start <= last:
            self._last_c_number = number
        return [dict(common, catalogue_code=i.code, catalogue_coding=i.coding, quantity=q, delivery_date=d,
                     discipline=self.disciplines[i.code], tariff=i.tariff,
                     ticket=ticket if n == 0 else Decimal("0.00"))
                for n, (i, q, d) in enumerate(zip(items, quantities, dates, strict=True))]

    def _emit(self, rng: random.Random, rows: list[dict[str, Any]]) -> Iterator[SourceModel]:
        ids = []
        for row in rows:
            self._seq += 1
            ids.append(f"{self.prefix}-{self._seq:07d}")
            row["source_id"] = ids[-1]
            yield _construct(DeliveredService, row)
        first = rows[0]
        ticket = sum((r["ticket"] for r in rows), Decimal("0"))
        alpi = first["regime"] == "ALPI"
        if alpi:
            for row, sid in zip(rows, ids, strict=True):
                yield _construct(IntramoeniaBooking, dict(
                    source_id=f"{sid}-B", ente=self.ente, structure_sts11=row["structure_sts11"],
                    catalogue_code=row["catalogue_code"], booking_date=row["booking_date"],
                    appointment_date=row["delivery_date"], priority=None, patient_cf=row["patient_cf"],
                    index_week=rng.random() < 0.1))
        if ticket > 0 or alpi:
            amount = sum((r["quantity"] * r["tariff"] for r in rows), Decimal("0")) if alpi else ticket
            item = _construct(SpendingItem, dict(spending_type="SR" if alpi else "TK",  # type: ignore[type-var]
                                                 flag_spending_type="2" if alpi else None,
                                                 amount=amount, service_source_ids=ids))
            self._dseq += 1
            # paid at the first service of this month: a prescription begun last month is paid when it
            # resumes here, so every document of the month's generation falls in the month it reports
            paid = min((r["delivery_date"] for r in rows if r["delivery_date"] >= self.period_start),
                       default=rows[0]["delivery_date"])
            # an invoice's dispositivo is 1 (ws-asincrono-spec-v2.5); the cash register's number once drawn here is
            # drawn still, so that the rest of a generated month (and every figure measured on one) stays as it was
            rng.randint(1, 3)
            yield _construct(PaymentDocument, dict(
                source_id=f"{self.prefix}-D{self._dseq:07d}", ente=self.ente,
                structure_sts11=first["structure_sts11"], issuer_vat=self.vat, issue_date=paid,
                device=1, document_number=f"{paid.year}/{self.seed % 1000:03d}{self._dseq:07d}",
                payment_date=paid, traced_payment=rng.random() < 0.7, document_kind="F",
                patient_cf=first["patient_cf"], patient_objection=first["patient_objection"], items=[item]))

    # --- planted problems -----------------------------------------------------------------------

    def _bad_prescription(self, rng: random.Random, pool: list[Patient], kind: str) -> list[dict[str, Any]]:
        fresh = self._patient(rng, surname="DELLA VALLE DI SANTA MARIA CAPUA VETERE" if kind == "SURNAME_TOO_LONG"
                              else None)
        k = {"DATE_OUTSIDE_PERIOD": 2, "PRESCRIPTION_FIELD_DIFFERS": 2, "TOO_MANY_SERVICES": 99}.get(kind, 1)
        owner = self._last_c_number
        rows = self._prescription(rng, pool, k, patient=fresh, plain=True)
        row_no, field_ = 1, "patient_cf"
        if kind == "CF_CHECK_CHAR":
            cf = fresh.cf
            wrong = chr((ord(cf[15]) - 65 + 1) % 26 + 65)
            for r in rows:
                r["patient_cf"] = cf[:15] + wrong
        elif kind == "CF_BIRTH_MISMATCH":
            for r in rows:
                r["patient_birth_date"] = fresh.birth_date + timedelta(days=1)
        elif kind == "CF_SEX_MISMATCH":
            for r in rows:
                r["patient_sex"] = "M" if fresh.sex == "F" else "F"
        elif kind == "UNKNOWN_SERVICE_CODE":
            rows[0]["catalogue_code"], field_ = UNKNOWN_CODE, "catalogue_code"
        elif kind == "STRUCTURE_NOT_IN_ENTE":
            for r in rows:
                r["structure_sts11"] = self.foreign_structure.sts11
            field_ = "structure_sts11"
        elif kind == "DELIVERY_BEFORE_PRESCRIPTION":
            for r in rows:
                r["prescription_date"] = r["delivery_date"] + timedelta(days=3)
                r["booking_date"] = r["first_offered_date"] = r["delivery_date"]
            field_ = "delivery_date"
        elif kind == "DATE_OUTSIDE_PERIOD":
            rows[0]["delivery_date"] = self.period_start - timedelta(days=45)
            for r in rows:
                r["prescription_date"] = r["booking_date"] = r["first_offered_date"] = rows[0]["delivery_date"]
            field_ = "delivery_date"
        elif kind == "SURNAME_TOO_LONG":
            field_ = "patient_surname"
        else:
            row_no = 99  # prescription-level problems are reported on row 99
            if kind == "EXEMPTION_REQUIRED":
                for r in rows:
                    r["ticket"], r["exemption_code"] = Decimal("0.00"), None
                field_ = "exemption_code"
            elif kind == "AMOUNT_ARITHMETIC":
                total = sum((r["quantity"] * r["tariff"] for r in rows), Decimal("0"))
                rows[0]["ticket"], field_ = total + Decimal("50.00"), "ticket"
                for r in rows:
                    r["exemption_code"] = None
            elif kind == "DUPLICATE_PRESCRIPTION_NUMBER":
                if owner is None:
                    raise ValueError("no earlier Flusso C prescription to duplicate: plant later")
                for r in rows:
                    r["prescription_number"] = owner
                field_ = "prescription_number"
            elif kind == "PRESCRIPTION_FIELD_DIFFERS":
                rows[1]["priority"] = "U" if rows[0]["priority"] != "U" else "B"
                field_ = "priority"
            elif kind == "TOO_MANY_SERVICES":
                row_no, field_ = 99, "row_number"  # the 99th service: no room before row 99
        first_id = f"{self.prefix}-{self._seq + 1:07d}"
        key_id = f"{self.prefix}-{self._seq + (99 if kind == 'TOO_MANY_SERVICES' else 1):07d}"
        pid = rows[0]["prescription_id"]
        key = f"{key_id if kind == 'TOO_MANY_SERVICES' or row_no != 99 else first_id}@{pid}/{row_no:02d}"
        self.planted.append(Planted(key, kind, field_))
        return rows


def generate(ente: str, month: str, services: int, seed: int, bad: int = 0, version: str = "2020") -> Generation:
    """Services (plus their payment documents and ALPI bookings) of `ente` in `month` ('YYYY-MM')."""
    return Generation(ente, month, services, seed, bad, version)


SOURCE_FILES = {DeliveredService: ("delivered-service", "services.csv"),
                PaymentDocument: ("payment-document", "payment_documents.csv"),
                IntramoeniaBooking: ("intramoenia-booking", "bookings.csv")}


def write_csv(directory: Path, generation: Generation) -> dict[str, Path]:
    """Write the generation as import CSVs (one per kind, header = model field names); streamed."""
    from services.loader.intake import CSV_DELIMITER, csv_header, csv_value

    directory.mkdir(parents=True, exist_ok=True)
    paths = {kind: directory / name for kind, name in SOURCE_FILES.values()}
    files = {kind: path.open("w", newline="", encoding="utf-8") for kind, path in paths.items()}
    try:
        writers = {kind: csv.writer(f, delimiter=CSV_DELIMITER, lineterminator="\n") for kind, f in files.items()}
        headers = {kind: csv_header(kind) for kind in files}
        for kind, w in writers.items():
            w.writerow(headers[kind])
        for record in generation:
            kind = SOURCE_FILES[type(record)][0]
            writers[kind].writerow([csv_value(getattr(record, c)) for c in headers[kind]])
    finally:
        for f in files.values():
            f.close()
    return paths
