"""The data generator: valid by construction, deterministic, streamed, with known planted problems."""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import pytest

from contracts.sources import DeliveredService, IntramoeniaBooking, PaymentDocument
from services.loader.catalogue import load_catalogue, structures_of
from services.loader.codice_fiscale import check_codici_fiscali
from simulators.cup import generator
from simulators.cup.generator import BAD_KINDS, generate


def _services(ente: str = "204", n: int = 3000, seed: int = 1947, bad: int = 0) -> list[DeliveredService]:
    return [r for r in generate(ente, "2020-08", n, seed=seed, bad=bad) if isinstance(r, DeliveredService)]


def test_the_same_seed_gives_the_same_records() -> None:
    first = list(generate("201", "2020-08", 500, seed=42))
    again = list(generate("201", "2020-08", 500, seed=42))
    other = list(generate("201", "2020-08", 500, seed=43))
    assert first == again
    assert first != other


def test_exactly_the_requested_number_of_services_is_generated() -> None:
    assert len(_services(n=3000, bad=5)) == 3000


def test_generated_records_pass_pydantic_validation() -> None:
    for record in itertools.islice(generate("207", "2020-08", 3000, seed=7, bad=13), 0, None, 7):
        assert type(record).model_validate(record.model_dump()) == record


def test_every_codice_fiscale_is_valid_and_matches_sex_and_birth_date() -> None:
    services = _services()
    assert check_codici_fiscali([s.patient_cf or "" for s in services], [s.patient_sex for s in services],
                                [s.patient_birth_date for s in services]) == []
    assert any(not s.patient_cf[12:15].isdigit() for s in services if s.patient_cf)  # some omocodia


def test_services_use_the_catalogue_the_entity_structures_and_16_character_nre() -> None:
    codes = {(i.coding, i.code): i.tariff for i in load_catalogue("2020")}
    structures = {s.sts11 for s in structures_of("204")}
    for s in _services():
        assert codes[(s.catalogue_coding, s.catalogue_code)] == s.tariff
        assert s.structure_sts11 in structures
        assert len(s.prescription_number) == 16
        assert s.delivery_date.month in (7, 8)


def test_prescriptions_have_one_to_eight_services_and_unique_numbers() -> None:
    services = _services()
    sizes = Counter(s.prescription_id for s in services)
    assert set(sizes.values()) <= set(range(1, 9)) and max(sizes.values()) > 4
    numbers = {s.prescription_id: s.prescription_number for s in services}
    assert len(set(numbers.values())) == len(numbers)


def test_ticket_exemption_alpi_and_pacc_mixes_are_present() -> None:
    services = _services(n=5000)
    assert any(s.exemption_code for s in services) and any(s.ticket > 0 for s in services)
    assert any(s.regime == "ALPI" for s in services) and any(s.pacc for s in services)
    records = list(generate("204", "2020-08", 2000, seed=3))
    assert any(isinstance(r, PaymentDocument) for r in records)
    assert any(isinstance(r, IntramoeniaBooking) for r in records)


def test_planted_problems_are_listed_one_per_bad_record_and_of_every_kind() -> None:
    generation = generate("204", "2020-08", 6000, seed=5, bad=len(BAD_KINDS))
    source_ids = {r.source_id for r in generation if isinstance(r, DeliveredService)}
    assert [p.code for p in generation.planted] == list(BAD_KINDS)
    assert all(p.record_key.split("@")[0] in source_ids for p in generation.planted)


def test_the_generator_streams_instead_of_building_a_list(monkeypatch: pytest.MonkeyPatch) -> None:
    """Taking the first 10 records of a 50 000-service month builds those records, not the month: a spy counts
    the real constructor's calls (a list would build ~60 000). No timing: how fast is the benchmarks' business."""
    built = 0
    real = generator._construct

    def counted(model: Any, values: dict[str, Any]) -> Any:
        nonlocal built
        built += 1
        return real(model, values)

    monkeypatch.setattr(generator, "_construct", counted)
    records = iter(generate("204", "2020-08", 50_000, seed=1))
    first = list(itertools.islice(records, 10))
    assert len(first) == 10 and all(isinstance(r, DeliveredService | PaymentDocument | IntramoeniaBooking)
                                    for r in first)
    assert built <= 20, built  # the 10 records, and the spending item inside each payment document among them
    assert next(records) is not None  # and it goes on from there
