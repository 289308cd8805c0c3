"""The desk's form of a document's facts (services/console/onboarding_facts.py): each rule of the requirements data
its own input with an Italian label, what the form gives is the metadata the CLI's `--meta` gives (so the same
findings), and a value of the wrong shape is refused naming its field, with the rule's own words."""

from __future__ import annotations

import pytest

from services.console.labels import FACT_LABELS
from services.console.onboarding_facts import declared, declared_names, fact_fields, read_facts
from services.onboarding.requirements import available_versions, check_metadata, load_requirements

REQ = load_requirements("2026-05")


def fields_of(*choices: str):  # type: ignore[no-untyped-def]
    out = {}
    for choice in choices:
        type_id, named = REQ.slot_document(choice)
        out[choice] = fact_fields(choice, REQ.document_type(type_id), named)
    return out


def test_every_fact_of_every_version_of_the_requirements_has_an_italian_label() -> None:
    keys = {key for version in available_versions() for t in load_requirements(version).document_types.values()
            for key in t.meta}
    assert keys - set(FACT_LABELS) == set(), "a fact the desk's form would ask by its key"


def test_each_rule_has_its_own_input() -> None:
    fields = {f.key: f for f in fields_of("formal-request-interoperability-change")[
        "formal-request-interoperability-change"]}
    assert {k: f.widget for k, f in fields.items()} == {
        "protocol": "text", "letterhead": "yesno", "software_house_changes": "select", "credentials": "select",
        "switch_date": "date", "switch_window": "window"}
    assert fields["letterhead"].options == (("yes", "sì"), ("no", "no"))
    assert fields["credentials"].options == (("basic", "solo aggiornamento delle credenziali Basic"),
                                             ("new-oauth2", "nuove credenziali OAuth2.0"))
    assert fields["switch_window"].label == "Fascia oraria desiderata per lo switch"
    assert fields["switch_window"].help == "OO:MM-OO:MM, per esempio 09:00-11:00"
    assert fields["protocol"].name == "dato:formal-request-interoperability-change:protocol"


def test_a_spoke_s_slot_does_not_ask_its_spoke_again_but_its_ids_are_html_ids() -> None:
    (fields,) = fields_of("spoke-closure-act:150456").values()
    assert [f.key for f in fields] == ["protocol", "signed"]
    assert fields[0].id == "dato-spoke-closure-act-150456-protocol"
    assert fields[0].name == "dato:spoke-closure-act:150456:protocol"


def test_the_form_gives_the_metadata_the_cli_gives_and_so_the_same_findings() -> None:
    choices = fields_of("spoke-reconfiguration-act", "accreditation-resolution")
    form = {"dato:spoke-reconfiguration-act:protocol": " 2026/77 ", "dato:spoke-reconfiguration-act:signed": "no",
            "dato:accreditation-resolution:protocol": "", "dato:accreditation-resolution:date": ""}
    metadata, errors = read_facts(form, "spoke-reconfiguration-act", choices)
    assert (metadata, errors) == ({"protocol": "2026/77", "signed": "no"}, {})
    # `onboarding add-document ... --meta protocol=2026/77 --meta signed=no`
    cli = {"protocol": "2026/77", "signed": "no"}
    doc_type = REQ.document_type("spoke-reconfiguration-act")
    assert check_metadata(doc_type, metadata) == check_metadata(doc_type, cli)
    assert [f.message for f in check_metadata(doc_type, metadata)] == [
        "il dato dichiarato signed è 'no', deve essere sì"]


def test_an_empty_field_is_not_declared_and_a_form_left_empty_declares_nothing() -> None:
    choices = fields_of("accreditation-resolution")
    form = {"dato:accreditation-resolution:protocol": "P-1", "dato:accreditation-resolution:date": "  "}
    assert read_facts(form, "accreditation-resolution", choices) == ({"protocol": "P-1"}, {})
    empty = {"dato:accreditation-resolution:protocol": "", "dato:accreditation-resolution:date": ""}
    assert read_facts(empty, "accreditation-resolution", choices) == ({}, {})


@pytest.mark.parametrize(("key", "value", "error"), [
    ("switch_window", "25:00-26:00", "Fascia oraria desiderata per lo switch: è '25:00-26:00', non una fascia "
                                     "oraria: le ore vanno da 00 a 23."),
    ("switch_window", "11:00-09:00", "Fascia oraria desiderata per lo switch: è '11:00-09:00': la fascia oraria "
                                     "deve finire dopo il suo inizio."),
    ("switch_date", "2026-02-30", "Giorno desiderato per lo switch: è '2026-02-30', non una data AAAA-MM-GG."),
    ("credentials", "oauth3", "Credenziali OAuth2.0: è 'oauth3', deve essere uno tra basic, new-oauth2."),
    ("letterhead", "forse", "Su carta intestata dell'ente: è 'forse', deve essere sì o no."),
])
def test_a_value_of_the_wrong_shape_is_refused_naming_its_field(key: str, value: str, error: str) -> None:
    choice = "formal-request-interoperability-change"
    form = {f"dato:{choice}:protocol": "P-9", f"dato:{choice}:{key}": value}
    metadata, errors = read_facts(form, choice, fields_of(choice))
    assert errors == {f"dato:{choice}:{key}": error}
    assert key not in metadata


def test_facts_filled_for_another_document_are_refused_not_dropped() -> None:
    choices = fields_of("suap-authorisation", "accreditation-resolution")
    form = {"dato:accreditation-resolution:protocol": "P-3", "dato:suap-authorisation:protocol": ""}
    metadata, errors = read_facts(form, "suap-authorisation", choices)
    assert metadata == {}
    assert errors == {"dato:accreditation-resolution:protocol":
                      "Numero di protocollo di «Delibera di accreditamento»: compilato, ma il documento caricato è "
                      "«Autorizzazione SUAP»; scelga il tipo giusto o svuoti il campo."}


def test_a_row_shows_the_declared_facts_in_italian_not_its_spoke_nor_its_sheet() -> None:
    closure = REQ.document_type("spoke-closure-act")
    metadata = {"signed": "yes", "spoke_sts11": "150456", "extra": "x", "protocol": "P-1"}  # PostgreSQL's order
    assert declared(metadata, closure, {"spoke_sts11": "150456"}) == [
        ("Numero di protocollo", "P-1"), ("Firmato", "sì"), ("extra", "x")]
    assert declared({"sheet": "Prestazioni"}, REQ.document_type("tracciato-prestazioni"), {}) == []


def test_the_fact_fields_a_structure_may_not_send() -> None:
    assert declared_names({"csrf": "x", "dato:suap-authorisation:protocol": " ", "dato:a:signed": "yes"}) == [
        "dato:a:signed"]
