"""Every document the onboarding service can require has an Italian name (seed 003's), slots of a SPOKE included."""

from __future__ import annotations

from contracts.onboarding import DOCUMENT_LABELS, document_label
from services.onboarding.requirements import available_versions, load_requirements

SPOKES_ON_CUP = ["150456", "150789"]


def _requirable_slots() -> set[str]:
    """Every slot of every kind of every shipped version of the requirements, with SPOKEs already on the CUP."""
    slots: set[str] = set()
    for version in available_versions():
        requirements = load_requirements(version)
        for kind in requirements.kinds:
            slots.update(requirements.slots_for(kind, SPOKES_ON_CUP))
    return slots


def test_every_document_the_service_can_require_has_an_italian_label():
    slots = _requirable_slots()
    assert len(slots) > 20  # the 19 types of 2026-05, the closure act once per SPOKE
    unlabelled = sorted(slot for slot in slots if slot.partition(":")[0] not in DOCUMENT_LABELS)
    assert unlabelled == [], f"document types without an Italian label in contracts/onboarding.py: {unlabelled}"
    assert all(document_label(slot) != slot for slot in slots)


def test_a_closure_act_is_labelled_with_its_spoke():
    assert document_label("spoke-closure-act:150456") == "Atto di chiusura dello spoke 150456"
    assert document_label("spoke-closure-act") == "Atto di chiusura dello spoke"


def test_the_labels_are_the_names_of_the_note():
    assert document_label("tracciato-erogatore") == "Tracciato Erogatore"
    assert document_label("tracciato-raggruppamenti-unita") == "Tracciato Raggruppamenti Unità"
    assert document_label("accreditation-resolution") == "Delibera di accreditamento"
    assert document_label("suap-authorisation") == "Autorizzazione SUAP"
    assert document_label("endpoint-form-c") == ("Form di abilitazione degli endpoint per l'ambiente di produzione "
                                                 "(Allegato C)")


def test_no_two_documents_share_a_label_and_no_label_is_stale():
    assert len(set(DOCUMENT_LABELS.values())) == len(DOCUMENT_LABELS)
    known = {type_id for v in available_versions() for type_id in load_requirements(v).document_types}
    assert set(DOCUMENT_LABELS) - known == {"tracciati"}  # the upload of a workbook of several tracciati


def test_an_id_without_a_label_is_shown_as_it_is():
    assert document_label("visura-camerale") == "visura-camerale"
    assert document_label("visura-camerale:150456") == "visura-camerale:150456"
